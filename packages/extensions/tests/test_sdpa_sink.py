"""sdpa_*_with_sink against autograd through the fp64 dense reference."""

import pytest
import torch
from magi_attn_extensions import ExtensionsInputError, ExtensionsTypeError
from magi_attn_extensions.sink import sdpa_func_with_sink, sdpa_varlen_func_with_sink
from magi_attn_extensions.sink.masks import slices_to_dense, varlen_slices, window_slices
from magi_attn_extensions.testing import assert_close_to_ref, ref_attn_with_sink


def _inputs(shape_q, shape_k, dtype, sink_shape):
    q = torch.randn(*shape_q, dtype=dtype, requires_grad=True)
    k = torch.randn(*shape_k, dtype=dtype, requires_grad=True)
    v = torch.randn(*shape_k, dtype=dtype, requires_grad=True)
    sink = None if sink_shape is None else torch.randn(*sink_shape, dtype=torch.float32).requires_grad_()
    return q, k, v, sink


def _check(name, got, ref64, lowp=None, tol=1e-6):
    if lowp is None:
        err = (got.double() - ref64).abs().max().item()
        assert err <= tol, f"{name}: {err}"
    else:
        assert_close_to_ref(name, got, lowp, ref64, factor=4.0, atol=tol)


CASES = [  # (b, sq, sk, hq, hk, d, causal, window)
    (2, 7, 7, 4, 2, 8, False, (-1, -1)),
    (1, 9, 13, 3, 1, 16, True, (-1, -1)),
    (2, 11, 6, 2, 2, 8, True, (3, -1)),   # sq > sk: leading rows have no keys
    (1, 10, 10, 4, 4, 4, False, (2, 1)),
]


@pytest.mark.parametrize("layout", ["sh", "ssh", None])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_forward_backward_vs_fp64_reference(case, layout, dtype):
    b, sq, sk, hq, hk, d, causal, window = case
    sink_shape = None if layout is None else ((3, hq) if layout == "sh" else (b, sq, 2, hq))
    q, k, v, sink = _inputs((b, sq, hq, d), (b, sk, hk, d), dtype, sink_shape)
    out, lse = sdpa_func_with_sink(q, k, v, sink, layout or "sh", softmax_scale=0.3, causal=causal,
                                   window_size=window, return_attn_probs=True)
    mask = slices_to_dense(window_slices(sq, sk, causal, window), sq, sk)
    ref_out, ref_lse = ref_attn_with_sink(q, k, v, mask, sink, layout or "sh", softmax_scale=0.3)
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == (b, hq, sq)
    tol = 1e-6 if dtype == torch.float64 else 2e-5
    _check("out", out, ref_out.detach(), tol=tol)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse.transpose(1, 2)), finite)
    _check("lse", lse.transpose(1, 2)[finite], ref_lse.detach()[finite], tol=tol)
    dout = torch.randn_like(out)
    inputs = [q, k, v] + ([sink] if sink is not None else [])
    grads = torch.autograd.grad(out, inputs, dout)
    ref_grads = torch.autograd.grad(ref_out, inputs, dout.double())
    for name, g, rg in zip(["dq", "dk", "dv", "dsink"], grads, ref_grads):
        assert g.dtype == (sink.dtype if name == "dsink" else dtype)
        _check(name, g, rg, tol=tol * 10)


@pytest.mark.parametrize("layout", ["sh", "ssh"])
def test_varlen_forward_backward_vs_fp64_reference(layout):
    cu_q, cu_k = [0, 5, 5, 12, 13], [0, 4, 7, 12, 18]
    hq, hk, d = 4, 2, 8
    t_q, t_k = cu_q[-1], cu_k[-1]
    sink_shape = (2, hq) if layout == "sh" else (t_q, 3, hq)
    q, k, v, sink = _inputs((t_q, hq, d), (t_k, hk, d), torch.float64, sink_shape)
    out, lse = sdpa_varlen_func_with_sink(
        q, k, v, torch.tensor(cu_q, dtype=torch.int32), torch.tensor(cu_k, dtype=torch.int32), 7, 6,
        sink=sink, sink_layout=layout, causal=True, return_attn_probs=True,
    )
    mask = slices_to_dense(varlen_slices(cu_q, cu_k, True, (-1, -1)), t_q, t_k)
    ref_out, ref_lse = ref_attn_with_sink(q[None], k[None], v[None], mask, None if sink is None else (
        sink if layout == "sh" else sink[None]), layout)
    assert lse.shape == (hq, t_q)
    _check("out", out, ref_out[0].detach())
    _check("lse", lse.t(), ref_lse[0].detach())
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, k, v, sink], dout)
    ref_grads = torch.autograd.grad(ref_out[0], [q, k, v, sink], dout.double())
    for name, g, rg in zip(["dq", "dk", "dv", "dsink"], grads, ref_grads):
        _check(name, g, rg, tol=1e-5)


def test_low_precision_within_factor_of_same_dtype_reference():
    b, s, h, d = 1, 16, 2, 16
    q, k, v, sink = _inputs((b, s, h, d), (b, s, h, d), torch.bfloat16, (2, h))
    out = sdpa_func_with_sink(q, k, v, sink, causal=True)
    mask = slices_to_dense(window_slices(s, s, True, (-1, -1)), s, s)
    ref64, _ = ref_attn_with_sink(q, k, v, mask, sink)
    # same-dtype "eager" reference: literal model evaluated in fp32 then rounded to bf16
    lowp, _ = ref_attn_with_sink(q.float(), k.float(), v.float(), mask, sink)
    assert_close_to_ref("out", out, lowp.to(torch.bfloat16), ref64, factor=2.0, atol=1e-2)


