"""Input validation for the group collectives: small named checks run before any plan or launch.

Every message names the function, the argument, what was expected, what was got, and a fix.
"""

from __future__ import annotations

import torch

from magi_grpcoll.errors import GrpCollError

__all__: list[str] = []


def _as_int_list(fn: str, name: str, value) -> list[int]:
    """Accept a list/tuple of ints or a 1-D int tensor (device meta costs one host copy)."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise GrpCollError(f"{fn}(): {name} must be a 1-D integer tensor or list of ints; got {value.dtype} "
                               f"tensor of shape {list(value.shape)}.")
        return [int(x) for x in value.tolist()]
    if not isinstance(value, (list, tuple)):
        raise GrpCollError(f"{fn}(): {name} must be a list of ints; got {type(value).__name__}.")
    out = []
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int):
            try:
                import numpy as np  # numpy ints are fine

                if isinstance(x, np.integer):
                    out.append(int(x))
                    continue
            except ImportError:  # pragma: no cover
                pass
            raise GrpCollError(f"{fn}(): {name}[{i}] must be an int; got {type(x).__name__} {x!r}.")
        out.append(x)
    return out


def check_split_sizes(fn: str, name: str, sizes, length: int | None) -> list[int]:
    """Split sizes are non-negative ints; their sum must equal the tensor length when one is given."""
    sizes = _as_int_list(fn, name, sizes)
    for i, s in enumerate(sizes):
        if s < 0:
            raise GrpCollError(f"{fn}(): {name}[{i}]={s} is negative; split sizes must be >= 0.")
    if length is not None and sum(sizes) != length:
        raise GrpCollError(
            f"{fn}(): sum({name})={sum(sizes)} does not match the tensor length along dim 0 ({length}); "
            f"the splits must cover the tensor exactly.")
    return sizes


def check_rank(fn: str, name: str, r, world_size: int) -> int:
    if isinstance(r, bool) or not isinstance(r, int):
        try:
            r = int(r)
        except (TypeError, ValueError):
            raise GrpCollError(f"{fn}(): {name} must be an int rank; got {type(r).__name__}.") from None
    if not 0 <= r < world_size:
        raise GrpCollError(f"{fn}(): {name}={r} is out of range; ranks must lie in [0, {world_size}).")
    return r


def _strip_padding(row: list[int], world_size: int) -> list[int]:
    """Device-meta rows are right-padded with -1; drop that padding."""
    while row and row[-1] == -1:
        row.pop()
    return row


def check_rank_sets(fn: str, name: str, sets, n: int, world_size: int, *, allow_empty: bool = True
                    ) -> tuple[tuple[int, ...], ...]:
    """A list of n rank lists (each distinct, in range), or a [n, world_size] tensor padded with -1."""
    if isinstance(sets, torch.Tensor):
        if sets.dim() != 2:
            raise GrpCollError(f"{fn}(): {name} as a tensor must be 2-D [n_splits, world_size] padded with -1; "
                               f"got shape {list(sets.shape)}.")
        sets = [_strip_padding([int(x) for x in row], world_size) for row in sets.tolist()]
    if not isinstance(sets, (list, tuple)):
        raise GrpCollError(f"{fn}(): {name} must be a list of rank lists; got {type(sets).__name__}.")
    if len(sets) != n:
        raise GrpCollError(f"{fn}(): len({name})={len(sets)} but there are {n} splits; give one rank list "
                           f"per split.")
    out = []
    for i, s in enumerate(sets):
        if isinstance(s, torch.Tensor):
            s = s.tolist()
        if not isinstance(s, (list, tuple)):
            raise GrpCollError(f"{fn}(): {name}[{i}] must be a list of ranks; got {type(s).__name__}.")
        ranks = tuple(check_rank(fn, f"{name}[{i}][{k}]", r, world_size) for k, r in enumerate(s))
        if len(set(ranks)) != len(ranks):
            raise GrpCollError(f"{fn}(): {name}[{i}]={list(ranks)} lists a rank twice; ranks must be distinct.")
        if not allow_empty and not ranks:
            raise GrpCollError(f"{fn}(): {name}[{i}] is empty.")
        out.append(ranks)
    return tuple(out)


def check_rank_list(fn: str, name: str, ranks, n: int, world_size: int) -> tuple[int, ...]:
    """One rank per split (a list, or a 1-D tensor right-padded with world_size in zero-size slots)."""
    ranks = _as_int_list(fn, name, ranks)
    if len(ranks) != n:
        raise GrpCollError(f"{fn}(): len({name})={len(ranks)} but there are {n} splits; give one rank per split.")
    return tuple(check_rank(fn, f"{name}[{i}]", r, world_size) for i, r in enumerate(ranks))


def strip_device_padding(sizes: list[int], ranks, world_size: int):
    """Drop trailing zero-size slots whose rank is the padding value world_size (device-meta form)."""
    if isinstance(ranks, torch.Tensor):
        ranks = [int(x) for x in ranks.tolist()]
    ranks = list(ranks)
    while sizes and ranks and len(sizes) == len(ranks) and ranks[-1] == world_size and sizes[-1] == 0:
        sizes.pop()
        ranks.pop()
    return sizes, ranks


def check_tensor(fn: str, name: str, t, *, dim0: int | None = None, dtype: torch.dtype | None = None,
                 like: torch.Tensor | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise GrpCollError(f"{fn}(): {name} must be a torch.Tensor; got {type(t).__name__}.")
    if t.dim() == 0:
        raise GrpCollError(f"{fn}(): {name} must have at least one dimension (split along dim 0).")
    if dim0 is not None and t.shape[0] != dim0:
        raise GrpCollError(f"{fn}(): {name} has {t.shape[0]} rows along dim 0; expected {dim0}.")
    if dtype is not None and t.dtype != dtype:
        raise GrpCollError(f"{fn}(): {name} must be {dtype}; got {t.dtype}.")
    if like is not None:
        if t.dtype != like.dtype:
            raise GrpCollError(f"{fn}(): {name} dtype {t.dtype} differs from input dtype {like.dtype}; "
                               f"input and output must have the same dtype.")
        if tuple(t.shape[1:]) != tuple(like.shape[1:]):
            raise GrpCollError(f"{fn}(): {name} row shape {list(t.shape[1:])} differs from input row shape "
                               f"{list(like.shape[1:])}.")
        if t.device != like.device:
            raise GrpCollError(f"{fn}(): {name} is on {t.device} but input is on {like.device}.")
    if not t.is_contiguous():
        raise GrpCollError(f"{fn}(): {name} must be contiguous; call .contiguous() first.")
    return t


def check_lse(fn: str, name: str, lse, data: torch.Tensor) -> torch.Tensor:
    """lse is float32 [seqlen, num_heads] matching data [seqlen, num_heads, ...]."""
    check_tensor(fn, name, lse, dtype=torch.float32)
    if lse.dim() != 2 or data.dim() < 2 or tuple(lse.shape) != tuple(data.shape[:2]):
        raise GrpCollError(f"{fn}(): {name} must be float32 [seqlen, num_heads] = {list(data.shape[:2])} "
                           f"matching its data; got shape {list(lse.shape)}.")
    if lse.device != data.device:
        raise GrpCollError(f"{fn}(): {name} is on {lse.device} but its data is on {data.device}.")
    return lse
