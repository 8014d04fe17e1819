"""Spawn N gloo ranks, run a job in each, re-raise the first child traceback; a hang fails, bounded."""

from __future__ import annotations

import os
import tempfile
import traceback
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world, job, args, init_file, q, env):
    os.environ.update(env)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        job(rank, world, *args)
        q.put((rank, None))
    except BaseException:  # noqa: BLE001 - report every failure to the parent
        q.put((rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_dist(world: int, job, *args, timeout: float = 120.0, env: dict | None = None) -> None:
    """Run ``job(rank, world, *args)`` on ``world`` spawned gloo ranks; raise on any failure or timeout."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    fd, init_file = tempfile.mkstemp(prefix="grpcoll_dist_")
    os.close(fd)
    os.remove(init_file)
    procs = [ctx.Process(target=_entry, args=(r, world, job, args, init_file, q, env or {}), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    failures, done = [], 0
    try:
        while done < world:
            try:
                rank, tb = q.get(timeout=timeout)
            except Exception:
                raise AssertionError(f"distributed job {job.__name__} timed out after {timeout}s "
                                     f"({done}/{world} ranks finished)") from None
            done += 1
            if tb is not None:
                failures.append((rank, tb))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        if os.path.exists(init_file):
            os.remove(init_file)
    if failures:
        rank, tb = sorted(failures)[0]
        raise AssertionError(f"rank {rank} of {world} failed in {job.__name__}:\n{tb}")
    # a rank that reported success and then died in teardown (e.g. a gloo abort at exit) fails too
    codes = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode != 0}
    assert not codes, f"{job.__name__}: ranks exited abnormally after finishing (rank: exit code) {codes}"

