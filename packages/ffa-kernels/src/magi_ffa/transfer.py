"""Host -> device copies that do not make the host wait for the GPU.

A plain ``t.to("cuda")`` of a pageable CPU tensor synchronises the stream: the host waits until
every kernel queued before the copy has run. Building a new mask's metadata (every step of varlen
training, whose documents are packed anew) made several such copies per call, each draining the
GPU's queue, so the host work after it ran with the GPU idle. A copy from pinned memory with
``non_blocking=True`` is queued like a kernel instead; the caching host allocator keeps the pinned
block until the copy has run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # only for the annotation: this module takes numpy arrays from its callers
    import numpy as np

__all__ = ["to_device"]


def to_device(x: torch.Tensor | np.ndarray, device) -> torch.Tensor:
    """A packed row-major copy of ``x`` (a CPU tensor or a numpy array) on ``device`` (None: the
    CPU), queued without a host sync on CUDA.

    Row-major with every stride set, size-1 dimensions included: FA4 checks that the last stride is
    1, and neither numpy nor torch keep the strides of size-1 dimensions canonical. On CUDA the
    result must not be read on the host before the stream has run the copy (like a kernel's output).
    """
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
    device = torch.device("cpu") if device is None else torch.device(device)
    if t.device.type != "cpu":
        raise ValueError(f"to_device(): expects host data, got a tensor on {t.device}")
    staged = device.type == "cuda" and not torch.cuda.is_current_stream_capturing()
    packed = torch.empty(t.shape, dtype=t.dtype, pin_memory=staged).copy_(t)
    return packed.to(device, non_blocking=staged)
