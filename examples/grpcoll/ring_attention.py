"""Ring-style causal context-parallel attention written with magi_grpcoll alone (CPU, gloo).

Rank r holds tokens [r*c, (r+1)*c) of q, k, v. At step s every rank passes its k/v chunk to rank
(r+s) % W with one group_cast (k and v travel together as one [c, 2, h, d] tensor), computes the
partial attention of its q against the chunk it received (skipping chunks from the future), and
folds the partial into its running (out, lse) with the log-sum-exp merge. The planned form is used:
each step's plan is built once and would be reused across layers/iterations.

    python examples/grpcoll/ring_attention.py --world-size 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from magi_grpcoll import GroupCastPlan
from magi_grpcoll.kernels.range_reduce import lse_merge_


def partial_attention(q, k, v, q_start, k_start, scale):
    """Causal attention of q [c, h, d] on k, v [c, h, d]; returns out [c, h, d], lse [c, h] (fp32)."""
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    qi = torch.arange(q.shape[0]).view(-1, 1) + q_start
    ki = torch.arange(k.shape[0]).view(1, -1) + k_start
    s = s.masked_fill(ki > qi, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [h, c]
    p = torch.exp(s - torch.where(lse == float("-inf"), 0.0, lse).unsqueeze(-1))
    out = torch.einsum("hqk,khd->qhd", p, v)
    return out, lse.transpose(0, 1).contiguous()


def ring_attention(q, k, v, rank, world, group=None):
    c, h, d = q.shape
    scale = d ** -0.5
    out = torch.zeros_like(q)
    lse = torch.full((c, h), float("-inf"), dtype=q.dtype)
    kv = torch.stack([k, v], dim=1).contiguous()  # [c, 2, h, d]
    for s in range(world):
        dst, src = (rank + s) % world, (rank - s) % world
        plan = GroupCastPlan.build([c], [c], [[dst]], [src], rank=rank, world_size=world)
        recv = torch.empty_like(kv)
        work = plan.cast(kv, recv, group, async_op=True)  # overlappable with other work
        recv = work.wait_post_process()
        if src > rank:  # a chunk from the future is fully masked under causal attention
            continue
        o_p, l_p = partial_attention(q, recv[:, 0], recv[:, 1], rank * c, src * c, scale)
        lse_merge_(out, lse, o_p, l_p)
    return out, lse


def _worker(rank, world, init_file, seqlen, q_all, k_all, v_all, result_q):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        c = seqlen // world
        sl = slice(rank * c, (rank + 1) * c)
        out, _ = ring_attention(q_all[sl], k_all[sl], v_all[sl], rank, world)
        ref, _ = partial_attention(q_all, k_all, v_all, 0, 0, q_all.shape[-1] ** -0.5)
        err = (out - ref[sl]).abs().max().item()
        result_q.put((rank, err))
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=16)
    args = ap.parse_args(argv)
    if args.seqlen % args.world_size:
        ap.error("--seqlen must be a multiple of --world-size")
    gen = torch.Generator().manual_seed(0)
    shape = (args.seqlen, args.heads, args.head_dim)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    fd, init_file = tempfile.mkstemp(prefix="ring_attn_")
    os.close(fd)
    os.remove(init_file)
    ctx = mp.get_context("spawn")
    result_q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, args.world_size, init_file, args.seqlen, q, k, v, result_q))
             for r in range(args.world_size)]
    for p in procs:
        p.start()
    errs = dict(result_q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    worst = max(errs.values())
    print(f"ring attention over {args.world_size} ranks, {args.seqlen} tokens: max |out - ref| = {worst:.3e}")
    ok = worst < 1e-10
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
