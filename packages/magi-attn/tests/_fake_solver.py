"""A brute-force Python stand-in for magi_solver's dispatch meta and dist-attn plan (contracts.md).

Test double only: used while the C++ plan is not installed, and to cross-check the runtime with an
independent plan. Every visible (row, key run) becomes a FULL 1-row slice, so the plan is exact
for any mask; it is slow and only meant for a few hundred tokens.
"""

from __future__ import annotations

import heapq
from types import SimpleNamespace

import numpy as np
import torch

from magi_ffa.testing import make_dense_mask


def _runs(sorted_vals):
    """Sorted ints -> list of (start, end) runs of consecutive values."""
    out = []
    for v in sorted_vals:
        if out and out[-1][1] == v:
            out[-1][1] = v + 1
        else:
            out.append([v, v + 1])
    return [tuple(r) for r in out]


class FakeDispatchMeta:
    def __init__(self, q_ranges, k_ranges, types, total, chunk, cp):
        self.total_seqlen, self.chunk_size, self.cp_size = total, chunk, cp
        self.num_chunks = total // chunk
        self.shard_seqlen = total // cp
        mask = make_dense_mask(q_ranges, k_ranges, types, total, total)
        self.mask = mask.numpy().astype(bool)
        rows = self.mask.sum(1)
        self.chunk_areas = [int(rows[c * chunk:(c + 1) * chunk].sum()) for c in range(self.num_chunks)]
        self.max_valid_ids = max([q[1] for q, k in zip(q_ranges, k_ranges)
                                  if q[1] > q[0] and k[1] > k[0]] or [total])
        per = self.num_chunks // cp
        heap = [(0, r) for r in range(cp)]
        parts = [[] for _ in range(cp)]
        for c in sorted(range(self.num_chunks), key=lambda c: -self.chunk_areas[c]):
            popped = []
            while True:
                load, r = heapq.heappop(heap)
                if len(parts[r]) < per:
                    break
                popped.append((load, r))
            parts[r].append(c)
            heapq.heappush(heap, (load + self.chunk_areas[c], r))
            for item in popped:
                heapq.heappush(heap, item)
        self.partitions = [sorted(p) for p in parts]
        self.perm_idxs = [c for p in self.partitions for c in p]
        self.unperm_idxs = list(np.argsort(self.perm_idxs))
        self.host_ranges_per_rank = [_runs([t for c in p for t in range(c * chunk, (c + 1) * chunk)])
                                     for p in self.partitions]

    def tokens(self, r):
        return [t for c in self.partitions[r] for t in range(c * self.chunk_size, (c + 1) * self.chunk_size)]

    def position_ids(self, r):
        return np.minimum(np.array(self.tokens(r), dtype=np.int64), self.max_valid_ids - 1)


def make_dispatch_meta(q_ranges, k_ranges, mask_types, total_seqlen, chunk_size, cp_size,
                       alg="min_heap", **kw):
    return FakeDispatchMeta([tuple(r) for r in q_ranges], [tuple(r) for r in k_ranges],
                            list(mask_types), total_seqlen, chunk_size, cp_size)


def OverlapParams(**kw):  # noqa: N802 - mirrors the contract's class
    return SimpleNamespace(**kw)


class _Calc:
    def __init__(self, slices):
        self.q_ranges = [s[0] for s in slices]
        self.k_ranges = [s[1] for s in slices]
        self.mask_types = [0] * len(slices)
        self.area = sum((q[1] - q[0]) * (k[1] - k[0]) for q, k in self.__iter_pairs())

    def __iter_pairs(self):
        return zip(self.q_ranges, self.k_ranges)

    def as_arrays(self):
        n = len(self.q_ranges)
        return (np.array(self.q_ranges, dtype=np.int32).reshape(n, 2),
                np.array(self.k_ranges, dtype=np.int32).reshape(n, 2),
                np.zeros(n, dtype=np.int32))


