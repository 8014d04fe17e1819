"""The autograd forward/backward of flex_flash_attn_func: torch.library custom ops for traced
calls, and an autograd.Function over the same bodies for eager calls.

The ops are opaque to torch.compile (fake kernels give the output shapes), so a module calling
flex_flash_attn_func compiles with fullgraph=True. Backend selection and the kernels' host work
(reading ranges) happen inside the op, at run time, never while tracing.

Why two entry points: the custom op's dispatch and its autograd wrapper cost ~0.1-0.2 ms of host
time per call, longer than a short kernel (a 1k sliding window at 16k tokens runs ~0.3 ms on an
H200); ``ffa_attention`` takes the plain autograd.Function when nothing traces (no compile, no
dispatch mode such as FakeTensorMode, no functorch transform, plain tensors) and the op otherwise.
Both run the same bodies (``_fwd_body`` / ``_bwd_body``).

  magi_ffa::ffa_fwd(q, k, v, q_ranges, k_ranges, attn_type_map, sink, ...) -> (out, lse, max_logits)
  magi_ffa::ffa_bwd(dout, q, k, v, out, lse, ..., sink, ...) -> (dq, dk, dv, dsink)

out has q's dtype; lse and max_logits are fp32 (fp64 for fp64 inputs); the op's max_logits is left
unset unless requested and its dsink is empty [0] without a sink (the eager path gets None for both,
and makes no buffer for them; flex_flash_attn_func returns None for an unrequested max_logits).

Each op is the only contributor to its buffers, so a backend with SUPPORTS_FRESH gets empty
buffers in the output dtype and writes them whole (``fresh=True``): no zero-fill, no read-merge,
no conversion pass. Other backends get initialised fp32 accumulators and a final ``.to()``.
"""

from __future__ import annotations

import torch

from magi_ffa.backends.base import Backend, FFAInputs
from magi_ffa.select import select_backend
from magi_ffa.sink import apply_sink, sink_backward

