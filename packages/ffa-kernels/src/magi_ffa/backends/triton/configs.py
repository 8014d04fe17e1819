"""Tile sizes, warps and pipeline stages of the Triton FFA kernels, per pass and head dim.

Why a table and not ``triton.autotune``: the work lists (``plan.py``) depend on the tile
sizes, so a config must be chosen before planning. ``candidates()`` gives the small list a
tuner may try (issue #7), ``keep()`` is the named prune predicate, and ``pick()`` returns the
default: the first kept candidate, or the environment override used by tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import triton

__all__ = ["KernelConfig", "candidates", "fused_bwd", "keep", "padded_head_dim", "pick"]

PASSES = ("fwd", "bwd_dq", "bwd_dkdv")


@dataclass(frozen=True)
class KernelConfig:
    """BLOCK_M: q rows per tile; BLOCK_N: k columns per tile."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def padded_head_dim(head_dim: int) -> int:
    """The power-of-two width the kernels use for `head_dim` (at least 16 for tl.dot)."""
    return max(16, triton.next_power_of_2(head_dim))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Preferred first; values sized for Hopper (228 KB shared memory per SM). The first entries
# were measured best on an H100 (bf16, d=128, 16k tokens, full and causal; benchmarks/
# PERF_NOTES.md, sweep of 2026-11): fwd 128x128/8 warps/3 stages 466 TF/s vs 452 for
# 128x64; dq 128x64/8/3; dk/dv (q step 64, k tile 128)/8/3. keep() prunes per head dim.
_TABLE: dict[str, list[KernelConfig]] = {
    "fwd": [
        KernelConfig(128, 128, 8, 3),
        KernelConfig(128, 64, 8, 3),
        KernelConfig(64, 64, 4, 3),
        KernelConfig(64, 32, 4, 2),
    ],
    "bwd_dq": [
        KernelConfig(128, 64, 8, 3),
        KernelConfig(64, 64, 4, 2),
        KernelConfig(64, 32, 4, 2),
    ],
    "bwd_dkdv": [
        KernelConfig(64, 128, 8, 3),
        KernelConfig(64, 64, 4, 2),
        KernelConfig(32, 64, 4, 2),
    ],
}


# Many short slices (varlen documents, sliding-window bands): smaller tiles waste fewer masked
# cells at slice edges and give more programs. Measured on an H100 at 8k tokens (varlen causal,
# sliding window 1k): fwd 64x64 227/245 TF/s vs 183/213 for 128x128; dk/dv 32x64 193/210 vs
# 167/183. Used when the mean q rows per slice is below SPARSE_ROWS_PER_SLICE.
SPARSE_ROWS_PER_SLICE = 2048
_SPARSE: dict[str, KernelConfig] = {
    "fwd": KernelConfig(64, 64, 4, 3),
    "bwd_dq": KernelConfig(64, 64, 4, 2),
    "bwd_dkdv": KernelConfig(32, 64, 4, 3),
}


def keep(cfg: KernelConfig, pass_name: str, head_dim: int) -> bool:
    """Prune predicate: drop configs whose tiles would not fit shared memory / registers."""
    d = padded_head_dim(head_dim)
    if d >= 256:
        return cfg.block_m <= 64 and cfg.block_n <= 32 and cfg.num_stages <= 2
    if d > 128:
        return cfg.block_m <= 64 and cfg.block_n <= 64
    if pass_name == "fwd" and d <= 64 and cfg.block_n > 64:
        return False
    return True


def candidates(pass_name: str, head_dim: int) -> list[KernelConfig]:
    """The kept configs for one pass, best guess first."""
    if pass_name not in PASSES:
        raise ValueError(f"configs.candidates(): pass_name={pass_name!r}; expected one of {PASSES}")
    kept = [c for c in _TABLE[pass_name] if keep(c, pass_name, head_dim)]
    if not kept:  # the smallest tile always fits
        kept = [KernelConfig(32, 32, 4, 1)] if padded_head_dim(head_dim) >= 256 else [KernelConfig(64, 32, 4, 2)]
    return kept


def _parse_override(value: str) -> dict[str, KernelConfig]:
    out: dict[str, KernelConfig] = {}
    for part in filter(None, (p.strip() for p in value.split(";"))):
        try:
            name, nums = part.split("=")
            bm, bn, w, st = (int(x) for x in nums.split(","))
        except ValueError as exc:
            raise ValueError(
                f"configs.pick(): MAGI_FFA_TRITON_CONFIG={value!r}; expected 'pass=M,N,warps,stages;...' "
                f"with pass in {PASSES}"
            ) from exc
        if name not in PASSES or bm % 16 or bn % 16 or min(bm, bn, w, st) <= 0:
            raise ValueError(f"configs.pick(): MAGI_FFA_TRITON_CONFIG entry {part!r} is invalid "
                             f"(pass in {PASSES}, M and N positive multiples of 16)")
        out[name] = KernelConfig(bm, bn, w, st)
    return out


def pick(pass_name: str, head_dim: int, rows_per_slice: float | None = None) -> KernelConfig:
    """The config a call uses.

    ``rows_per_slice`` (query tokens / number of slices; no device read needed) selects the
    small-tile config for masks made of many short slices.

    ``MAGI_FFA_TRITON_BLOCKS="M,N"`` forces the tile sizes (tests use small tiles under the
    interpreter so that tiny problems still span several tiles and all three stages).
    ``MAGI_FFA_TRITON_CONFIG="fwd=128,64,8,3;bwd_dkdv=..."`` forces whole configs per pass
    (the benchmark's tuning sweep).
    """
    full = os.environ.get("MAGI_FFA_TRITON_CONFIG")
    if full:
        cfg = _parse_override(full).get(pass_name)
        if cfg is not None:
            return cfg
    forced = os.environ.get("MAGI_FFA_TRITON_BLOCKS")
    if forced:
        try:
            bm, bn = (int(x) for x in forced.split(","))
        except ValueError as exc:
            raise ValueError(
                f"configs.pick(): MAGI_FFA_TRITON_BLOCKS={forced!r}; expected 'M,N' (e.g. '32,16')"
            ) from exc
        if bm % 16 or bn % 16 or bm <= 0 or bn <= 0:
            raise ValueError(f"configs.pick(): MAGI_FFA_TRITON_BLOCKS={forced!r}; M and N must be positive multiples of 16")
        return KernelConfig(bm, bn, 4, 1)
    if _interpreting():
        return KernelConfig(32, 32, 4, 1)
    if rows_per_slice is not None and rows_per_slice < SPARSE_ROWS_PER_SLICE:
        small = _SPARSE[pass_name]
        if keep(small, pass_name, head_dim):
            return small
    return candidates(pass_name, head_dim)[0]


def fused_bwd(deterministic: bool) -> bool:
    """Whether the backward runs as one k-tiled pass with atomic dq (faster, not bitwise
    reproducible). Off unless MAGI_FFA_TRITON_FUSED_BWD=1, and never for deterministic=True."""
    return (not deterministic) and os.environ.get("MAGI_FFA_TRITON_FUSED_BWD", "0") == "1"