def _calc_for(mask, q_tokens, key_pos):
    """Slices (row i local, key positions in a buffer) for visible keys listed in key_pos."""
    slices = []
    keys = np.array(sorted(key_pos), dtype=np.int64)
    for i, g in enumerate(q_tokens):
        if len(keys) == 0:
            break
        vis = keys[mask[g, keys]]
        for a, b in _runs([key_pos[int(k)] for k in vis]):
            slices.append(((i, i + 1), (a, b)))
    return _Calc(slices)


def make_dist_attn_plan(q_ranges, k_ranges, mask_types, dm, overlap, ranks=None):
    cp = dm.cp_size
    degree = 0 if cp == 1 else (overlap.degree if overlap.mode == "static" else
                                 max(1, min(overlap.dynamic_max_degree or 2, 3)))
    toks = [dm.tokens(r) for r in range(cp)]
    owner = {}
    for r in range(cp):
        for i, t in enumerate(toks[r]):
            owner[t] = (r, i)
    remote_per_stage = []  # [rank][stage] sorted global tokens
    for r in range(cp):
        host = set(toks[r])
        need = sorted({int(k) for g in toks[r] for k in np.nonzero(dm.mask[g])[0]} - host)
        bounds = np.linspace(0, len(need), degree + 1).astype(int) if degree else [0]
        remote_per_stage.append([need[bounds[s]:bounds[s + 1]] for s in range(degree)])

    def _bounds(o, s):
        b = set(range(0, dm.shard_seqlen + 1, dm.chunk_size))
        for d in range(cp):
            for a, e in _runs(sorted(owner[t][1] for t in remote_per_stage[d][s] if owner[t][0] == o)):
                b.update((a, e))
        return sorted(b)

    rank_plans = {}
    for r in range(cp):
        host_pos = {t: i for i, t in enumerate(toks[r])}
        stages = []
        for s in range(degree):
            # sender pieces: boundaries of every receiver's runs in this rank's local coords
            b = _bounds(r, s)
            reqs = {d: {owner[t][1] for t in remote_per_stage[d][s] if owner[t][0] == r}
                    for d in range(cp)}
            pieces = list(zip(b, b[1:]))
            in_sizes = [e - a for a, e in pieces]
            dst = [[d for d in range(cp) if d != r and a in reqs[d]] for a, e in pieces]
            # receiver side: pieces of each owner that this rank requested, in global order
            out_sizes, src = [], []
            recv = remote_per_stage[r][s]
            i = 0
            while i < len(recv):
                o, lo = owner[recv[i]]
                hi = next(x for x in _bounds(o, s) if x > lo)
                n = hi - lo
                out_sizes.append(n)
                src.append(o)
                i += n
            buf_pos = {t: j for j, t in enumerate(recv)}
            stages.append(SimpleNamespace(
                remote_k_ranges=_runs(recv), num_recv_tokens=len(recv),
                calc=_calc_for(dm.mask, toks[r], buf_pos),
                cast=SimpleNamespace(input_split_sizes=in_sizes, dst_indices=dst,
                                     output_split_sizes=out_sizes, src_index=src)))
        rank_plans[r] = SimpleNamespace(rank=r, host_calc=_calc_for(dm.mask, toks[r], host_pos),
                                        stages=stages)
    return SimpleNamespace(cp_size=cp, num_stages=degree, rank_plan=lambda r: rank_plans[r])


def install():
    """Swap magi_attention's solver gateway for this fake (dispatch + plan only)."""
    import magi_attention._compat as compat
    import magi_solver

    fake = SimpleNamespace(**{n: getattr(magi_solver, n) for n in dir(magi_solver)
                              if not n.startswith("__")})
    fake.make_dispatch_meta = make_dispatch_meta
    fake.make_dist_attn_plan = make_dist_attn_plan
    fake.OverlapParams = OverlapParams
    compat.solver = fake
    return fake
