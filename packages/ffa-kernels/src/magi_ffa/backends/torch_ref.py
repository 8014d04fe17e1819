"""The portable PyTorch backend: blockwise online-softmax FFA on any device and float dtype.

It is the test oracle of the Triton backend and the CPU path of the distributed tests, so it
favours clarity and exact semantics over speed, while never building an Sq x Sk matrix: each
slice is cut into row blocks of BLOCK_M and column tiles of BLOCK_N, and only one tile of scores
[hk, g * BLOCK_M, BLOCK_N] lives at a time. Heads and GQA groups are batched in one bmm by viewing
q as [hk, g * rows, d] (q head h = kv head h // g, g = hq // hk).

Tiles a causal or inverse-causal slice cannot see are skipped; fully visible tiles build no mask.
Computation runs in fp32 (fp64 for fp64 inputs) whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from magi_ffa.backends.base import Backend, FFAInputs

__all__ = ["TorchBackend"]

_NEG_INF = float("-inf")


def _tiles(lq: int, lk: int, mask_type: int, block_m: int, block_n: int) -> Iterator[tuple[int, int, list]]:
    """Yield (i0, i1, [(j0, j1, needs_mask), ...]) for the non-empty row blocks of one slice."""
    causal = mask_type in (1, 3)
    inv = mask_type in (2, 3)
    for i0 in range(0, lq, block_m):
        i1 = min(i0 + block_m, lq)
        j_lo = max(0, i0) if inv else 0
        j_hi = min(lk, i1 + lk - lq) if causal else lk
        if j_hi <= j_lo:
            continue
        cols = []
        for j0 in range(j_lo, j_hi, block_n):
            j1 = min(j0 + block_n, j_hi)
            needs_mask = (causal and j1 - 1 > i0 + lk - lq) or (inv and j0 < i1 - 1)
            cols.append((j0, j1, needs_mask))
        yield i0, i1, cols


def _tile_mask(i0: int, i1: int, j0: int, j1: int, lq: int, lk: int, mask_type: int, device) -> torch.Tensor:
    """bool [i1-i0, j1-j0]: visible cells of a tile in slice-local coordinates."""
    i = torch.arange(i0, i1, device=device).unsqueeze(1)
    j = torch.arange(j0, j1, device=device).unsqueeze(0)
    mask = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
    if mask_type in (1, 3):
        mask &= j <= i + (lk - lq)
    if mask_type in (2, 3):
        mask &= j >= i
    return mask


class TorchBackend(Backend):
    """Reference-quality FFA in plain PyTorch (any device, fp16/bf16/fp32/fp64, any head dim)."""

    NAME = "torch"
    DEVICES = frozenset({"cpu", "cuda", "xpu", "mps", "meta"})
    DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
    HEAD_DIMS = None
    IS_DETERMINISTIC = True

    BLOCK_M = 512
    BLOCK_N = 1024

    # -- layout helpers: [rows, hq, d] <-> [hk, g * rows, d] ---------------------------------
    @staticmethod
    def _to_grouped(x: torch.Tensor, hk: int, dt: torch.dtype) -> torch.Tensor:
        rows, hq = x.shape[0], x.shape[1]
        g = hq // hk
        return x.to(dt).reshape(rows, hk, g, *x.shape[2:]).movedim(0, 2).reshape(hk, g * rows, *x.shape[2:])

    @staticmethod
    def _from_grouped(x: torch.Tensor, rows: int) -> torch.Tensor:
        hk = x.shape[0]
        g = x.shape[1] // rows
        return x.reshape(hk, g, rows, *x.shape[2:]).movedim(2, 0).reshape(rows, hk * g, *x.shape[2:])

    @staticmethod
    def _slices(inp: FFAInputs) -> list[tuple[int, int, int, int, int]]:
        qr = inp.q_ranges.tolist()
        kr = inp.k_ranges.tolist()
        tm = inp.attn_type_map.tolist()
        return [(a, b, c, d, t) for (a, b), (c, d), t in zip(qr, kr, tm) if b > a and d > c]

    def _scores(
        self, inp: FFAInputs, qg: torch.Tensor, kt: torch.Tensor, need_tanh: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scaled (softcapped) scores [hk, g*rows, cols] and tanh (for the softcap gradient).

        `qg` is already multiplied by softmax_scale (and divided by softcap when softcap > 0),
        which costs a [rows, d] pass instead of a [rows, cols] one; the rest runs in place.
        """
        s = torch.bmm(qg, kt.transpose(1, 2))
        if inp.softcap > 0:
            if not need_tanh:
                return s.tanh_().mul_(inp.softcap), None
            t = s.tanh_()
            return t * inp.softcap, t
        return s, None

    @staticmethod
    def _q_factor(inp: FFAInputs) -> float:
        return inp.softmax_scale / inp.softcap if inp.softcap > 0 else inp.softmax_scale

    # -- forward --------------------------------------------------------------------------------
    def forward(self, inp, out, lse, max_logits, *, fresh=False):
        # fresh is a hint only here (SUPPORTS_FRESH is False): the buffers arrive initialised.
        q, k, v = inp.q, inp.k, inp.v
        hk = k.shape[1]
        g = q.shape[1] // hk
        dt = torch.float64 if q.dtype == torch.float64 else torch.float32
        for qs, qe, ks, ke, t in self._slices(inp):
            lq, lk = qe - qs, ke - ks
            for i0, i1, cols in _tiles(lq, lk, t, self.BLOCK_M, self.BLOCK_N):
                rows = i1 - i0
                qg = self._to_grouped(q[qs + i0 : qs + i1], hk, dt) * self._q_factor(inp)  # [hk, g*rows, d]
                m = torch.full((hk, g * rows), _NEG_INF, dtype=dt, device=q.device)
                denom = torch.zeros_like(m)
                acc = torch.zeros(hk, g * rows, v.shape[-1], dtype=dt, device=q.device)
                for j0, j1, needs_mask in cols:
                    kt = k[ks + j0 : ks + j1].to(dt).transpose(0, 1)  # [hk, cols, d]
                    vt = v[ks + j0 : ks + j1].to(dt).transpose(0, 1)
                    s, _ = self._scores(inp, qg, kt)
                    if needs_mask:
                        mask = _tile_mask(i0, i1, j0, j1, lq, lk, t, q.device).repeat(g, 1)
                        s.masked_fill_(~mask, _NEG_INF)
                    if max_logits is not None:
                        tile_max = s.amax(-1).reshape(hk, g, rows).amax(-1).reshape(-1)
                        torch.maximum(max_logits, tile_max.to(max_logits.dtype), out=max_logits)
                    m_new = torch.maximum(m, s.amax(-1))
                    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
                    p = s.sub_(m_safe.unsqueeze(-1)).exp_()
                    alpha = torch.exp(m - m_safe)
                    denom = denom * alpha + p.sum(-1)
                    acc = acc * alpha.unsqueeze(-1) + torch.bmm(p, vt)
                    m = m_new
                has = denom > 0
                l_safe = torch.where(has, denom, torch.ones_like(denom))
                lse_blk = torch.where(has, m + torch.log(l_safe), torch.full_like(m, _NEG_INF))
                out_blk = acc / l_safe.unsqueeze(-1)
                self._merge_rows(
                    out,
                    lse,
                    qs + i0,
                    qs + i1,
                    self._from_grouped(out_blk, rows),
                    self._from_grouped(lse_blk, rows),
                )

    @staticmethod
    def _merge_rows(out, lse, r0, r1, out_blk, lse_blk) -> None:
        """lse-merge a block's partial result into rows [r0, r1) of the accumulators."""
        o = out[r0:r1]
        s = lse[r0:r1]
        dt = torch.float64 if out.dtype == torch.float64 or out_blk.dtype == torch.float64 else torch.float32
        old = s.to(dt)
        new = lse_blk.to(dt)
        hi = torch.maximum(old, new)
        hi_safe = torch.where(torch.isinf(hi), torch.zeros_like(hi), hi)
        w_old = torch.exp(old - hi_safe)
        w_new = torch.exp(new - hi_safe)
        tot = w_old + w_new
        tot_safe = torch.where(tot > 0, tot, torch.ones_like(tot))
        merged = torch.where(tot > 0, hi_safe + torch.log(tot_safe), torch.full_like(tot, _NEG_INF))
        res = (o.to(dt) * w_old.unsqueeze(-1) + out_blk.to(dt) * w_new.unsqueeze(-1)) / tot_safe.unsqueeze(-1)
        o.copy_(res)
        s.copy_(merged)

    # -- backward -------------------------------------------------------------------------------
    def backward(self, inp, dout, out, lse, delta, dq, dk, dv, *, fresh=False):
        q, k, v = inp.q, inp.k, inp.v
        hk = k.shape[1]
        g = q.shape[1] // hk
        dt = torch.float64 if q.dtype == torch.float64 else torch.float32
        for qs, qe, ks, ke, t in self._slices(inp):
            lq, lk = qe - qs, ke - ks
            for i0, i1, cols in _tiles(lq, lk, t, self.BLOCK_M, self.BLOCK_N):
                rows = i1 - i0
                r0, r1 = qs + i0, qs + i1
                qg = self._to_grouped(q[r0:r1], hk, dt)
                qg_scaled = qg * self._q_factor(inp)
                dog = self._to_grouped(dout[r0:r1], hk, dt)
                lse_g = self._to_grouped(lse[r0:r1], hk, dt)
                # rows with no key at all (lse = -inf) must give p = 0, not exp(+inf)
                lse_g = torch.where(torch.isinf(lse_g), torch.full_like(lse_g, float("inf")), lse_g)
                delta_g = self._to_grouped(delta[r0:r1], hk, dt)
                dq_acc = torch.zeros_like(qg)
                for j0, j1, needs_mask in cols:
                    kt = k[ks + j0 : ks + j1].to(dt).transpose(0, 1)
                    vt = v[ks + j0 : ks + j1].to(dt).transpose(0, 1)
                    s, tanh = self._scores(inp, qg_scaled, kt, need_tanh=True)
                    p = s.sub_(lse_g.unsqueeze(-1)).exp_()
                    if needs_mask:
                        mask = _tile_mask(i0, i1, j0, j1, lq, lk, t, q.device).repeat(g, 1)
                        p.masked_fill_(~mask, 0.0)
                    dv_t = torch.bmm(p.transpose(1, 2), dog)  # [hk, cols, d]
                    ds = torch.bmm(dog, vt.transpose(1, 2))  # dp
                    ds.sub_(delta_g.unsqueeze(-1)).mul_(p)
                    if tanh is not None:
                        ds.mul_(tanh.mul_(tanh).neg_().add_(1.0))  # d softcap*tanh(x/softcap) = 1 - tanh^2
                    dq_acc += torch.bmm(ds, kt)
                    dk_t = torch.bmm(ds.transpose(1, 2), qg).mul_(inp.softmax_scale)
                    dk[ks + j0 : ks + j1] += dk_t.transpose(0, 1).to(dk.dtype)
                    dv[ks + j0 : ks + j1] += dv_t.transpose(0, 1).to(dv.dtype)
                dq[r0:r1] += self._from_grouped(dq_acc.mul_(inp.softmax_scale), rows).to(dq.dtype)
