"""Reference group collectives written from the definition (single process, float64), and random meta.

``ref_group_cast`` / ``ref_group_reduce`` take every rank's tensors and lists at once and return
every rank's result, so tests in this and other packages can check a distributed run rank by rank.
"""

from __future__ import annotations

import random

import torch

__all__ = ["CastMeta", "random_cast_meta", "ref_group_cast", "ref_group_reduce", "reduce_meta_of",
           "simulate_cast", "simulate_reduce"]


class CastMeta:
    """Every rank's group_cast lists. Index [p] gives rank p's (in_sizes, out_sizes, dst_indices, src_index)."""

    def __init__(self, in_sizes, out_sizes, dst_indices, src_index):
        self.in_sizes, self.out_sizes = in_sizes, out_sizes
        self.dst_indices, self.src_index = dst_indices, src_index

    @property
    def world_size(self) -> int:
        return len(self.in_sizes)

    def of(self, p: int):
        return self.in_sizes[p], self.out_sizes[p], self.dst_indices[p], self.src_index[p]


def random_cast_meta(world_size: int, rng: random.Random, *, max_splits: int = 5, max_len: int = 6) -> CastMeta:
    """Random splits (zeros included), destination sets (empty, self, all, random) and interleavings."""
    in_sizes, dsts = [], []
    for _p in range(world_size):
        n = rng.randint(0, max_splits)
        in_sizes.append([rng.choice([0, rng.randint(1, max_len)]) if rng.random() < 0.2 else rng.randint(1, max_len)
                         for _ in range(n)])
        d = []
        for _ in range(n):
            kind = rng.random()
            if kind < 0.15:
                d.append([])
            elif kind < 0.3:
                d.append(list(range(world_size)))
            else:
                d.append(sorted(rng.sample(range(world_size), rng.randint(1, world_size))))
        dsts.append(d)
    out_sizes, src_index = [], []
    for d in range(world_size):
        queues = [[in_sizes[r][i] for i in range(len(in_sizes[r])) if d in dsts[r][i]] for r in range(world_size)]
        order = [r for r in range(world_size) for _ in queues[r]]
        rng.shuffle(order)  # a random interleaving keeps each source's own order
        ptr = [0] * world_size
        sz = []
        for r in order:
            sz.append(queues[r][ptr[r]])
            ptr[r] += 1
        out_sizes.append(sz)
        src_index.append(order)
    return CastMeta(in_sizes, out_sizes, dsts, src_index)


def reduce_meta_of(meta: CastMeta):
    """The transpose: per rank (in_sizes, out_sizes, dst_index, src_indices) of the matching reduce."""
    return [(meta.out_sizes[p], meta.in_sizes[p], meta.src_index[p], meta.dst_indices[p])
            for p in range(meta.world_size)]


def _splits(t: torch.Tensor, sizes):
    return list(torch.split(t, list(sizes), dim=0)) if len(sizes) else []


def ref_group_cast(inputs, in_sizes, dst_indices, out_sizes, src_index):
    """Every rank's group_cast output, from the definition (stable per-source queues)."""
    world = len(inputs)
    outs = []
    for d in range(world):
        queues = {r: [x for x, dl in zip(_splits(inputs[r], in_sizes[r]), dst_indices[r]) if d in dl]
                  for r in range(world)}
        ptr = dict.fromkeys(range(world), 0)
        pieces = []
        for j, r in enumerate(src_index[d]):
            x = queues[r][ptr[r]]
            ptr[r] += 1
            assert x.shape[0] == out_sizes[d][j], "inconsistent meta"
            pieces.append(x)
        if any(ptr[r] != len(queues[r]) for r in range(world)):
            raise AssertionError("inconsistent meta: unconsumed splits")
        row = inputs[0].shape[1:]
        outs.append(torch.cat(pieces) if pieces else inputs[d].new_empty((0, *row)))
    return outs


def _lse_merge64(o, lo, x, li):
    lmax, lmin = torch.maximum(lo, li), torch.minimum(lo, li)
    new = torch.where(lmax == -torch.inf, lmax, lmax + torch.log1p(torch.exp(lmin - lmax.clamp_min(-1e300))))
    w_o = torch.where(new == -torch.inf, 0.0, torch.exp(lo - new))
    w_i = torch.where(new == -torch.inf, 0.0, torch.exp(li - new))
    shp = (*w_o.shape, *([1] * (o.dim() - 2)))
    return w_o.view(shp) * torch.nan_to_num(o) + w_i.view(shp) * x, new