def test_backward_twice_with_retain_graph_accumulates_like_any_op():
    q, k, v, sink = _inputs((1, 6, 2, 8), (1, 6, 2, 8), torch.float64, (2, 2))
    out = sdpa_func_with_sink(q, k, v, sink, causal=True)
    loss = (out * torch.randn_like(out)).sum()
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in (q, k, v, sink)]
    loss.backward()
    for t, g in zip((q, k, v, sink), first):
        torch.testing.assert_close(t.grad, 2 * g)


def test_user_sink_gets_exactly_one_gradient_and_no_hooks():
    q, k, v, sink = _inputs((1, 5, 2, 8), (1, 5, 2, 8), torch.float64, (3, 2))
    calls = []
    sink.register_hook(lambda g: calls.append(g))  # our hook, to count gradient deliveries
    hooks_before = dict(sink._backward_hooks or {})
    out = sdpa_func_with_sink(q, k, v, sink)
    assert dict(sink._backward_hooks or {}) == hooks_before  # the wrapper registered nothing
    out.sum().backward()
    assert len(calls) == 1
    ref_sink_grad = torch.autograd.grad(ref_attn_with_sink(q, k, v, None, sink)[0].sum(), sink)[0]
    torch.testing.assert_close(sink.grad.double(), ref_sink_grad.double(), atol=1e-6, rtol=1e-6)
    # only one graph edge reaches the sink: the Function node, not a second path through the correction
    edges = [fn for fn, _ in out.grad_fn.next_functions if fn is not None]
    assert sum(type(fn).__name__ == "AccumulateGrad" and fn.variable is sink for fn in edges) == 1


def test_lse_is_not_differentiable_and_sink_only_path_is_fine():
    q, k, v, sink = _inputs((1, 4, 1, 4), (1, 4, 1, 4), torch.float32, (1, 1))
    out, lse = sdpa_func_with_sink(q, k, v, sink, return_attn_probs=True)
    assert not lse.requires_grad
    q.requires_grad_(False)
    (dsink,) = torch.autograd.grad(out.sum(), sink)
    assert dsink.shape == sink.shape and torch.isfinite(dsink).all() and dsink.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(sink_layout="shd"), NotImplementedError, "shd"),
        (dict(sink_layout="xy"), ExtensionsInputError, "sink_layout"),
        (dict(sink=torch.zeros(2, 3)), ExtensionsInputError, r"\[s_sink, 2\]"),
        (dict(sink=torch.zeros(2, 2, dtype=torch.int64)), ExtensionsTypeError, "floating"),
        (dict(window_size=(-2, 0)), ExtensionsInputError, "window_size"),
        (dict(softmax_scale=-1.0), ExtensionsInputError, "softmax_scale"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(exc, match=match):
        sdpa_func_with_sink(q, q, q, **kwargs)


def test_bad_shapes_and_cu_seqlens():
    q = torch.randn(1, 4, 3, 8)
    k = torch.randn(1, 4, 2, 8)
    with pytest.raises(ExtensionsInputError, match="multiple of num kv heads"):
        sdpa_func_with_sink(q, k, k)
    with pytest.raises(ExtensionsInputError, match="4-D"):
        sdpa_func_with_sink(q[0], q[0], q[0])
    with pytest.raises(ExtensionsTypeError, match="share a dtype"):
        sdpa_func_with_sink(q, q.double(), q)
    x = torch.randn(6, 2, 8)
    with pytest.raises(ExtensionsInputError, match="cu_seqlens_q"):
        sdpa_varlen_func_with_sink(x, x, x, [0, 7], [0, 6])
    with pytest.raises(ExtensionsInputError, match="as many sequences"):
        sdpa_varlen_func_with_sink(x, x, x, [0, 6], [0, 3, 6])


@pytest.mark.parametrize("layout", ["sh", "ssh"])
def test_math_engine_used_off_cpu_matches_reference(monkeypatch, layout):
    from magi_attn_extensions.sink import _sdpa_engines

    monkeypatch.setattr(_sdpa_engines, "pick_engine", lambda q, k: "math")
    b, sq, sk, hq, hk, d = 2, 8, 5, 4, 2, 8
    q, k, v, sink = _inputs((b, sq, hq, d), (b, sk, hk, d), torch.float64, (2, hq) if layout == "sh" else (b, sq, 2, hq))
    out = sdpa_func_with_sink(q, k, v, sink, layout, causal=True)
    mask = slices_to_dense(window_slices(sq, sk, True, (-1, -1)), sq, sk)
    ref_out, _ = ref_attn_with_sink(q, k, v, mask, sink, layout)
    _check("out", out, ref_out.detach(), tol=1e-10)
    dout = torch.randn_like(out)
    for name, g, rg in zip(["dq", "dk", "dv", "dsink"], torch.autograd.grad(out, [q, k, v, sink], dout),
                           torch.autograd.grad(ref_out, [q, k, v, sink], dout.double())):
        _check(name, g, rg, tol=1e-6)
