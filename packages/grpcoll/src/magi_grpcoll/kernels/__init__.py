"""Row-gather and row-reduce kernels: the pre- and post-passes around the all-to-all.

Each op has a vectorised torch version (CPU, and any device) and a fused Triton version (CUDA, or
the Triton interpreter with ``TRITON_INTERPRET=1``). ``backend=None`` picks Triton on CUDA when it
imports, else torch; ``MAGI_GRPCOLL_KERNEL_BACKEND=torch|triton`` overrides the automatic choice.
"""

from __future__ import annotations

from magi_grpcoll.kernels.range_gather import gather_rows
from magi_grpcoll.kernels.range_reduce import REDUCE_OPS, fold_from_sources, reduce_rows

__all__ = ["REDUCE_OPS", "fold_from_sources", "gather_rows", "reduce_rows"]
