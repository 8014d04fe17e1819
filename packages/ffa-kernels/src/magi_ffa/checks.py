"""Input validation at the public entrance: small `check_*` helpers, each naming the argument.

Every message reads `<function>(): <argument> <what is wrong>; <expected>/<fix>.` Checks that need
tensor values (range bounds, type codes, overlap conditions) read them on the host (range bounds
through the shared copy of ``range_cache``), and are skipped while torch.compile traces (they
would break the graph); shape, dtype and device checks always run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from magi_ffa import range_cache
from magi_ffa.errors import FFAInputError, FFATypeError
from magi_ffa.merge import SINK_LAYOUTS

__all__ = [
    "check_anchor_options",
    "check_qkv",
    "check_range_counts",
    "check_range_values",
    "check_scalars",
    "check_sink",
    "is_compiling",
    "normalize_ranges",
    "normalize_type_map",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_compiling() -> bool:
    """True while torch.compile traces (value-dependent checks are skipped then)."""
    fn = getattr(torch.compiler, "is_compiling", None)
    return bool(fn()) if fn is not None else False


def _dt(t: torch.dtype) -> str:
    return str(t).removeprefix("torch.")


def check_qkv(fn: str, q, k, v) -> None:
    """q [Sq, hq, d], k/v [Sk, hk, d]: same float dtype and device, hq % hk == 0."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise FFATypeError(f"{fn}(): {name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 3:
            raise FFAInputError(
                f"{fn}(): {name} must have 3 dims [tokens, heads, head_dim] (layout thd), "
                f"got shape {list(t.shape)}."
            )
        if t.dtype not in _FLOAT_DTYPES:
            names = ", ".join(_dt(d) for d in _FLOAT_DTYPES)
            raise FFATypeError(
                f"{fn}(): {name}.dtype={_dt(t.dtype)} is not a supported float dtype ({names})."
            )
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise FFATypeError(
                f"{fn}(): {name}.dtype={_dt(t.dtype)} differs from q.dtype={_dt(q.dtype)}; q, k, v need one dtype."
            )
        if t.device != q.device:
            raise FFAInputError(
                f"{fn}(): {name} is on {t.device} but q is on {q.device}; move them to one device."
            )
    if k.shape != v.shape:
        raise FFAInputError(
            f"{fn}(): k and v need the same shape, got k {list(k.shape)} and v {list(v.shape)}."
        )
    if k.shape[2] != q.shape[2]:
        raise FFAInputError(f"{fn}(): head_dim of k ({k.shape[2]}) differs from q ({q.shape[2]}).")
    hq, hk = q.shape[1], k.shape[1]
    if hk == 0 or hq % hk != 0:
        raise FFAInputError(
            f"{fn}(): q heads ({hq}) must be a multiple of k/v heads ({hk}) for GQA/MQA; got hq % hk = "
            f"{hq % hk if hk else 'undefined'}."
        )


def normalize_ranges(fn: str, name: str, ranges, device: torch.device) -> torch.Tensor:
    """Accept an int tensor [N, 2] or a nested list of pairs; return int32 [N, 2] on `device`."""
    if isinstance(ranges, torch.Tensor):
        if ranges.dtype.is_floating_point or ranges.dtype.is_complex or ranges.dtype == torch.bool:
            raise FFATypeError(f"{fn}(): {name} must be an int32 tensor, got dtype {_dt(ranges.dtype)}.")
        t = ranges
    elif isinstance(ranges, Sequence):
        try:
            t = torch.tensor([[int(a), int(b)] for a, b in ranges], dtype=torch.int32).reshape(-1, 2)
        except (TypeError, ValueError) as e:
            raise FFATypeError(f"{fn}(): {name} must be a list of (start, end) int pairs: {e}") from None
    else:
        raise FFATypeError(
            f"{fn}(): {name} must be an int32 tensor [N, 2] or a list of pairs, got {type(ranges).__name__}."
        )
    if t.dim() != 2 or t.shape[1] != 2:
        raise FFAInputError(f"{fn}(): {name} must have shape [N, 2], got {list(t.shape)}.")
    return t.to(device=device, dtype=torch.int32).contiguous()


def normalize_type_map(fn: str, attn_type_map, n: int, device: torch.device) -> torch.Tensor:
    """None (all FULL), a list of codes or an int tensor [N]; return int32 [N] on `device`."""
    if attn_type_map is None:
        return torch.zeros(n, dtype=torch.int32, device=device)
    if isinstance(attn_type_map, torch.Tensor):
        if (
            attn_type_map.dtype.is_floating_point
            or attn_type_map.dtype.is_complex
            or attn_type_map.dtype == torch.bool
        ):
            raise FFATypeError(
                f"{fn}(): attn_type_map must be an int32 tensor, got dtype {_dt(attn_type_map.dtype)}."
            )
        t = attn_type_map
    elif isinstance(attn_type_map, Sequence):
        try:
            t = torch.tensor([int(x) for x in attn_type_map], dtype=torch.int32)
        except (TypeError, ValueError) as e:
            raise FFATypeError(f"{fn}(): attn_type_map must be a list of int codes 0..3: {e}") from None
    else:
        raise FFATypeError(
            f"{fn}(): attn_type_map must be an int32 tensor [N], a list or None, got {type(attn_type_map).__name__}."
        )
    if t.dim() != 1 or t.shape[0] != n:
        raise FFAInputError(
            f"{fn}(): attn_type_map must have shape [{n}] (one code per slice), got {list(t.shape)}."
        )
    return t.to(device=device, dtype=torch.int32).contiguous()


def check_range_counts(fn: str, q_ranges: torch.Tensor, k_ranges: torch.Tensor) -> None:
    """q_ranges and k_ranges pair up one to one."""
    if q_ranges.shape[0] != k_ranges.shape[0]:
        raise FFAInputError(
            f"{fn}(): q_ranges has {q_ranges.shape[0]} slices but k_ranges has {k_ranges.shape[0]}; "
            "they must pair up one to one."
        )


def check_range_values(
    fn: str, q_ranges: torch.Tensor, k_ranges: torch.Tensor, type_map: torch.Tensor, sq: int, sk: int
) -> None:
    """Counts match, 0 <= start <= end <= seqlen, codes in 0..3.

    The values come from the shared host copy (``range_cache``): one device read per distinct
    range tensors, none when the same unchanged tensors come again. Clean ranges pass on a
    summary; only bad ones are walked slice by slice to name the first offender.
    """
    check_range_counts(fn, q_ranges, k_ranges)
    if is_compiling():
        return
    hr = range_cache.host_ranges(q_ranges, k_ranges, type_map)
    if hr.in_bounds(sq, sk):
        return
    for name, rngs, total in (("q_ranges", hr.q, sq), ("k_ranges", hr.k, sk)):
        for idx, (a, b) in enumerate(rngs.tolist()):
            if a > b:
                raise FFAInputError(
                    f"{fn}(): {name}[{idx}]=({a}, {b}) is inverted; each range needs start <= end."
                )
            if a < 0 or b > total:
                raise FFAInputError(
                    f"{fn}(): {name}[{idx}]=({a}, {b}) is out of bounds; ranges must lie in [0, {total}] "
                    f"({'q' if name == 'q_ranges' else 'k'} has {total} tokens)."
                )
    for idx, code in enumerate(hr.types.tolist()):
        if not 0 <= code <= 3:
            raise FFAInputError(
                f"{fn}(): attn_type_map[{idx}]={code} is not a mask type code; expected 0 (full), "
                "1 (causal), 2 (inv_causal) or 3 (bi_causal)."
            )


def check_scalars(fn: str, head_dim: int, softmax_scale, softcap) -> tuple[float, float]:
    """softmax_scale (None -> d**-0.5) finite float; softcap >= 0. Returns both as floats."""
    if softmax_scale is None:
        softmax_scale = head_dim**-0.5
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise FFATypeError(
            f"{fn}(): softmax_scale must be a float or None, got {type(softmax_scale).__name__}."
        )
    if not math.isfinite(softmax_scale):
        raise FFAInputError(f"{fn}(): softmax_scale must be finite, got {softmax_scale}.")
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise FFATypeError(f"{fn}(): softcap must be a float, got {type(softcap).__name__}.")
    if not (softcap >= 0 and math.isfinite(softcap)):
        raise FFAInputError(f"{fn}(): softcap must be a finite float >= 0 (0 disables it), got {softcap}.")
    return float(softmax_scale), float(softcap)


def check_sink(fn: str, sink, sink_layout, q: torch.Tensor) -> None:
    """sink: fp32 (or fp64) [s, hq] for "sh", [Sq, s, hq] for "ssh", on q's device."""
    if sink_layout == "shd":
        raise NotImplementedError(
            f"{fn}(): sink_layout='shd' is not supported (supported: {', '.join(SINK_LAYOUTS)})."
        )
    if sink_layout not in SINK_LAYOUTS:
        raise FFAInputError(
            f"{fn}(): sink_layout={sink_layout!r} is unknown; expected one of {SINK_LAYOUTS}."
        )
    if sink is None:
        return
    if not isinstance(sink, torch.Tensor):
        raise FFATypeError(f"{fn}(): sink must be a torch.Tensor or None, got {type(sink).__name__}.")
    if sink.dtype not in (torch.float32, torch.float64):
        raise FFATypeError(
            f"{fn}(): sink.dtype={_dt(sink.dtype)} is not supported; sink logits must be float32."
        )
    if sink.device != q.device:
        raise FFAInputError(f"{fn}(): sink is on {sink.device} but q is on {q.device}.")
    sq, hq = q.shape[0], q.shape[1]
    if sink_layout == "sh":
        ok = sink.dim() == 2 and sink.shape[1] == hq
        want = f"[s_sink, {hq}]"
    else:
        ok = sink.dim() == 3 and sink.shape[0] == sq and sink.shape[2] == hq
        want = f"[{sq}, s_sink, {hq}]"
    if not ok:
        raise FFAInputError(
            f"{fn}(): sink has shape {list(sink.shape)} but sink_layout={sink_layout!r} needs {want} "
            "(s_sink sink tokens, one logit per q head)."
        )


def _check_bool(fn: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise FFATypeError(f"{fn}(): {name} must be a bool, got {type(value).__name__}.")


def _ranges_disjoint(ranges: torch.Tensor) -> bool:
    rs = sorted((a, b) for a, b in ranges.tolist() if b > a)
    return all(rs[i][1] <= rs[i + 1][0] for i in range(len(rs) - 1))


def check_anchor_options(
    fn: str,
    q_ranges: torch.Tensor,
    k_ranges: torch.Tensor,
    *,
    deterministic,
    return_max_logits,
    sm_margin,
    disable_fwd_atomic_reduction,
    disable_bwd_dkv_atomic_reduction,
    ref_block_size,
    max_seqlen_q,
    auto_range_merge,
    swap_ab,
    pack_gqa,
    cat_gqa,
    sparse_load,
    swap_bwd_qk_loop,
) -> None:
    """Validate the anchor's tuning keywords and their mutual exclusions (they change no result here)."""
    if (deterministic is False and return_max_logits is False and disable_fwd_atomic_reduction is False
            and disable_bwd_dkv_atomic_reduction is False and auto_range_merge is False and swap_ab is False
            and pack_gqa is False and cat_gqa is False and sparse_load is False and swap_bwd_qk_loop is False
            and type(sm_margin) is int and sm_margin == 0 and ref_block_size is None and max_seqlen_q is None):
        return  # the defaults: nothing to check (every call of a training step passes this way)
    flags = dict(
        deterministic=deterministic,
        return_max_logits=return_max_logits,
        disable_fwd_atomic_reduction=disable_fwd_atomic_reduction,
        disable_bwd_dkv_atomic_reduction=disable_bwd_dkv_atomic_reduction,
        auto_range_merge=auto_range_merge,
        swap_ab=swap_ab,
        pack_gqa=pack_gqa,
        cat_gqa=cat_gqa,
        sparse_load=sparse_load,
        swap_bwd_qk_loop=swap_bwd_qk_loop,
    )
    for name, value in flags.items():
        _check_bool(fn, name, value)
    if isinstance(sm_margin, bool) or not isinstance(sm_margin, int) or sm_margin < 0:
        raise FFAInputError(f"{fn}(): sm_margin must be an int >= 0, got {sm_margin!r}.")
    if max_seqlen_q is not None and (
        isinstance(max_seqlen_q, bool) or not isinstance(max_seqlen_q, int) or max_seqlen_q < 0
    ):
        raise FFAInputError(f"{fn}(): max_seqlen_q must be None or an int >= 0, got {max_seqlen_q!r}.")
    if deterministic and auto_range_merge:
        raise FFAInputError(f"{fn}(): deterministic=True cannot be combined with auto_range_merge=True.")
    if sparse_load and not auto_range_merge:
        raise FFAInputError(f"{fn}(): sparse_load=True requires auto_range_merge=True.")
    if pack_gqa and cat_gqa:
        raise FFAInputError(f"{fn}(): pack_gqa=True and cat_gqa=True are mutually exclusive.")
    if disable_bwd_dkv_atomic_reduction and swap_bwd_qk_loop:
        raise FFAInputError(
            f"{fn}(): disable_bwd_dkv_atomic_reduction=True cannot be combined with swap_bwd_qk_loop=True."
        )
    if ref_block_size is not None:
        ok = (
            isinstance(ref_block_size, (tuple, list))
            and len(ref_block_size) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in ref_block_size)
        )
        if not ok:
            raise FFAInputError(
                f"{fn}(): ref_block_size must be None or a pair (M, N) of ints, got {ref_block_size!r}."
            )
        m, n = ref_block_size
        if swap_ab:
            if (m, n) not in {(8, 64), (16, 64), (32, 64), (64, 64)}:
                raise FFAInputError(
                    f"{fn}(): ref_block_size={(m, n)} is invalid with swap_ab=True; "
                    "expected one of (8, 64), (16, 64), (32, 64), (64, 64)."
                )
        elif m not in (64, 128, 192) or n % 16 != 0 or not 0 < n <= 256:
            raise FFAInputError(
                f"{fn}(): ref_block_size={(m, n)} is invalid; expected M in (64, 128, 192) and N a multiple of 16 <= 256."
            )
    if is_compiling():
        return
    if disable_fwd_atomic_reduction and not _ranges_disjoint(q_ranges):
        raise FFAInputError(
            f"{fn}(): disable_fwd_atomic_reduction=True needs pairwise disjoint q_ranges; some overlap."
        )
    if disable_bwd_dkv_atomic_reduction and not _ranges_disjoint(k_ranges):
        raise FFAInputError(
            f"{fn}(): disable_bwd_dkv_atomic_reduction=True needs pairwise disjoint k_ranges; some overlap."
        )
