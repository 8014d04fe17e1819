"""Index tensors made on the host and queued to the device without a host sync.

``torch.tensor(values, device="cuda")`` copies from pageable memory, which synchronises the
stream: the host waits for every kernel queued before it. Dispatch and undispatch made such
copies on every call; with a new mask every step (varlen training) they drained the GPU's queue
mid-step. A copy from pinned memory with ``non_blocking=True`` is queued like a kernel (the caching
host allocator keeps the pinned block until it has run).
"""

from __future__ import annotations

import torch

__all__ = ["index_tensor"]


def index_tensor(values, device: torch.device) -> torch.Tensor:
    """int64 tensor of ``values`` (ints) on ``device``, queued without a host sync on CUDA."""
    host = torch.tensor(values, dtype=torch.long)
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
