"""Every MAGI_ATTENTION_* runtime environment flag (reference §6.1), read in one place.

Why one module: the flags change numerics and collectives, so they are parsed strictly (a toggle
is "1" for on, "0" or unset for off, anything else is an error rather than a silent "off"), and
the runtime key snapshots them (``snapshot_flags``) so a key always runs the way it was built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from magi_attention.errors import EnvFlagError

__all__ = [
    "FLAG_DEFAULTS", "EnvFlags", "snapshot_flags", "check_flag_comb",
    "is_sanity_check_enable", "is_flatten_head_groups_enable", "is_sdpa_backend_enable",
    "is_fa4_backend_enable", "is_cuda_device_max_connections_one",
    "is_deterministic_mode_enable", "is_profile_mode_enable", "is_auto_range_merge_enable",
    "is_cat_gqa_enable", "cuda_graphs_mode", "dist_attn_backward_hide_tail_reduce",
    "dist_attn_runtime_dict_size",
    "is_hierarchical_comm_enable", "is_qo_comm_enable", "is_native_grpcoll_enable",
    "is_cpp_backend_enable", "is_fwd_high_precision_reduce_enable",
    "is_bwd_high_precision_reduce_enable", "dsink_all_reduce_op", "ffa_fwd_sm_margin",
    "ffa_bwd_sm_margin", "cuda_device_max_connections",
]

# name -> default (as the string a user would set). Toggles default to "0".
FLAG_DEFAULTS: dict[str, str] = {
    "MAGI_ATTENTION_FORWARD_HIGH_PRECISION_REDUCE": "0",
    "MAGI_ATTENTION_BACKWARD_HIGH_PRECISION_REDUCE": "0",
    "MAGI_ATTENTION_DSINK_ALL_REDUCE_OP": "none",
    "MAGI_ATTENTION_FA4_BACKEND": "0",
    "MAGI_ATTENTION_NATIVE_GRPCOLL": "0",
    "MAGI_ATTENTION_QO_COMM": "0",
    "MAGI_ATTENTION_FLATTEN_HEAD_GROUPS": "0",
    "MAGI_ATTENTION_AUTO_RANGE_MERGE": "0",
    "MAGI_ATTENTION_CATGQA": "0",
    "MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "0",
    "MAGI_ATTENTION_CPP_BACKEND": "0",
    "MAGI_ATTENTION_HIERARCHICAL_COMM": "0",
    "MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE": "1000",
    "MAGI_ATTENTION_SANITY_CHECK": "0",
    "MAGI_ATTENTION_SDPA_BACKEND": "0",
    "MAGI_ATTENTION_DETERMINISTIC_MODE": "0",
    "MAGI_ATTENTION_PROFILE_MODE": "0",
    "MAGI_ATTENTION_CUDA_GRAPHS": "auto",
}

_DSINK_OPS = ("none", "sum", "avg")


def _toggle(name: str) -> bool:
    raw = os.environ.get(name, FLAG_DEFAULTS.get(name, "0")).strip()
    if raw in ("", "0"):
        return False
    if raw == "1":
        return True
    raise EnvFlagError(f"{name}={raw!r} is not a valid toggle; expected '1' (on) or '0' (off).")


def _positive_int(name: str, default: int, *, allow_zero: bool = False) -> int:
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        val = int(raw)
    except ValueError:
        val = -1
    if val < 0 or (val == 0 and not allow_zero):
        kind = "a non-negative" if allow_zero else "a positive"
        raise EnvFlagError(f"{name}={raw!r} is not valid; expected {kind} integer.")
    return val


def is_sanity_check_enable() -> bool:
    """MAGI_ATTENTION_SANITY_CHECK: extra (slow) runtime consistency checks."""
    return _toggle("MAGI_ATTENTION_SANITY_CHECK")


def is_flatten_head_groups_enable() -> bool:
    """MAGI_ATTENTION_FLATTEN_HEAD_GROUPS: flatten GQA groups (effective with QO comm only)."""
    return _toggle("MAGI_ATTENTION_FLATTEN_HEAD_GROUPS")


def is_sdpa_backend_enable() -> bool:
    """MAGI_ATTENTION_SDPA_BACKEND: run the torch reference kernel backend (debugging)."""
    return _toggle("MAGI_ATTENTION_SDPA_BACKEND")


def is_fa4_backend_enable() -> bool:
    """MAGI_ATTENTION_FA4_BACKEND: run the kernels through Flash-Attention 4 (magi_ffa's "fa4" backend)."""
    return _toggle("MAGI_ATTENTION_FA4_BACKEND")


def cuda_device_max_connections() -> int:
    """CUDA_DEVICE_MAX_CONNECTIONS (default 8)."""
    return _positive_int("CUDA_DEVICE_MAX_CONNECTIONS", 8)


def is_cuda_device_max_connections_one() -> bool:
    """True when CUDA_DEVICE_MAX_CONNECTIONS=1: prefetch stage by stage."""
    return cuda_device_max_connections() == 1


def is_deterministic_mode_enable() -> bool:
    """MAGI_ATTENTION_DETERMINISTIC_MODE: deterministic kernels everywhere."""
    return _toggle("MAGI_ATTENTION_DETERMINISTIC_MODE")


def is_profile_mode_enable() -> bool:
    """MAGI_ATTENTION_PROFILE_MODE: kernel profiling events."""
    return _toggle("MAGI_ATTENTION_PROFILE_MODE")


def is_auto_range_merge_enable() -> bool:
    """MAGI_ATTENTION_AUTO_RANGE_MERGE: let FFA merge ranges inside dist-attn."""
    return _toggle("MAGI_ATTENTION_AUTO_RANGE_MERGE")


def is_cat_gqa_enable() -> bool:
    """MAGI_ATTENTION_CATGQA: CatGQA mode for the FFA backward inside dist-attn."""
    return _toggle("MAGI_ATTENTION_CATGQA")


_GRAPH_MODES = ("auto", "1", "0")


def cuda_graphs_mode() -> str:
    """MAGI_ATTENTION_CUDA_GRAPHS: replay whole calc_attn calls from CUDA graphs (runtime/graphs.py; not in v1.1.0): auto | 1 | 0.

    A layer's forward or backward is captured once its tensors come back at the same addresses.
    ``auto``: with the kernels whose graphs were checked on GPUs (FA4, Triton), where graphs can run
    (CUDA, the native group collectives or no remote stage); ``1``: with any kernels, saying once why
    where they cannot run; ``0``: never.
    """
    raw = os.environ.get("MAGI_ATTENTION_CUDA_GRAPHS", FLAG_DEFAULTS["MAGI_ATTENTION_CUDA_GRAPHS"]).strip().lower()
    raw = raw or FLAG_DEFAULTS["MAGI_ATTENTION_CUDA_GRAPHS"]
    if raw not in _GRAPH_MODES:
        raise EnvFlagError(f"MAGI_ATTENTION_CUDA_GRAPHS={raw!r} is not valid; expected one of {_GRAPH_MODES}.")
    return raw


def dist_attn_backward_hide_tail_reduce() -> bool:
    """MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE: keep the last stage's KV to hide its dKV reduce."""
    return _toggle("MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE")


def dist_attn_runtime_dict_size() -> int:
    """MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE: LRU capacity per cp group (default 1000)."""
    return _positive_int("MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE", 1000)


def is_hierarchical_comm_enable() -> bool:
    """MAGI_ATTENTION_HIERARCHICAL_COMM: hierarchical group collectives over a 2-D mesh."""
    return _toggle("MAGI_ATTENTION_HIERARCHICAL_COMM")


def is_qo_comm_enable() -> bool:
    """MAGI_ATTENTION_QO_COMM: dynamic solver, q/o/lse travel too (runtime.qo_comm)."""
    return _toggle("MAGI_ATTENTION_QO_COMM")


def is_native_grpcoll_enable() -> bool:
    """MAGI_ATTENTION_NATIVE_GRPCOLL: native group-collective kernels instead of a2a-v."""
    return _toggle("MAGI_ATTENTION_NATIVE_GRPCOLL")


def is_cpp_backend_enable() -> bool:
    """MAGI_ATTENTION_CPP_BACKEND: accepted for compatibility; geometry is always C++ here."""
    return _toggle("MAGI_ATTENTION_CPP_BACKEND")


def is_fwd_high_precision_reduce_enable() -> bool:
    """MAGI_ATTENTION_FORWARD_HIGH_PRECISION_REDUCE (matters only with QO comm)."""
    return _toggle("MAGI_ATTENTION_FORWARD_HIGH_PRECISION_REDUCE")


def is_bwd_high_precision_reduce_enable() -> bool:
    """MAGI_ATTENTION_BACKWARD_HIGH_PRECISION_REDUCE: reduce partial dK/dV in fp32."""
    return _toggle("MAGI_ATTENTION_BACKWARD_HIGH_PRECISION_REDUCE")


def dsink_all_reduce_op() -> str:
    """MAGI_ATTENTION_DSINK_ALL_REDUCE_OP: none | sum | avg."""
    raw = os.environ.get("MAGI_ATTENTION_DSINK_ALL_REDUCE_OP", "none").strip().lower() or "none"
    if raw not in _DSINK_OPS:
        raise EnvFlagError(
            f"MAGI_ATTENTION_DSINK_ALL_REDUCE_OP={raw!r} is not valid; expected one of {_DSINK_OPS}."
        )
    return raw


def _sm_margin(name: str) -> int:
    default = 0 if is_cuda_device_max_connections_one() else 4
    return _positive_int(name, default, allow_zero=True)


def ffa_fwd_sm_margin() -> int:
    """MAGI_ATTENTION_FFA_FORWARD_SM_MARGIN (default 4, or 0 when max connections is 1)."""
    return _sm_margin("MAGI_ATTENTION_FFA_FORWARD_SM_MARGIN")


def ffa_bwd_sm_margin() -> int:
    """MAGI_ATTENTION_FFA_BACKWARD_SM_MARGIN (default 4, or 0 when max connections is 1)."""
    return _sm_margin("MAGI_ATTENTION_FFA_BACKWARD_SM_MARGIN")


@dataclass(frozen=True)
class EnvFlags:
    """The behaviour-changing flags a DistAttnRuntimeKey captures at creation."""

    deterministic: bool
    hierarchical_comm: bool
    qo_comm: bool
    native_grpcoll: bool
    flatten_head_groups: bool
    sdpa_backend: bool
    fa4_backend: bool
    auto_range_merge: bool
    cat_gqa: bool
    bwd_hide_tail_reduce: bool
    fwd_high_precision_reduce: bool
    bwd_high_precision_reduce: bool
    dsink_all_reduce_op: str
    prefetch_stage_by_stage: bool
    cuda_graphs: str = "0"  # cuda_graphs_mode()


def snapshot_flags() -> EnvFlags:
    """Read every behaviour-changing flag now (raises EnvFlagError on a bad value)."""
    return EnvFlags(
        deterministic=is_deterministic_mode_enable(),
        hierarchical_comm=is_hierarchical_comm_enable(),
        qo_comm=is_qo_comm_enable(),
        native_grpcoll=is_native_grpcoll_enable(),
        flatten_head_groups=is_flatten_head_groups_enable(),
        sdpa_backend=is_sdpa_backend_enable(),
        fa4_backend=is_fa4_backend_enable(),
        auto_range_merge=is_auto_range_merge_enable(),
        cat_gqa=is_cat_gqa_enable(),
        bwd_hide_tail_reduce=dist_attn_backward_hide_tail_reduce(),
        fwd_high_precision_reduce=is_fwd_high_precision_reduce_enable(),
        bwd_high_precision_reduce=is_bwd_high_precision_reduce_enable(),
        dsink_all_reduce_op=dsink_all_reduce_op(),
        prefetch_stage_by_stage=is_cuda_device_max_connections_one(),
        cuda_graphs=cuda_graphs_mode(),
    )


def check_flag_comb(flags: EnvFlags | None = None) -> EnvFlags:
    """Reject forbidden flag combinations (reference §4.1) and not-yet-implemented modes.

    Returns the checked snapshot so callers can store it.
    """
    f = snapshot_flags() if flags is None else flags
    conflicts = []
    if f.hierarchical_comm and f.qo_comm:
        conflicts.append("MAGI_ATTENTION_HIERARCHICAL_COMM=1 with MAGI_ATTENTION_QO_COMM=1")
    if f.hierarchical_comm and f.native_grpcoll:
        conflicts.append("MAGI_ATTENTION_HIERARCHICAL_COMM=1 with MAGI_ATTENTION_NATIVE_GRPCOLL=1")
    if f.native_grpcoll and f.deterministic:
        conflicts.append("MAGI_ATTENTION_NATIVE_GRPCOLL=1 with MAGI_ATTENTION_DETERMINISTIC_MODE=1")
    if f.fa4_backend and not f.sdpa_backend:
        for bad, name in ((f.deterministic, "MAGI_ATTENTION_DETERMINISTIC_MODE=1"),
                          (f.fwd_high_precision_reduce,
                           "MAGI_ATTENTION_FORWARD_HIGH_PRECISION_REDUCE=1"),
                          (f.bwd_high_precision_reduce,
                           "MAGI_ATTENTION_BACKWARD_HIGH_PRECISION_REDUCE=1")):
            if bad:
                conflicts.append(f"MAGI_ATTENTION_FA4_BACKEND=1 with {name}")
    if f.bwd_hide_tail_reduce and f.qo_comm:
        conflicts.append("MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE=1 with MAGI_ATTENTION_QO_COMM=1")
    if conflicts:
        raise EnvFlagError("check_flag_comb(): conflicting environment flags: "
                           + "; ".join(conflicts) + ". Unset one flag of each pair.")
    return f
