"""FA2/FA3/FA4 wrappers: clear ImportErrors without the packages, and the FA2 adapter end to end
against a fake ``flash_attn`` whose kernels are plain torch with FA2's signatures and lse layout."""

import importlib.util
import sys
import types

import magi_attn_extensions as ext
import pytest
import torch
from magi_attn_extensions import OptionalDependencyError
from magi_attn_extensions.sink.masks import slices_to_dense, window_slices
from magi_attn_extensions.testing import ref_attn_with_sink


def _missing(mod):
    try:
        return importlib.util.find_spec(mod) is None
    except ModuleNotFoundError:
        return True


@pytest.mark.parametrize(
    "name, module, pip",
    [
        ("fa2_func_with_sink", "flash_attn", "flash-attn"),
        ("fa2_varlen_func_with_sink", "flash_attn", "flash-attn"),
        ("fa3_func_with_sink", "flash_attn_interface", "flash_attn_3"),
        ("fa3_varlen_func_with_sink", "flash_attn_interface", "flash_attn_3"),
        ("fa4_func_with_sink", "flash_attn", "flash-attn-cute"),
        ("fa4_varlen_func_with_sink", "flash_attn", "flash-attn-cute"),
    ],
)
def test_missing_package_gives_import_error_naming_pip_package(name, module, pip):
    if not _missing(module):
        pytest.skip(f"{module} is installed")
    fn = getattr(ext, name)  # lazy attribute resolves without the package
    x = torch.randn(1, 4, 2, 8) if "varlen" not in name else torch.randn(4, 2, 8)
    args = (x, x, x) if "varlen" not in name else (x, x, x, [0, 4], [0, 4], 4, 4)
    with pytest.raises(ImportError, match=f"pip install {pip}") as info:
        fn(*args)
    assert isinstance(info.value, OptionalDependencyError)


def _fake_scores(q, k, causal, window_left, window_right, scale):
    b, sq, hq, _ = q.shape
    sk, hk = k.shape[1], k.shape[2]
    kk = k.repeat_interleave(hq // hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kk.float()) * scale
    mask = slices_to_dense(window_slices(sq, sk, causal, (window_left, window_right)), sq, sk)
    return s.masked_fill(~mask, float("-inf")), hq // hk


def _fake_fwd(q, k, v, dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap,
              alibi_slopes, return_softmax):
    s, g = _fake_scores(q, k, causal, window_size_left, window_size_right, softmax_scale)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v.float().repeat_interleave(g, dim=2)).to(q.dtype)
    return out, lse.masked_fill(lse.isneginf(), float("inf")), None, torch.zeros(2)


def _fake_bwd(dout, q, k, v, out, softmax_lse, dq, dk, dv, dropout_p, softmax_scale, causal,
              window_size_left, window_size_right, softcap, alibi_slopes, deterministic, rng_state=None):
    s, g = _fake_scores(q, k, causal, window_size_left, window_size_right, softmax_scale)
    assert not softmax_lse.isneginf().any()  # the adapter hands FA's +inf convention back
    p = torch.exp(s - softmax_lse[..., None])
    vv = v.float().repeat_interleave(g, dim=2)
    do = dout.float()
    dvv = torch.einsum("bhqk,bqhd->bkhd", p, do)
    dp = torch.einsum("bqhd,bkhd->bhqk", do, vv)
    delta = (out.float() * do).sum(-1).transpose(1, 2)[..., None]
    ds = p * (dp - delta) * softmax_scale
    dq.copy_(torch.einsum("bhqk,bkhd->bqhd", ds, k.float().repeat_interleave(g, dim=2)))
    b, sk, hk, d = k.shape
    dk.copy_(torch.einsum("bhqk,bqhd->bkhd", ds, q.float()).reshape(b, sk, hk, g, d).sum(3))
    dv.copy_(dvv.reshape(b, sk, hk, g, -1).sum(3))
    return None


@pytest.fixture
def fake_flash_attn(monkeypatch):
    pkg = types.ModuleType("flash_attn")
    iface = types.ModuleType("flash_attn.flash_attn_interface")
    iface._wrapped_flash_attn_forward = _fake_fwd
    iface._wrapped_flash_attn_backward = _fake_bwd
    pkg.flash_attn_interface = iface
    monkeypatch.setitem(sys.modules, "flash_attn", pkg)
    monkeypatch.setitem(sys.modules, "flash_attn.flash_attn_interface", iface)