__all__ = ["acc_dtype", "ffa_attention", "ffa_bwd_op", "ffa_fwd_op", "result_buffers", "rowsum_out_dout",
           "run_backward", "run_forward"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulator dtype: fp32, or fp64 for fp64 inputs (the oracle keeps full precision)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def result_buffers(shape, out_dtype: torch.dtype, lse_dtype: torch.dtype, device, *, written_whole: bool):
    """(out [*shape], lse [*shape[:-1]]) for one forward call: left empty when the backend writes
    them whole (``fresh``), else initialised to what no key gives (out 0, lse -inf) to merge into."""
    if written_whole:
        return (torch.empty(shape, dtype=out_dtype, device=device),
                torch.empty(shape[:-1], dtype=lse_dtype, device=device))
    return (torch.zeros(shape, dtype=out_dtype, device=device),
            torch.full(shape[:-1], float("-inf"), dtype=lse_dtype, device=device))


def rowsum_out_dout(out: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
    """delta = rowsum(out * dout) in the accumulator dtype, [Sq, hq]: the backward's softmax term."""
    adt = acc_dtype(out.dtype)
    return (out.to(adt) * dout.to(adt)).sum(-1)


def run_forward(
    backend: Backend,
    inp: FFAInputs,
    out: torch.Tensor,
    lse: torch.Tensor,
    max_logits: torch.Tensor | None,
    *,
    fresh: bool = False,
) -> None:
    """Run `backend.forward` under no_grad (buffers merged in place, or written when fresh)."""
    if not torch.is_grad_enabled():  # an autograd backward or forward already runs without grad
        return backend.forward(inp, out, lse, max_logits, fresh=fresh)
    with torch.no_grad():
        backend.forward(inp, out, lse, max_logits, fresh=fresh)


def run_backward(backend: Backend, inp: FFAInputs, dout, out, lse, delta, dq, dk, dv, *, fresh: bool = False,
                 accumulate: frozenset[str] = frozenset()) -> None:
    extra = {"accumulate": accumulate} if accumulate else {}  # only ACCUMULATES_NAMED backends take it
    if not torch.is_grad_enabled():  # torch's autograd engine runs backwards without grad
        return backend.backward(inp, dout, out, lse, delta, dq, dk, dv, fresh=fresh, **extra)
    with torch.no_grad():
        backend.backward(inp, dout, out, lse, delta, dq, dk, dv, fresh=fresh, **extra)


def _inputs(q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, softcap, deterministic, memo=None) -> FFAInputs:
    return FFAInputs(
        q=q,
        k=k,
        v=v,
        q_ranges=q_ranges,
        k_ranges=k_ranges,
        attn_type_map=attn_type_map,
        softmax_scale=softmax_scale,
        softcap=softcap,
        deterministic=deterministic,
        memo=memo,
    )


def _fwd_impl(q, k, v, q_ranges, k_ranges, attn_type_map, sink, sink_layout, softmax_scale, softcap,
              deterministic, return_max_logits, backend):
    out, lse, max_logits = _fwd_body(q, k, v, q_ranges, k_ranges, attn_type_map, sink, sink_layout, softmax_scale,
                                     softcap, deterministic, return_max_logits, backend, None)
    if max_logits is None:  # the schema's Tensor, left unset as documented
        max_logits = torch.empty((q.shape[1],), dtype=lse.dtype, device=q.device)
    return out, lse, max_logits


def _fwd_body(q, k, v, q_ranges, k_ranges, attn_type_map, sink, sink_layout, softmax_scale, softcap,
              deterministic, return_max_logits, backend, memo):
    """The forward op's body; `memo` (FFAInputs.memo) is given on the eager path only. max_logits is
    None unless requested (no buffer made per call for it)."""
    inp = _inputs(q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, softcap, deterministic, memo)
    impl = select_backend(inp, backend)
    sq, hq, d = q.shape
    adt = acc_dtype(q.dtype)
    fresh = impl.SUPPORTS_FRESH
    # written whole by the kernel when fresh: in q's dtype unless the sink still has to merge in
    out_dtype = q.dtype if fresh and sink is None else adt
    out, lse = result_buffers((sq, hq, d), out_dtype, adt, q.device, written_whole=fresh)
    max_logits = torch.full((hq,), float("-inf"), dtype=adt, device=q.device) if return_max_logits else None
    run_forward(impl, inp, out, lse, max_logits, fresh=fresh)
    if sink is not None:
        apply_sink(out, lse, sink.detach(), sink_layout)
    return out.to(q.dtype), lse, max_logits


_COMMON = ("Tensor q_ranges, Tensor k_ranges, Tensor attn_type_map, Tensor? sink, str sink_layout, "
           "float softmax_scale, float softcap, bool deterministic")
ffa_fwd_op = torch.library.custom_op(
    "magi_ffa::ffa_fwd", _fwd_impl, mutates_args=(),
    schema=f"(Tensor q, Tensor k, Tensor v, {_COMMON}, bool return_max_logits, str? backend)"
           " -> (Tensor, Tensor, Tensor)")


@ffa_fwd_op.register_fake
def _(
    q,
    k,
    v,
    q_ranges,
    k_ranges,
    attn_type_map,
    sink,
    sink_layout,
    softmax_scale,
    softcap,
    deterministic,
    return_max_logits,
    backend,
):
    sq, hq, _ = q.shape
    adt = acc_dtype(q.dtype)
    return torch.empty_like(q), q.new_empty((sq, hq), dtype=adt), q.new_empty((hq,), dtype=adt)


def _bwd_impl(dout, q, k, v, out, lse, q_ranges, k_ranges, attn_type_map, sink, sink_layout, softmax_scale,
              softcap, deterministic, backend):
    dq, dk, dv, dsink = _bwd_body(dout, q, k, v, out, lse, q_ranges, k_ranges, attn_type_map, sink, sink_layout,
                                  softmax_scale, softcap, deterministic, backend, None)
    return dq, dk, dv, (q.new_empty((0,), dtype=torch.float32) if dsink is None else dsink)  # the schema's Tensor


def _bwd_body(dout, q, k, v, out, lse, q_ranges, k_ranges, attn_type_map, sink, sink_layout, softmax_scale,
              softcap, deterministic, backend, memo):
    """The backward op's body; `memo` as in _fwd_body. dsink is None without a sink (the eager path
    drops it; the op gives its schema an empty tensor)."""
    inp = _inputs(q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, softcap, deterministic, memo)
    impl = select_backend(inp, backend)
    adt = acc_dtype(q.dtype)
    fresh = impl.SUPPORTS_FRESH
    gdt = q.dtype if fresh else adt  # fresh: written whole, directly in the input dtype
    alloc = torch.empty if fresh else torch.zeros
    dq = alloc(q.shape, dtype=gdt, device=q.device)
    dk = alloc(k.shape, dtype=gdt, device=q.device)
    dv = alloc(v.shape, dtype=gdt, device=q.device)
    delta = rowsum_out_dout(out, dout) if impl.USES_DELTA else None
    run_backward(impl, inp, dout, out, lse, delta, dq, dk, dv, fresh=fresh)
    dsink = None if sink is None else sink_backward(sink, lse, out, dout, sink_layout)
    if not fresh:  # fp32 accumulators; fresh ones are in the input dtype already
        dq, dk, dv = dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    return dq, dk, dv, dsink


ffa_bwd_op = torch.library.custom_op(
    "magi_ffa::ffa_bwd", _bwd_impl, mutates_args=(),
    schema=f"(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {_COMMON}, str? backend)"
           " -> (Tensor, Tensor, Tensor, Tensor)")


@ffa_bwd_op.register_fake
def _(
    dout,
    q,
    k,
    v,
    out,
    lse,
    q_ranges,
    k_ranges,
    attn_type_map,
    sink,
    sink_layout,
    softmax_scale,
    softcap,
    deterministic,
    backend,
):
    dsink = torch.empty_like(sink) if sink is not None else q.new_empty((0,), dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsink


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, q_ranges, k_ranges, attn_type_map, sink, sink_layout, scale, softcap, det, _, backend = inputs
    out, lse, _ = output
    ctx.save_for_backward(q, k, v, out, lse, q_ranges, k_ranges, attn_type_map, sink)
    ctx.params = (sink_layout, scale, softcap, det, backend)


def _backward(ctx, dout, dlse, dmax):
    # gradients flowing into lse / max_logits are ignored, as in the anchor
    q, k, v, out, lse, q_ranges, k_ranges, attn_type_map, sink = ctx.saved_tensors
    sink_layout, scale, softcap, det, backend = ctx.params
    if dout is None:
        dout = torch.zeros_like(out)
    args = (dout.contiguous(), q, k, v, out, lse, q_ranges, k_ranges, attn_type_map, sink, sink_layout, scale,
            softcap, det, backend)
    if _can_run_eagerly(dout, q, k, v, out, lse, sink):
        dq, dk, dv, dsink = _bwd_body(*args, getattr(ctx, "memo", None))
    else:
        dq, dk, dv, dsink = ffa_bwd_op(*args)
    return (
        dq,
        dk,
        dv,
        None,
        None,
        None,
        (dsink if sink is not None else None),
        None,
        None,
        None,
        None,
        None,
        None,
    )


ffa_fwd_op.register_autograd(_backward, setup_context=_setup_context)


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # not subclasses such as FakeTensor or DTensor


def _can_run_eagerly(*tensors) -> bool:
    """True when no tracer would see the call: not compiling, no dispatch mode (FakeTensorMode,
    FunctionalTensorMode, ...), no functorch transform, only plain tensors."""
    if torch.compiler.is_compiling():
        return False
    n_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
    functorch_on = getattr(torch._C, "_are_functorch_transforms_active", None)
    if n_modes is None or functorch_on is None or n_modes() > 0 or functorch_on():
        return False
    for t in tensors:
        if t is not None and type(t) not in _PLAIN:
            return False
    return True


class _EagerFFA(torch.autograd.Function):
    """ffa_fwd_op's autograd without the torch.library dispatch layers (same bodies, same saved
    tensors, same backward). The tensors come one by one, the other arguments as one tuple: apply's
    per-argument work is host time on every call."""

    @staticmethod
    def forward(ctx, q, k, v, q_ranges, k_ranges, attn_type_map, sink, params, memo):
        inputs = (q, k, v, q_ranges, k_ranges, attn_type_map, sink, *params)
        output = _fwd_body(*inputs, memo)
        _setup_context(ctx, inputs, output)
        ctx.memo = memo
        ctx.set_materialize_grads(False)  # lse / max_logits get no gradient: don't build zeros for them
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse, dmax):
        dq, dk, dv, _, _, _, dsink, *_ = _backward(ctx, dout, dlse, dmax)
        return dq, dk, dv, None, None, None, dsink, None, None


def ffa_attention(q, k, v, q_ranges, k_ranges, attn_type_map, sink, sink_layout, softmax_scale, softcap,
                  deterministic, return_max_logits, backend, memo=None):
    """(out, lse, max_logits) with autograd, as ffa_fwd_op: eagerly through _EagerFFA, traced through
    the custom op. memo: FFAInputs.memo of the call's signature (eager path only)."""
    args = (q, k, v, q_ranges, k_ranges, attn_type_map, sink, sink_layout, softmax_scale, softcap,
            deterministic, return_max_logits, backend)
    if _can_run_eagerly(q, k, v, q_ranges, k_ranges, attn_type_map, sink):
        return _EagerFFA.apply(*args[:7], args[7:], memo)
    return ffa_fwd_op(*args)
