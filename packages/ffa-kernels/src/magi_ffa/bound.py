"""``FFACall``: ffa_forward / ffa_backward of one mask, its operands checked once per call layout.

Why: the distributed runtime calls the same few masks (its host and remote stages) on every layer
of every step, with operands of the same shapes. ``ffa_forward`` / ``ffa_backward`` check and
normalise the ranges, pick the backend and check every tensor on each call; on the lent GPU hosts
that was ~75 us of host time per call, and a 32k-token varlen step on 2 GPUs is host-bound. A
bound call does that work the first time it sees a layout (shapes, dtypes, device, scale, softcap)
and afterwards only looks the layout up and checks the result buffers' shapes and dtypes.

The ranges are read when a layout is first seen: a bound call keeps its own copy, so changing the
tensors given to it afterwards changes nothing (bind again instead).
"""

from __future__ import annotations

import torch

from magi_ffa import api
from magi_ffa.backends.base import FFAInputs
from magi_ffa.errors import FFATypeError
from magi_ffa.select import get_backend, resolve_backend_name, select_backend

__all__ = ["FFACall"]

_MAX_LAYOUTS = 16  # layouts kept per bound call (a runtime sees one or two)


def _layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale, softcap) -> tuple:
    return (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
            q.stride(-1), k.stride(-1), v.stride(-1), softmax_scale, softcap)


class FFACall:
    """One mask's accumulating forward and backward (interface 1.4), with the semantics, arguments
    and errors of :func:`magi_ffa.ffa_forward` / :func:`magi_ffa.ffa_backward` minus the ranges.

    Example:
        >>> call = FFACall(q_ranges, k_ranges, attn_type_map, backend="fa4")
        >>> out, lse, _ = call.forward(q, k, v, softmax_scale=s)
        >>> dq, dk, dv = call.backward(dout, q, k, v, out, lse, softmax_scale=s)
    """

    def __init__(self, q_ranges, k_ranges, attn_type_map=None, *, deterministic: bool = False,
                 backend: str | None = None) -> None:
        if not isinstance(deterministic, bool):
            raise FFATypeError(f"FFACall(): deterministic must be a bool, got {type(deterministic).__name__}.")
        if backend is not None and not isinstance(backend, str):
            raise FFATypeError(f"FFACall(): backend must be a str or None, got {type(backend).__name__}.")
        self._ranges = (q_ranges, k_ranges, attn_type_map)
        self._deterministic, self._backend = deterministic, backend
        self._layouts: dict = {}  # _layout(...) -> (FFAInputs fields past q/k/v, its memo, chosen backend)

    def _bound(self, fn: str, q, k, v, softmax_scale, softcap):
        """(the call's FFAInputs, its backend): the layout looked up, or checked now."""
        key = _layout(q, k, v, softmax_scale, softcap)
        hit = self._layouts.get(key)
        if hit is None:
            q, k, v, qr, kr, tm, scale, cap = api._prepare_checked(fn, q, k, v, *self._ranges, softmax_scale, softcap)
            # own copies: the caller's range tensors may change later
            qr, kr, tm = (t.clone() if t is r else t for t, r in zip((qr, kr, tm), self._ranges))
            fields = (qr, kr, tm, scale, cap, self._deterministic)
            impl = select_backend(FFAInputs(q, k, v, *fields), self._backend)
            if len(self._layouts) >= _MAX_LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
            hit = self._layouts[key] = (fields, {}, impl)
        fields, memo, impl = hit
        if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
            q, k, v = (t.contiguous() for t in (q, k, v))
        return FFAInputs(q, k, v, *fields, memo=memo), impl

    def prepare(self, seqlen_q: int, seqlen_k: int, device) -> bool:
        """Build now what the first call with q of ``seqlen_q`` rows and k of ``seqlen_k`` rows on
        ``device`` would build from the ranges alone (interface 1.5): the fa4 backend's mask
        translation. Why: a caller that knows its next mask early (the distributed runtime, on a
        background thread while the GPU runs the current step) then pays nothing for it in the
        call. Returns whether the backend had anything to build (False for triton and torch, which
        keep nothing per mask that needs the call's lengths, or when the backend is chosen per call).
        Device data is uploaded on the current CUDA stream."""
        for name, value in (("seqlen_q", seqlen_q), ("seqlen_k", seqlen_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FFATypeError(f"FFACall.prepare(): {name} must be an int >= 0, got {value!r}.")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise FFATypeError(f"FFACall.prepare(): device must be a torch.device or a device string, "
                               f"got {device!r}.") from None
        name = resolve_backend_name(self._backend)
        impl = get_backend(name) if name != "auto" else None
        if impl is None or not impl.is_available():
            return False
        return bool(impl.prepare_mask(*self._ranges, seqlen_q, seqlen_k, device))

    def forward(self, q, k, v, *, softmax_scale: float | None, softcap: float = 0.0, out=None, lse=None,
                max_logits=None, return_max_logits: bool = False, overwrite: bool = False):
        """As :func:`magi_ffa.ffa_forward` on this mask; returns (out, lse, max_logits or None)."""
        inp, impl = self._bound("FFACall.forward", q, k, v, softmax_scale, softcap)
        return api._forward_into("FFACall.forward", inp, self._backend, out, lse, max_logits, return_max_logits,
                                 overwrite, impl=impl)

    def backward(self, dout, q, k, v, out, lse, *, softmax_scale: float | None, softcap: float = 0.0, dq=None,
                 dk=None, dv=None, delta=None, overwrite=False):
        """As :func:`magi_ffa.ffa_backward` on this mask; returns (dq, dk, dv)."""
        inp, impl = self._bound("FFACall.backward", q, k, v, softmax_scale, softcap)
        return api._backward_into("FFACall.backward", inp, self._backend, dout, out, lse, dq, dk, dv, delta,
                                  overwrite, impl=impl)
