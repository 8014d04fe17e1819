"""Process-group set-up for scripts launched with torchrun: the anchor's ``setup_dist_env`` /
``clearup_dist_env``, so its quickstart runs unchanged, on GPUs (NCCL) or on CPUs (gloo).

Example (``torchrun --nproc-per-node 2 script.py``):
    >>> rank, local_rank, world_size, nodes, local_ranks, group, device, seed = setup_dist_env()
    >>> ...  # keys, dispatch, calc_attn
    >>> clearup_dist_env()
"""

from __future__ import annotations

import os
import random

import torch
import torch.distributed as dist

from magi_attention.errors import MagiAttentionError

__all__ = ["clearup_dist_env", "setup_dist_env"]


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise MagiAttentionError(f"setup_dist_env(): the environment variable {name}={value!r} is not an "
                                 "integer") from None


def setup_dist_env(backend: str | None = None, seed: int = 42):
    """Initialise the default process group from torchrun's environment (``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``, and ``NNODES``, ``NPROC_PER_NODE`` where set), pick
    this rank's device and seed every generator with ``seed`` (the same on every rank: the quickstart
    makes its global input on each rank, then dispatches it).

    backend: None picks "nccl" where CUDA is available, else "gloo". A process group that is already
    initialised is kept.

    Returns:
        (rank, local_rank, world_size, num_nodes, num_local_ranks, world_group, device, seed)
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        for name in ("RANK", "WORLD_SIZE"):
            if _env_int(name, None) is None:
                raise MagiAttentionError(f"setup_dist_env(): the environment variable {name} is not set; "
                                         "launch with torchrun (or set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")
        dist.init_process_group(backend, rank=_env_int("RANK", None), world_size=_env_int("WORLD_SIZE", None))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    num_nodes = _env_int("NNODES", 1)
    if num_nodes < 1 or world_size % num_nodes:
        raise MagiAttentionError(f"setup_dist_env(): NNODES={num_nodes} does not divide the world size "
                                 f"{world_size}")
    num_local_ranks = _env_int("NPROC_PER_NODE", _env_int("LOCAL_WORLD_SIZE", world_size // num_nodes))
    local_rank = _env_int("LOCAL_RANK", rank % num_local_ranks)
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    random.seed(seed)
    torch.manual_seed(seed)  # every device's generator too
    return rank, local_rank, world_size, num_nodes, num_local_ranks, dist.group.WORLD, device, seed


def clearup_dist_env() -> None:
    """Destroy the default process group (after a barrier, so no rank leaves one still in use);
    nothing to do when none is initialised."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
