import importlib.util
import pathlib

import pytest
import torch
from magi_attn_extensions import ExtensionsInputError, apply_qk_clip_, qk_clip_scales
from magi_attn_extensions.testing import ref_max_logits

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "extensions" / "muon_qk_clip.py"


def _heads_logits(wq, wk, x, hq, hk, d):
    q = (x @ wq.t()).view(1, x.shape[0], hq, d)
    k = (x @ wk.t()).view(1, x.shape[0], hk, d)
    return ref_max_logits(q, k)


@pytest.mark.parametrize("hq, hk", [(4, 4), (6, 2), (4, 1)])
def test_every_head_ends_at_or_below_tau_and_clipped_max_head_hits_tau(hq, hk):
    d, dim, tau = 8, 16, 3.0
    x = torch.randn(12, dim, dtype=torch.float64)
    wq = torch.randn(hq * d, dim, dtype=torch.float64)
    wk = torch.randn(hk * d, dim, dtype=torch.float64)
    wq[: d] *= 0.05  # head 0 stays below tau
    before = _heads_logits(wq, wk, x, hq, hk, d)
    assert (before > tau).any() and before[0] < tau
    res = apply_qk_clip_(wq, wk, before, tau, hk)
    after = _heads_logits(wq, wk, x, hq, hk, d)
    assert (after <= tau * (1 + 1e-9)).all()
    assert set(res.clipped_heads) == set(torch.nonzero(before > tau).flatten().tolist())
    assert (res.q_scale <= 1).all() and (res.k_scale <= 1).all()  # never scales up
    g = hq // hk
    for kv in range(hk):
        group = list(range(kv * g, (kv + 1) * g))
        worst = max(group, key=lambda h: before[h])
        if before[worst] > tau:  # the group's most clipped head is brought exactly to tau
            torch.testing.assert_close(after[worst], torch.tensor(tau, dtype=torch.float64))
        else:  # untouched group
            torch.testing.assert_close(after[group], before[group])
    if hk == hq:  # MHA: exactly the K2 rule sqrt(gamma) on both sides
        gamma = torch.where(before > tau, tau / before, torch.ones_like(before))
        torch.testing.assert_close(res.q_scale, gamma.sqrt())
        torch.testing.assert_close(res.k_scale, gamma.sqrt())


def test_factors_product_bound_and_no_clip_is_noop():
    ml = torch.tensor([1.0, 20.0, 5.0, float("-inf"), 4.0, 9.0])
    res = qk_clip_scales(ml, 4.0, num_kv_heads=2)
    prod = res.q_scale * res.k_scale.repeat_interleave(3)
    gamma = torch.clamp(4.0 / ml.clamp_min(1e-9), max=1.0)
    assert (prod <= gamma + 1e-7).all()
    w = torch.randn(6 * 2, 3)
    w0 = w.clone()
    wk = torch.randn(2 * 2, 3)
    res = apply_qk_clip_(w, wk, torch.tensor([1.0, 2.0, 3.0, 0.5, -1.0, float("-inf")]), 4.0, 2)
    assert res.clipped_heads == () and torch.equal(w, w0)


def test_bad_inputs():
    with pytest.raises(ExtensionsInputError, match="tau"):
        qk_clip_scales(torch.ones(4), -1.0, 2)
    with pytest.raises(ExtensionsInputError, match="multiple of num_kv_heads"):
        qk_clip_scales(torch.ones(6), 1.0, 4)
    with pytest.raises(ExtensionsInputError, match="not a multiple"):
        apply_qk_clip_(torch.ones(7, 2), torch.ones(4, 2), torch.full((2,), 9.0), 1.0, 2)


def test_example_holds_max_logits_under_tau():
    spec = importlib.util.spec_from_file_location("muon_qk_clip_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tau = 4.0
    unclipped = mod.train(steps=30, tau=tau, clip=False)
    clipped = mod.train(steps=30, tau=tau, clip=True)
    assert max(unclipped) > 2 * tau  # the task really drives logits up
    assert max(clipped[1:]) <= tau * (1 + 1e-4)
    assert max(clipped) > 0.5 * tau  # and the clip is active, not vacuous
