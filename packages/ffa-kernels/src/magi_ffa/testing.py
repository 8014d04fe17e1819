"""Shipped test helpers: a dense float64 reference written from the mask rules, mask builders,
random cell-disjoint slice generators and the three-way accuracy check.

The reference builds the full [Sq, Sk] mask, so it is for small shapes only. Other packages (the
Triton tests, the distributed runtime's tests) reuse these names; keep them stable.

Shape legend: Sq / Sk query / key tokens, hq / hk heads, d head dim, s sink tokens.
"""

from __future__ import annotations

import random

import torch

__all__ = [
    "assert_close_to_ref",
    "make_dense_mask",
    "overlapping_slices",
    "random_slices",
    "ref_attn_dense",
    "shared_question_slices",
    "varlen_slices",
]


def _as_list(x, n_cols: int | None = None) -> list:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return [list(r) if n_cols else int(r) for r in x]


def make_dense_mask(
    q_ranges, k_ranges, attn_type_map, total_seqlen_q: int, total_seqlen_k: int, *, device=None
) -> torch.Tensor:
    """bool [Sq, Sk]: the union of the slice masks, straight from the rule table.

    Cell (qs+i, ks+j) of a slice with lengths Lq, Lk is visible iff FULL: always; CAUSAL:
    j <= i + Lk - Lq; INV_CAUSAL: j >= i; BI_CAUSAL: both. attn_type_map None means all FULL.
    """
    qr = _as_list(q_ranges, 2)
    kr = _as_list(k_ranges, 2)
    types = _as_list(attn_type_map) if attn_type_map is not None else [0] * len(qr)
    mask = torch.zeros(total_seqlen_q, total_seqlen_k, dtype=torch.bool)
    for (qs, qe), (ks, ke), t in zip(qr, kr, types):
        lq, lk = qe - qs, ke - ks
        if lq <= 0 or lk <= 0:
            continue
        i = torch.arange(lq).unsqueeze(1)
        j = torch.arange(lk).unsqueeze(0)
        m = torch.ones(lq, lk, dtype=torch.bool)
        if t in (1, 3):
            m &= j <= i + (lk - lq)
        if t in (2, 3):
            m &= j >= i
        mask[qs:qe, ks:ke] |= m
    return mask.to(device) if device is not None else mask