def ref_group_reduce(inputs, outputs, in_sizes, dst_index, out_sizes, src_indices, op="sum", *,
                     acc_reduce=True, input_lses=None, output_lses=None):
    """Every rank's group_reduce result in float64 (and lse for op="lse"); outputs are not modified."""
    world = len(inputs)
    res, res_lse = [], []
    for d in range(world):
        queues = {r: [k for k in range(len(in_sizes[r])) if dst_index[r][k] == d] for r in range(world)}
        ptr = dict.fromkeys(range(world), 0)
        out = outputs[d].to(torch.float64).clone()
        lse = output_lses[d].to(torch.float64).clone() if op == "lse" else None
        ioff = [[sum(in_sizes[r][:k]) for k in range(len(in_sizes[r]))] for r in range(world)]
        ooff = 0
        for k, srcs in enumerate(src_indices[d]):
            n = out_sizes[d][k]
            sl = slice(ooff, ooff + n)
            ooff += n
            contribs = []
            for r in srcs:
                i = queues[r][ptr[r]]
                ptr[r] += 1
                assert in_sizes[r][i] == n, "inconsistent meta"
                rs = slice(ioff[r][i], ioff[r][i] + n)
                contribs.append((inputs[r][rs].to(torch.float64),
                                 input_lses[r][rs].to(torch.float64) if op == "lse" else None))
            if not contribs:
                continue
            if op in ("sum", "avg"):
                acc = out[sl] if acc_reduce else torch.zeros_like(out[sl])
                for x, _ in contribs:
                    acc = acc + x
                if op == "avg":
                    acc = acc / (len(contribs) + (1 if acc_reduce else 0))
                out[sl] = acc
            else:
                o = out[sl] if acc_reduce else torch.zeros_like(out[sl])
                lo = lse[sl] if acc_reduce else torch.full_like(lse[sl], -torch.inf)
                for x, li in contribs:
                    o, lo = _lse_merge64(o, lo, x, li)
                out[sl], lse[sl] = o, lo
        res.append(out)
        res_lse.append(lse)
    return (res, res_lse) if op == "lse" else res


def simulate_cast(plans, inputs):
    """Run a2a-v group_cast plans of all ranks in one process (all-to-all simulated with lists)."""
    from magi_grpcoll.kernels import gather_rows

    world = len(plans)
    sends = []
    for p, plan in enumerate(plans):
        buf = inputs[p] if plan.send_rows is None else gather_rows(inputs[p], plan.send_rows)
        sends.append(list(torch.split(buf, list(plan.send_counts))))
    outs = []
    for d, plan in enumerate(plans):
        recv = torch.cat([sends[r][d] for r in range(world)])
        outs.append(recv if plan.recv_rows is None else gather_rows(recv, plan.recv_rows))
    return outs


def simulate_reduce(plans, inputs, outputs, op="sum", *, acc_reduce=True, input_lses=None, output_lses=None,
                    backend=None):
    """Run a2a-v group_reduce plans of all ranks in one process; reduces into outputs in place."""
    from magi_grpcoll.kernels import gather_rows, reduce_rows

    world = len(plans)
    sends, sends_l = [], []
    for p, plan in enumerate(plans):
        g = (lambda t, plan=plan: t if plan.send_rows is None else gather_rows(t, plan.send_rows))
        sends.append(list(torch.split(g(inputs[p]), list(plan.send_counts))))
        if op == "lse":
            sends_l.append(list(torch.split(g(input_lses[p]), list(plan.send_counts))))
    for d, plan in enumerate(plans):
        recv = torch.cat([sends[r][d] for r in range(world)])
        recv_l = torch.cat([sends_l[r][d] for r in range(world)]) if op == "lse" else None
        reduce_rows(outputs[d], recv, plan.rmap, op, acc_reduce=acc_reduce,
                    output_lse=output_lses[d] if op == "lse" else None, recv_lse=recv_l, backend=backend)
    return outputs
