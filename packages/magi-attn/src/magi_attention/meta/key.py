"""DistAttnRuntimeKey: the hashable identity of one distributed-attention runtime.

Why a value type: every rank of a cp group derives the same key from the same arguments and
environment, so cache hits and misses (and therefore collectives) happen in lock step. The key
keeps the padded mask as plain tuples (hashable, torch- and solver-free) and a snapshot of the
behaviour-changing env flags, so a later env change yields a new key rather than a silently
different run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch.distributed as dist

from magi_attention.config import DistAttnConfig
from magi_attention.env import EnvFlags
from magi_attention.errors import MagiAttentionError

__all__ = ["DistAttnRuntimeKey", "resolve_cp_group", "group_ranks"]

_MASK_NAMES = {0: "full", 1: "causal", 2: "inv_causal", 3: "bi_causal"}


@dataclass(frozen=True)
class DistAttnRuntimeKey:
    """Identity of a runtime: padded mask, sizes, group, config and env-flag snapshot.

    ``q_ranges``/``k_ranges`` are tuples of (start, end) after padding; ``attn_mask_type`` is a
    tuple of int codes (0 full, 1 causal, 2 inv_causal, 3 bi_causal). ``dispatch_source`` is the
    key whose dispatch solution this key reuses (``make_*_key_for_new_mask_after_dispatch``).
    """

    q_ranges: tuple
    k_ranges: tuple
    attn_mask_type: tuple
    total_seqlen_q: int
    total_seqlen_k: int
    num_heads_q: int
    num_heads_kv: int
    head_dim: int
    pad_size: int
    chunk_size: int
    cp_group: Any
    cp_mesh: Any
    dist_attn_config: DistAttnConfig
    flags: EnvFlags
    dispatch_source: DistAttnRuntimeKey | None = None
    is_same_source: bool = True
    is_q_permutable: bool = True
    is_k_permutable: bool = True

    def __hash__(self) -> int:
        """Computed once per key. Why: the key holds the whole mask as tuples, and every calc_attn,
        dispatch and undispatch looks its runtime up by key; rehashing a mask of hundreds of
        slices each time cost tens of microseconds of host time per call."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", cached)  # not a field: equality ignores it
        return cached

    # Anchor-compatible flag attributes.
    @property
    def is_deterministic_mode_enable(self) -> bool:
        return self.flags.deterministic

    @property
    def is_hierarchical_comm_enable(self) -> bool:
        return self.flags.hierarchical_comm

    @property
    def is_qo_comm_enable(self) -> bool:
        return self.flags.qo_comm

    @property
    def is_native_grpcoll_enable(self) -> bool:
        return self.flags.native_grpcoll

    @property
    def is_flatten_head_groups_enable(self) -> bool:
        return self.flags.flatten_head_groups

    @property
    def is_sdpa_backend_enable(self) -> bool:
        return self.flags.sdpa_backend

    @property
    def is_fa4_backend_enable(self) -> bool:
        return self.flags.fa4_backend

    @property
    def is_auto_range_merge_enable(self) -> bool:
        return self.flags.auto_range_merge

    @property
    def cp_size(self) -> int:
        return dist.get_world_size(self.cp_group)

    @property
    def unpadded_seqlen(self) -> int:
        return self.total_seqlen_q - self.pad_size

    def __repr__(self) -> str:
        return (f"DistAttnRuntimeKey(slices={len(self.q_ranges)}, total_seqlen={self.total_seqlen_q}"
                f" (pad {self.pad_size}), chunk_size={self.chunk_size}, cp_size={self.cp_size}, "
                f"heads={self.num_heads_q}/{self.num_heads_kv}, head_dim={self.head_dim})")

    def to_string(self, max_slices: int = 16) -> str:
        """A readable multi-line description of the mask and sizes."""
        lines = [repr(self)]
        for i, (q, k, t) in enumerate(zip(self.q_ranges, self.k_ranges, self.attn_mask_type)):
            if i >= max_slices:
                lines.append(f"  ... {len(self.q_ranges) - max_slices} more slices")
                break
            lines.append(f"  q[{q[0]}, {q[1]}) x k[{k[0]}, {k[1]}) {_MASK_NAMES[t]}")
        return "\n".join(lines)


def group_ranks(group: Any) -> tuple[int, ...]:
    """Sorted global ranks of a process group (the per-group cache id)."""
    return tuple(sorted(dist.get_process_group_ranks(group)))


def resolve_cp_group(cp_group_or_mesh: Any, *, hierarchical: bool, fn: str):
    """ProcessGroup or 1-D/2-D DeviceMesh -> (cp_group, cp_mesh)."""
    try:
        from torch.distributed.device_mesh import DeviceMesh
    except ImportError:  # pragma: no cover
        DeviceMesh = ()  # type: ignore[assignment]
    if isinstance(cp_group_or_mesh, dist.ProcessGroup):
        if hierarchical:
            raise MagiAttentionError(
                f"{fn}(): cp_group_or_mesh is a ProcessGroup but MAGI_ATTENTION_HIERARCHICAL_COMM=1"
                " needs a 2-D DeviceMesh (inter, intra); pass the mesh or unset the flag")
        return cp_group_or_mesh, None
    if DeviceMesh and isinstance(cp_group_or_mesh, DeviceMesh):
        mesh = cp_group_or_mesh
        if mesh.ndim > 2 or (hierarchical and mesh.ndim != 2):
            need = "exactly 2" if hierarchical else "1 or 2"
            raise MagiAttentionError(f"{fn}(): cp_group_or_mesh is a {mesh.ndim}-D DeviceMesh; "
                                     f"expected {need} dims")
        if mesh.ndim == 1:
            return mesh.get_group(), mesh
        flat = getattr(mesh, "_flatten", None)
        if flat is not None:
            return flat().get_group(), mesh
        ranks = mesh.mesh.flatten().tolist()  # pragma: no cover - older torch
        return dist.new_group(ranks=ranks), mesh
    raise MagiAttentionError(f"{fn}(): cp_group_or_mesh must be a torch.distributed ProcessGroup "
                             f"or DeviceMesh, got {type(cp_group_or_mesh).__name__}")
