"""dispatch / undispatch along dim 0 as differentiable functions (design §2.5).

dispatch keeps this rank's chunks (no communication; every rank holds the same global tensor)
and its backward all-gathers; undispatch all-gathers and its backward keeps the local chunks.
The two are each other's transposes, which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from magi_attention.common.host_collective import run_and_release
from magi_attention.common.transfer import index_tensor
from magi_attention.errors import MagiAttentionError

__all__ = ["ChunkLayout", "dispatch_func", "undispatch_func"]


@dataclass(frozen=True)
class ChunkLayout:
    """Which chunks each rank holds: ``partitions[r]`` sorted chunk ids, each ``chunk_size`` long."""

    partitions: tuple[tuple[int, ...], ...]
    chunk_size: int
    rank: int
    group: Any

    @property
    def num_chunks(self) -> int:
        return sum(len(p) for p in self.partitions)

    @property
    def total_seqlen(self) -> int:
        return self.num_chunks * self.chunk_size

    @property
    def shard_seqlen(self) -> int:
        return len(self.partitions[self.rank]) * self.chunk_size

    def perm(self) -> list[int]:
        return [c for p in self.partitions for c in p]


def _local(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    chunks = x.reshape(layout.num_chunks, layout.chunk_size, *x.shape[1:])
    ids = index_tensor(layout.partitions[layout.rank], x.device)
    return chunks.index_select(0, ids).reshape(layout.shard_seqlen, *x.shape[1:])


def _all_gather(x: torch.Tensor, world: int, group, flat: bool | None = None) -> torch.Tensor:
    """[world * n, ...]: every rank's ``x`` [n, ...] in rank order, gathered into one tensor.

    Why not a list of parts and a ``cat``: that pass over the gathered tensor is a copy of the
    whole sequence (256 MB per tensor at 64k tokens, 16 heads of 128), made by every undispatch and
    every dispatch backward. NCCL gathers into the flat tensor itself (``flat``, default: on NCCL);
    other backends gather into views of it (gloo had no flat all-gather before torch ~2.2).
    """
    out = x.new_empty((world * x.shape[0], *x.shape[1:]))
    if flat is None:
        flat = dist.get_backend(group) == "nccl"
    if flat:
        run_and_release(lambda ts: dist.all_gather_into_tensor(ts[1], ts[0], group=group, async_op=True), [x, out])
    else:
        run_and_release(lambda ts: dist.all_gather(ts[1:], ts[0], group=group, async_op=True),
                        [x, *out.chunk(world)])
    return out


def _gather(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    x = x.contiguous()
    world = len(layout.partitions)
    gathered = x if world == 1 else _all_gather(x, world, layout.group)
    chunks = gathered.reshape(layout.num_chunks, layout.chunk_size, *x.shape[1:])
    out = torch.empty_like(chunks)
    perm = index_tensor(layout.perm(), x.device)
    out.index_copy_(0, perm, chunks)
    return out.reshape(layout.total_seqlen, *x.shape[1:])


class _Dispatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
        ctx.layout = layout
        return _local(x, layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _gather(grad, ctx.layout), None


class _Undispatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
        ctx.layout = layout
        return _gather(x, layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _local(grad, ctx.layout), None


def dispatch_func(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """Padded global ``x`` [T', ...] -> this rank's chunks [T'/cp, ...] (local order)."""
    if x.dim() == 0 or x.shape[0] != layout.total_seqlen:
        got = list(x.shape)
        raise MagiAttentionError(f"dispatch(): x has shape {got}; dim 0 must be the padded total "
                                 f"seqlen {layout.total_seqlen}")
    return _Dispatch.apply(x, layout)


def undispatch_func(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """Local shard [T'/cp, ...] -> padded global tensor [T', ...] (all-gather)."""
    if x.dim() == 0 or x.shape[0] != layout.shard_seqlen:
        raise MagiAttentionError(f"undispatch(): x has shape {list(x.shape)}; dim 0 must be the "
                                 f"local shard seqlen {layout.shard_seqlen}")
    return _Undispatch.apply(x, layout)
