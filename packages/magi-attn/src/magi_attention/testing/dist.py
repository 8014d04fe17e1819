"""Spawn N ranks (gloo on CPU by default), run a function in each, re-raise the first failure.

Why a harness: distributed tests must fail, not hang. Every rank gets a bounded timeout and the
parent kills all children if any rank errors or the deadline passes.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_distributed", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str, fn: Callable, args: tuple,
            env: dict, result_queue: Any) -> None:
    os.environ.update(env)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        result_queue.put((rank, "ok", result))
    except BaseException:  # noqa: BLE001 - forwarded to the parent
        result_queue.put((rank, "error", traceback.format_exc()))
        raise
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


def run_distributed(fn: Callable, world_size: int, *args: Any, backend: str = "gloo",
                    timeout: float = 240.0, env: dict | None = None) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned ranks; return their results.

    ``fn`` must be importable (module level). Raises RuntimeError with the first rank's traceback,
    or TimeoutError (after killing every rank) when ``timeout`` seconds pass.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, backend, fn, args,
                                               dict(env or {}), queue), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size:
            if not queue.empty():
                rank, status, payload = queue.get()
                if status == "error":
                    raise RuntimeError(f"rank {rank} failed:\n{payload}")
                results[rank] = payload
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"run_distributed(): {world_size} ranks did not finish in "
                                   f"{timeout:.0f}s (got results from {sorted(results)})")
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead and queue.empty():
                time.sleep(0.2)
                if queue.empty():
                    raise RuntimeError(f"run_distributed(): rank process exited with code "
                                       f"{dead[0].exitcode} without reporting")
            time.sleep(0.01)
    finally:
        for p in procs:
            p.join(timeout=30 if len(results) == world_size else 0.1)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    # a rank that reported success but then died (e.g. aborted in teardown) is a failure too
    bad = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode != 0}
    if bad:
        raise RuntimeError(f"run_distributed(): ranks exited abnormally after reporting results "
                           f"(rank: exit code) {bad}")
    return [results[r] for r in range(world_size)]
