"""Pieces shared by the stage runtime (dist_attn) and the QO-comm runtime (qo_comm).

Why one module: both runtimes call the same FFA kernels on the same per-stage slice tensors,
finish the forward the same way (sink once on the owner, max_logits all-reduced with MAX) and
reduce dsink over the cp group by the same flag; only their communication differs.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from magi_attention import _compat
from magi_attention.common.host_collective import run_and_release

__all__ = ["_acc_dtype", "_optional_kwargs", "_Calc", "_FFARuntimeMixin", "_save_for_backward",
           "_saved_inputs", "_default_scale", "bound_calls", "cast_lists", "kernel_backend", "native_folds_at_wait",
           "reduce_folds_at_wait",
           "value_dtype", "writes_buffers"]


def kernel_backend(flags: Any) -> str | None:
    """magi_ffa backend name for the key's flags: the torch reference (SDPA flag, which wins),
    FA4 (FA4 flag), or None (magi_ffa picks: MAGI_ATTENTION_KERNEL_BACKEND, then auto)."""
    if flags.sdpa_backend:
        return "torch"
    return "fa4" if flags.fa4_backend else None


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulators, fp64 when the inputs are fp64 (reference runs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def writes_buffers() -> bool:
    """Whether the loaded magi_ffa can write a call's result over a buffer and keep out/dq/dk/dv in
    the input dtype (interface 1.3, ``overwrite=``): then a buffer's first contributor writes it
    (no zero-fill) and one with at most two contributors needs no fp32 copy and no final cast."""
    return _compat.offers(_compat.ffa, ">=1.3")


def cast_lists() -> bool:
    """Whether the loaded magi_grpcoll casts a list of tensors in one call (interface 1.2): then K
    and V travel without being concatenated first (a copy of both on every forward and backward)."""
    return _compat.offers(_compat.grpcoll, ">=1.2")


def reduce_folds_at_wait() -> bool:
    """Whether the loaded magi_grpcoll takes ``group_reduce(fold_at_wait=True)`` (interface 1.3): a
    reduce issued before its output holds its final base values, folded only when waited."""
    return _compat.offers(_compat.grpcoll, ">=1.3")


def native_holds_tensors() -> bool:
    """Whether the loaded magi_grpcoll's native calls take ``record_streams=False`` (interface 1.5):
    their tensors are then held until the wait instead of marked used on the comm stream, so their
    blocks come back to the caching allocator in program order and a layer's tensors keep their
    addresses from step to step (what the whole-call graphs key on). Safe for the runtime: every
    tensor it hands a native call lives on the stream that waits for it."""
    return _compat.offers(_compat.grpcoll, ">=1.5")


def plans_take_group_lists() -> bool:
    """Whether magi_grpcoll's plans take every rank's split lists (interface 1.6): the native
    binding then derives its peers' layouts locally instead of exchanging them, so a new mask's
    first call makes the host wait neither for the peers nor for the GPU."""
    return _compat.offers(_compat.grpcoll, ">=1.6")


def binds_ahead() -> bool:
    """Whether magi_grpcoll's plans do their first call's host work on request (``bind_ahead``,
    interface 1.7): a prefetched runtime then binds its native plans on the prefetch thread."""
    return _compat.offers(_compat.grpcoll, ">=1.7")


def prepares_masks() -> bool:
    """Whether magi_ffa's bound calls build their mask translation on request (``FFACall.prepare``,
    interface 1.5): a prefetched runtime then translates its calls on the prefetch thread."""
    return bound_calls() and _compat.offers(_compat.ffa, ">=1.5")


def native_folds_at_wait() -> bool:
    """Whether magi_grpcoll's native collectives fold a ``fold_at_wait`` reduce themselves (their
    ``FOLD_AT_WAIT`` switch, on by default; a magi_grpcoll without the switch: no) instead of
    running it as a2av. Read when a runtime is built: set the switch before making the key."""
    import importlib

    try:
        native = importlib.import_module(f"{_compat.grpcoll.__name__}.impl.native")
    except ImportError:
        return False
    return bool(getattr(native, "FOLD_AT_WAIT", False))


def value_dtype(dtype: torch.dtype, contributors: int) -> torch.dtype:
    """dtype of an out/dq buffer summed from ``contributors`` calls: the input dtype when that is
    exact (fp32/fp64 inputs, or fp16/bf16 with at most two contributors: one fp32 sum, one rounding,
    as an fp32 accumulator converted at the end), else the fp32 accumulator."""
    acc = _acc_dtype(dtype)
    return dtype if dtype == acc or contributors <= 2 else acc


@functools.cache
def _accepted_kwargs(fn: Any) -> frozenset[str] | None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return frozenset(params)


def _optional_kwargs(fn: Any, **opts: Any) -> dict:
    """Keep only the optional switches the installed kernel accepts (CatGQA, auto-merge, ...)."""
    accepted = _accepted_kwargs(fn)
    return {k: v for k, v in opts.items() if accepted is None or k in accepted}


class _Calc:
    """One stage's slices as host (CPU) int32 tensors, built once.

    Host tensors, not device ones: magi_ffa uploads host ranges without making the host wait and
    keeps their host copy, where device ranges cost a blocking upload here and a device read-back
    (a host sync) in magi_ffa. On a step with a new mask every such sync drains the GPU's queue.
    """

    def __init__(self, calc: Any):
        q, k, t = calc.as_arrays()
        self.q_ranges = torch.from_numpy(np.ascontiguousarray(q, dtype=np.int32))
        self.k_ranges = torch.from_numpy(np.ascontiguousarray(k, dtype=np.int32))
        self.types = torch.from_numpy(np.ascontiguousarray(t, dtype=np.int32))
        self.area = int(calc.area)
        self.empty = self.q_ranges.shape[0] == 0 or self.area == 0
        self.bound: Any = None  # magi_ffa.FFACall of these slices (False: none), made at the first call


def bound_calls() -> bool:
    """Whether the loaded magi_ffa binds a mask's calls (``FFACall``, interface 1.4): the slices and
    the call layout are then checked once, not on every stage of every layer (host time: a 32k
    varlen step on 2 GPUs is host-bound)."""
    return _compat.offers(_compat.ffa, ">=1.4")


class _FFARuntimeMixin:
    """Kernel calls and forward/backward tails of a runtime.

    Needs ``self.flags`` (EnvFlags), ``self.backend`` and ``self.cp_group``. The dsink warning is
    given once per runtime class (``_dsink_warned`` is set on the class that warned).
    """

    flags: Any
    backend: str | None
    cp_group: Any
    _dsink_warned = False

    def _bound(self, calc: _Calc):
        """``calc``'s FFACall (made on first use), or False where magi_ffa has none."""
        if calc.bound is None:
            calc.bound = bound_calls() and _compat.ffa.FFACall(
                calc.q_ranges, calc.k_ranges, calc.types, deterministic=self.flags.deterministic, backend=self.backend)
        return calc.bound

    def _fwd(self, q, k, v, calc: _Calc, out, lse, max_logits, scale, softcap, overwrite: bool = False):
        """lse-merge ``calc``'s attention into out/lse (or write them whole: ``overwrite``)."""
        if calc.empty:
            return
        bound = self._bound(calc)
        if bound:
            bound.forward(q, k, v, softmax_scale=scale, softcap=softcap, out=out, lse=lse, max_logits=max_logits,
                          return_max_logits=max_logits is not None, overwrite=overwrite)
            return
        fn = _compat.ffa.ffa_forward
        extra = _optional_kwargs(fn, auto_range_merge=self.flags.auto_range_merge)
        if overwrite:
            extra["overwrite"] = True
        fn(q, k, v, calc.q_ranges, calc.k_ranges, calc.types, softmax_scale=scale,
           softcap=softcap, out=out, lse=lse, max_logits=max_logits,
           return_max_logits=max_logits is not None, deterministic=self.flags.deterministic,
           backend=self.backend, **extra)

    def _delta(self, out, dout):
        """rowsum(out * dout), computed once for all of a backward's kernel calls; None when the
        kernel backend derives its own (``USES_DELTA`` False, magi_ffa interface 1.2: fa4)."""
        impl = _compat.ffa.get_backend(self.backend) if self.backend else None
        if impl is not None and not getattr(impl, "USES_DELTA", True):
            return None
        acc = _acc_dtype(out.dtype)
        return (out.to(acc) * dout.to(acc)).sum(-1)

    def _bwd(self, dout, q, k, v, out, lse, delta, calc: _Calc, dq, dk, dv, scale, softcap,
             overwrite: tuple[str, ...] = ()):
        """Add ``calc``'s dq/dk/dv into the buffers (or write those named in ``overwrite`` whole)."""
        if calc.empty:
            return
        bound = self._bound(calc)
        if bound:
            bound.backward(dout, q, k, v, out, lse, softmax_scale=scale, softcap=softcap, dq=dq, dk=dk, dv=dv,
                           delta=delta, overwrite=overwrite)
            return
        fn = _compat.ffa.ffa_backward
        extra = _optional_kwargs(fn, auto_range_merge=self.flags.auto_range_merge,
                                 cat_gqa=self.flags.cat_gqa)
        if overwrite:
            extra["overwrite"] = overwrite
        fn(dout, q, k, v, out, lse, calc.q_ranges, calc.k_ranges, calc.types,
           softmax_scale=scale, softcap=softcap, dq=dq, dk=dk, dv=dv, delta=delta,
           deterministic=self.flags.deterministic, backend=self.backend, **extra)

    def _finish_forward(self, out, lse, sink, max_logits) -> None:
        """In place: apply the sink to the merged out/lse; all-reduce max_logits with MAX."""
        if sink is not None:
            _compat.ffa.apply_sink(out, lse, sink, "sh")
        if max_logits is not None and dist.get_world_size(self.cp_group) > 1:
            run_and_release(lambda ts: dist.all_reduce(ts[0], op=dist.ReduceOp.MAX, group=self.cp_group,
                                                       async_op=True), [max_logits])

    def _dsink(self, sink, lse, out, dout):
        dsink = _compat.ffa.sink_backward(sink, lse, out, dout.to(out.dtype), "sh")
        op = self.flags.dsink_all_reduce_op
        world = dist.get_world_size(self.cp_group)
        if op == "none":
            if world > 1 and not type(self)._dsink_warned:
                type(self)._dsink_warned = True
                warnings.warn("calc_attn(): dsink is partial per rank "
                              "(MAGI_ATTENTION_DSINK_ALL_REDUCE_OP=none); reduce sink.grad over "
                              "the cp group yourself or set the flag to sum|avg", stacklevel=2)
            return dsink
        if world > 1:
            dsink = dsink.contiguous()
            run_and_release(lambda ts: dist.all_reduce(ts[0], op=dist.ReduceOp.SUM, group=self.cp_group,
                                                       async_op=True), [dsink])
            if op == "avg":
                dsink = dsink / world
        return dsink


def _save_for_backward(ctx, q, k, v, sink, out, lse, max_logits, runtime, scale, softcap):
    """Autograd forward bookkeeping shared by both runtimes' Functions."""
    ctx.runtime, ctx.scale, ctx.softcap = runtime, scale, softcap
    ctx.has_sink = sink is not None
    ctx.save_for_backward(q, k, v, out, lse, *([sink] if sink is not None else []))
    ctx.mark_non_differentiable(lse)
    if max_logits is not None:
        ctx.mark_non_differentiable(max_logits)


def _saved_inputs(ctx):
    """(q, k, v, out, lse, sink | None, need_dsink) from a ctx filled by _save_for_backward."""
    saved = ctx.saved_tensors
    q, k, v, out, lse = saved[:5]
    sink = saved[5] if ctx.has_sink else None
    return q, k, v, out, lse, sink, ctx.has_sink and ctx.needs_input_grad[3]


def _default_scale(q: torch.Tensor, softmax_scale: float | None) -> float:
    """The softmax scale: the given one, else 1/sqrt(head dim)."""
    return float(softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5)
