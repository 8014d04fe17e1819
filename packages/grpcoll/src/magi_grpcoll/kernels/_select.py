"""Pick the torch or Triton version of a row kernel."""

from __future__ import annotations

import functools
import os

import torch

__all__: list[str] = []


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def use_triton(t: torch.Tensor, backend: str | None) -> bool:
    if backend is None:
        backend = os.environ.get("MAGI_GRPCOLL_KERNEL_BACKEND") or None
    if backend is None:
        return t.is_cuda and triton_available()
    if backend not in ("torch", "triton"):
        raise ValueError(f"magi_grpcoll kernels: backend={backend!r} is unknown; use 'torch' or 'triton'.")
    if backend == "triton" and not triton_available():
        raise NotImplementedError("magi_grpcoll kernels: backend='triton' requested but triton does not import.")
    return backend == "triton"