@pytest.mark.parametrize("layout", ["sh", "ssh"])
def test_fa2_adapter_with_fake_kernel_matches_reference(fake_flash_attn, layout):
    b, sq, sk, hq, hk, d = 2, 9, 6, 4, 2, 12  # d % 8 != 0 exercises the head-dim padding; sq > sk empty rows
    q = torch.randn(b, sq, hq, d, requires_grad=True)
    k = torch.randn(b, sk, hk, d, requires_grad=True)
    v = torch.randn(b, sk, hk, d, requires_grad=True)
    sink = (torch.randn(2, hq) if layout == "sh" else torch.randn(b, sq, 2, hq)).requires_grad_()
    out, lse, _ = ext.fa2_func_with_sink(q, k, v, sink, layout, causal=True, return_attn_probs=True)
    mask = slices_to_dense(window_slices(sq, sk, True, (-1, -1)), sq, sk)
    ro, rl = ref_attn_with_sink(q, k, v, mask, sink, layout, softmax_scale=d ** -0.5)
    torch.testing.assert_close(out.double(), ro.detach(), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse.transpose(1, 2).double(), rl.detach(), atol=2e-5, rtol=1e-4)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, k, v, sink], dout)
    ref = torch.autograd.grad(ro, [q, k, v, sink], dout.double())
    for name, g, r in zip(["dq", "dk", "dv", "dsink"], grads, ref):
        torch.testing.assert_close(g.double(), r.double(), atol=5e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def _win(w):
    return -1 if w is None else w


def _fa4_fwd(q, k, v, softmax_scale=None, causal=False, softcap=None, window_size_left=None,
             window_size_right=None, return_lse=False, num_splits=1):
    """FA4's ``_flash_attn_fwd`` contract: lse [b, h, sq], -inf on rows without keys."""
    assert return_lse and softcap is None
    s, g = _fake_scores(q, k, causal, _win(window_size_left), _win(window_size_right), softmax_scale)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v.float().repeat_interleave(g, dim=2)).to(q.dtype)
    return out, lse, None, None, None


def _fa4_bwd(q, k, v, out, dout, lse, softmax_scale=None, causal=False, softcap=0.0, window_size_left=None,
             window_size_right=None, deterministic=False):
    """FA4's ``_flash_attn_bwd`` contract: returns (dq, dk, dv)."""
    s, g = _fake_scores(q, k, causal, _win(window_size_left), _win(window_size_right), softmax_scale)
    assert not lse.isneginf().any()  # empty rows go back as +inf, so exp(s - lse) is 0, not NaN
    p = torch.exp(s - lse[..., None])
    vv = v.float().repeat_interleave(g, dim=2)
    do = dout.float()
    dvv = torch.einsum("bhqk,bqhd->bkhd", p, do)
    ds = p * (torch.einsum("bqhd,bkhd->bhqk", do, vv) - (out.float() * do).sum(-1).transpose(1, 2)[..., None])
    ds = ds * softmax_scale
    b, sk, hk, d = k.shape
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, k.float().repeat_interleave(g, dim=2))
    dk = torch.einsum("bhqk,bqhd->bkhd", ds, q.float()).reshape(b, sk, hk, g, d).sum(3)
    return dq.to(q.dtype), dk.to(k.dtype), dvv.reshape(b, sk, hk, g, -1).sum(3).to(v.dtype)


@pytest.fixture
def fake_flash_attn_cute(monkeypatch):
    iface = types.ModuleType("flash_attn.cute.interface")
    iface._flash_attn_fwd, iface._flash_attn_bwd = _fa4_fwd, _fa4_bwd
    for name, mod in (("flash_attn", types.ModuleType("flash_attn")),
                      ("flash_attn.cute", types.ModuleType("flash_attn.cute")),
                      ("flash_attn.cute.interface", iface)):
        monkeypatch.setitem(sys.modules, name, mod)


@pytest.mark.parametrize("layout,window", [("sh", (-1, -1)), ("ssh", (3, 0)), (None, (2, 0))])
def test_fa4_adapter_with_fake_kernel_matches_reference(fake_flash_attn_cute, layout, window):
    b, sq, sk, hq, hk, d = 2, 9, 6, 4, 2, 16  # sq > sk with causal: empty rows (lse -inf without a sink)
    q = torch.randn(b, sq, hq, d, requires_grad=True)
    k = torch.randn(b, sk, hk, d, requires_grad=True)
    v = torch.randn(b, sk, hk, d, requires_grad=True)
    sink = None if layout is None else (torch.randn(2, hq) if layout == "sh" else torch.randn(b, sq, 2, hq))
    layout = layout or "sh"
    leaves = [q, k, v] + ([sink.requires_grad_()] if sink is not None else [])
    out, lse = ext.fa4_func_with_sink(q, k, v, sink, layout, causal=True, window_size=window,
                                      return_attn_probs=True)
    mask = slices_to_dense(window_slices(sq, sk, True, window), sq, sk)
    ro, rl = ref_attn_with_sink(q, k, v, mask, sink, layout, softmax_scale=d ** -0.5)
    torch.testing.assert_close(out.double(), ro.detach(), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse.transpose(1, 2).double(), rl.detach(), atol=2e-5, rtol=1e-4)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    ref = torch.autograd.grad(ro, leaves, dout.double())
    for name, g, r in zip(["dq", "dk", "dv", "dsink"], grads, ref):
        torch.testing.assert_close(g.double(), r.double(), atol=5e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