def ref_attn_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_ranges,
    k_ranges,
    attn_type_map=None,
    *,
    softmax_scale: float | None = None,
    softcap: float = 0.0,
    sink: torch.Tensor | None = None,
    sink_layout: str = "sh",
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense attention on the materialised mask, autograd-capable (q, k, v and sink).

    Args:
        q: [Sq, hq, d]; k, v: [Sk, hk, d]; ranges and types as for flex_flash_attn_func.
        compute_dtype: float64 for the golden reference; pass q.dtype for a same-dtype eager
            reference (the "x_lowp_ref" of assert_close_to_ref).

    Returns:
        (out [Sq, hq, d], lse [Sq, hq], max_logits [hq]) in compute_dtype. Empty rows: out 0,
        lse -inf (with a sink: logsumexp(sink)); heads with no visible cell: max_logits -inf.
    """
    cdt = compute_dtype
    sq, hq, d = q.shape
    sk, hk = k.shape[0], k.shape[1]
    g = hq // hk
    scale = d**-0.5 if softmax_scale is None else softmax_scale
    mask = make_dense_mask(q_ranges, k_ranges, attn_type_map, sq, sk, device=q.device)  # [Sq, Sk]
    qh = q.to(cdt).transpose(0, 1)  # [hq, Sq, d]
    kh = k.to(cdt).transpose(0, 1).repeat_interleave(g, dim=0)  # [hq, Sk, d]
    vh = v.to(cdt).transpose(0, 1).repeat_interleave(g, dim=0)
    s = torch.matmul(qh, kh.transpose(1, 2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~mask, float("-inf"))
    neg_inf = torch.full((), float("-inf"), dtype=cdt, device=q.device)
    max_logits = (
        s.amax(dim=(1, 2)) if sq * sk > 0 else torch.full((hq,), float("-inf"), dtype=cdt, device=q.device)
    )
    cols = s
    if sink is not None:
        sk_ = sink.to(cdt)
        sink_cols = sk_.t().unsqueeze(1).expand(hq, sq, -1) if sink_layout == "sh" else sk_.permute(2, 0, 1)
        cols = torch.cat([s, sink_cols], dim=-1)
    m = (
        cols.amax(-1, keepdim=True)
        if cols.shape[-1] > 0
        else torch.full((hq, sq, 1), float("-inf"), dtype=cdt, device=q.device)
    )
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m).detach()
    e = torch.exp(cols - m)
    denom = e.sum(-1)  # [hq, Sq]
    has = denom > 0
    l_safe = torch.where(has, denom, torch.ones_like(denom))
    out = torch.matmul(e[..., :sk], vh) / l_safe.unsqueeze(-1)
    lse = torch.where(has, m.squeeze(-1) + torch.log(l_safe), neg_inf)
    return out.transpose(0, 1), lse.transpose(0, 1), max_logits


def _disjoint(a, b) -> bool:
    """Rectangles (qs, qe, ks, ke) share no cell."""
    return a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2]


def random_slices(
    seed: int | random.Random,
    total_seqlen_q: int,
    total_seqlen_k: int,
    num_slices: int,
    *,
    types=(0, 1, 2, 3),
    max_tries: int = 200,
    allow_empty_k: bool = True,
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Random cell-disjoint slices: (q_ranges, k_ranges, types) as lists.

    Slices are pairwise disjoint rectangles (so cell-disjoint), placed at random: their q rows
    overlap partially or fully, so do their k columns, some rows stay uncovered (empty), causal
    and bi-causal slices get Lq > Lk as often as Lq < Lk, and with `allow_empty_k` one slice in
    ten is an empty padding slice [qs, qe) x [x, x). Fewer than num_slices may come back when
    the grid is crowded.
    """
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    rects: list[tuple[int, int, int, int]] = []
    slices: list[tuple[tuple[int, int, int, int], int]] = []
    for _ in range(num_slices):
        t = rng.choice(list(types))
        if allow_empty_k and rng.random() < 0.1:
            qs = rng.randrange(0, total_seqlen_q)
            x = rng.randint(0, total_seqlen_k)
            slices.append(((qs, rng.randint(qs + 1, total_seqlen_q), x, x), t))
            continue
        for _ in range(max_tries):
            lq = rng.randint(1, max(1, total_seqlen_q // 2))
            lk = rng.randint(1, max(1, total_seqlen_k // 2))
            qs = rng.randint(0, total_seqlen_q - lq)
            ks = rng.randint(0, total_seqlen_k - lk)
            r = (qs, qs + lq, ks, ks + lk)
            if all(_disjoint(r, o) for o in rects):
                rects.append(r)
                slices.append((r, t))
                break
    rng.shuffle(slices)
    q_ranges = [[r[0], r[1]] for r, _ in slices]
    k_ranges = [[r[2], r[3]] for r, _ in slices]
    return q_ranges, k_ranges, [t for _, t in slices]


def overlapping_slices(
    rng: random.Random, total_seqlen_q: int, total_seqlen_k: int, num_slices: int, *, allow_empty_k: bool = True
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Independent random slices of all four types: rectangles overlap freely (the mask is their
    union; cells covered twice count once in mask-only users such as `make_dense_mask`). With
    `allow_empty_k` a k range may be empty."""
    qr, kr, ts = [], [], []
    for _ in range(num_slices):
        qs = rng.randrange(total_seqlen_q)
        ks = rng.randrange(total_seqlen_k + (1 if allow_empty_k else 0))
        qr.append([qs, rng.randint(qs + 1, total_seqlen_q)])
        kr.append([ks, rng.randint(ks if allow_empty_k else ks + 1, total_seqlen_k)])
        ts.append(rng.randrange(4))
    return qr, kr, ts


def varlen_slices(
    seqlens: list[int], mask_type: int = 1
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Block-diagonal (varlen) self-attention slices, one per sequence, all of `mask_type`."""
    q, k, t, start = [], [], [], 0
    for n in seqlens:
        q.append([start, start + n])
        k.append([start, start + n])
        t.append(mask_type)
        start += n
    return q, k, t


def shared_question_slices(
    prompt: int, answers: list[int]
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """One prompt seen by many answers: the prompt causal; each answer sees the whole prompt (full)
    and itself (causal). Answers follow the prompt back to back."""
    q, k, t, start = [[0, prompt]], [[0, prompt]], [1], prompt
    for n in answers:
        q += [[start, start + n], [start, start + n]]
        k += [[0, prompt], [start, start + n]]
        t += [0, 1]
        start += n
    return q, k, t


def assert_close_to_ref(
    name: str, x: torch.Tensor, x_lowp_ref: torch.Tensor, ref64: torch.Tensor, *, slack: float = 2.0
) -> None:
    """Three-way accuracy check: max|x - ref64| <= slack * max|x_lowp_ref - ref64| + 1e-6.

    x is the kernel result, x_lowp_ref the same computation done eagerly in x's precision, ref64
    the float64 golden value. NaN anywhere in x fails; -inf must match -inf position for position.
    The message names the tensor.
    """
    if x.shape != ref64.shape or x_lowp_ref.shape != ref64.shape:
        raise AssertionError(
            f"{name}: shape mismatch, got {list(x.shape)}, lowp ref {list(x_lowp_ref.shape)}, ref {list(ref64.shape)}"
        )
    xd, ld, rd = x.detach().double().cpu(), x_lowp_ref.detach().double().cpu(), ref64.detach().double().cpu()
    if torch.isnan(xd).any():
        raise AssertionError(f"{name}: contains NaN ({int(torch.isnan(xd).sum())} entries)")
    inf_x, inf_r = torch.isinf(xd), torch.isinf(rd)
    if not torch.equal(inf_x, inf_r) or not torch.equal(xd[inf_x], rd[inf_r]):
        raise AssertionError(
            f"{name}: infinite entries differ from the reference ({int((inf_x ^ inf_r).sum())} positions)"
        )
    fin = ~inf_r
    err = (xd[fin] - rd[fin]).abs().max().item() if fin.any() else 0.0
    lowp_fin = fin & ~torch.isinf(ld)
    base = (ld[lowp_fin] - rd[lowp_fin]).abs().max().item() if lowp_fin.any() else 0.0
    bound = slack * base + 1e-6
    if not err <= bound:
        raise AssertionError(
            f"{name}: max abs error {err:.3e} vs float64 ref exceeds {slack} x {base:.3e} (same-dtype ref error) + 1e-6"
        )
