"""Public entry points: check -> select -> run. Autograd `flex_flash_attn_func` and the
accumulation interface (`ffa_forward`, `ffa_backward`) that the distributed runtime drives.

Shape legend: Sq / Sk query / key tokens, hq / hk query / kv heads (hq % hk == 0), d head dim,
N slices, s sink tokens. Layout thd: q [Sq, hq, d], k, v [Sk, hk, d]; q head h reads kv head
h // (hq // hk).

Mask: slice n covers q rows q_ranges[n] x k columns k_ranges[n] with type attn_type_map[n]
(0 full, 1 causal bottom-right, 2 inv-causal top-left, 3 bi-causal). Slices may come in any
order and overlap in rows or in columns, but are assumed cell-disjoint: a cell listed twice is
counted twice in the softmax (not checked, it would need a dense mask).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from magi_ffa import checks, range_cache
from magi_ffa.backends.base import FFAInputs
from magi_ffa.errors import FFAInputError, FFATypeError
from magi_ffa.ops import acc_dtype, ffa_attention, result_buffers, rowsum_out_dout, run_backward, run_forward
from magi_ffa.select import select_backend
from magi_ffa.transfer import to_device
from magi_ffa.types import AttnForwardMeta

__all__ = ["ffa_backward", "ffa_forward", "flex_flash_attn_func"]


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# _prepare's result per call signature, for range tensors seen before (range_cache's identity rule:
# same objects, unchanged version counters and data): a training step repeats its calls, and the
# checks and normalisation cost more host time than an 8k FA4 kernel takes on the GPU.
_PREPARED_MAX = 32
_prepared: OrderedDict = OrderedDict()  # key -> (identity record, prepared tuple, memo)
_prepared_lock = threading.Lock()
range_cache.on_clear(_prepared.clear)  # the memo trusts range tensors by identity as range_cache does


def _prepared_key(fn, q, k, v, raw, softmax_scale, softcap):
    """The memo key of a call whose ranges are tensors on q's device, or None (not memoised). Plain
    tests, no generators: this runs on every call."""
    tensor, scalar = torch.Tensor, (float, int, type(None))
    if not (isinstance(q, tensor) and isinstance(k, tensor) and isinstance(v, tensor)) or checks.is_compiling():
        return None
    if not (isinstance(softmax_scale, scalar) and isinstance(softcap, scalar)):
        return None
    device = q.device
    for x in raw:
        if x is not None and not (isinstance(x, tensor) and x.device == device):
            return None
    qr, kr, tm = raw
    return (fn, id(qr), id(kr), id(tm), q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, device,
            k.device, v.device, softmax_scale, softcap)


def _prepare(fn, q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, softcap):
    """(q, k, v, q_ranges, k_ranges, attn_type_map, scale, softcap) checked and normalised, and the
    memo dict of this call signature (FFAInputs.memo; None when the call is not memoised)."""
    raw = (q_ranges, k_ranges, attn_type_map)
    key = _prepared_key(fn, q, k, v, raw, softmax_scale, softcap)
    if key is not None:
        with _prepared_lock:
            hit = _prepared.get(key)
        if hit is not None and range_cache.still_identical(hit[0], raw):
            return (_last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v), *hit[1], hit[2])
    record = range_cache.identity(raw) if key is not None else None
    result = _prepare_checked(fn, q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, softcap)
    if record is None:
        return (*result, None)
    memo: dict = {}  # FFAInputs.memo of this signature's calls
    with _prepared_lock:
        _prepared[key] = (record, result[3:], memo)
        _prepared.move_to_end(key)
        while len(_prepared) > _PREPARED_MAX:
            _prepared.popitem(last=False)
    return (*result, memo)


def _prepare_checked(fn, q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, softcap):
    """Every check of the call's arguments, and the ranges normalised to int32 tensors on q's device."""
    checks.check_qkv(fn, q, k, v)
    # Ranges given on the host (nested lists, type map a list or None; CPU tensors for device
    # q) are normalised there, and that copy becomes the range_cache entry of the device
    # tensors: they are never read back from the device.
    raw = (q_ranges, k_ranges, attn_type_map)
    from_host = all(
        not isinstance(x, torch.Tensor) or (x.device.type == "cpu" and q.device.type != "cpu") for x in raw
    )
    dev = torch.device("cpu") if from_host else q.device
    qr = checks.normalize_ranges(fn, "q_ranges", q_ranges, dev)
    kr = checks.normalize_ranges(fn, "k_ranges", k_ranges, dev)
    checks.check_range_counts(fn, qr, kr)
    tm = checks.normalize_type_map(fn, attn_type_map, qr.shape[0], dev)
    if from_host:
        # a private copy: the caller may change its own CPU tensor after this call
        host = tuple(h.clone() if h is x else h for h, x in zip((qr, kr, tm), raw))
        if q.device.type == "cuda" and not checks.is_compiling():
            # one upload that does not make the host wait (magi_ffa.transfer)
            n = qr.shape[0]
            flat = to_device(torch.cat([qr.reshape(-1), kr.reshape(-1), tm]), q.device)
            qr, kr, tm = flat[: 2 * n].view(n, 2), flat[2 * n : 4 * n].view(n, 2), flat[4 * n :]
        else:
            qr, kr, tm = (x.to(q.device) for x in host)
        if not checks.is_compiling():
            range_cache.remember(qr, kr, tm, host)
    checks.check_range_values(fn, qr, kr, tm, q.shape[0], k.shape[0])
    scale, cap = checks.check_scalars(fn, q.shape[-1], softmax_scale, softcap)
    return _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v), qr, kr, tm, scale, cap


def flex_flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_ranges,
    k_ranges,
    attn_type_map=None,
    *,
    sink: torch.Tensor | None = None,
    sink_layout: str = "sh",
    softmax_scale: float | None = None,
    softcap: float = 0.0,
    deterministic: bool = False,
    sm_margin: int = 0,
    disable_fwd_atomic_reduction: bool = False,
    disable_bwd_dkv_atomic_reduction: bool = False,
    ref_block_size: tuple[int, int] | None = None,
    max_seqlen_q: int | None = None,
    auto_range_merge: bool = False,
    swap_ab: bool = False,
    pack_gqa: bool = False,
    cat_gqa: bool = False,
    sparse_load: bool = False,
    swap_bwd_qk_loop: bool = False,
    return_max_logits: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, AttnForwardMeta]:
    """Flex-Flash-Attention over a list of (q_range, k_range, mask type) slices, with autograd.

    Args:
        q: [Sq, hq, d] fp16|bf16 (triton) or any float dtype (torch backend).
        k, v: [Sk, hk, d], same dtype and device as q.
        q_ranges, k_ranges: int32 [N, 2] tensors or lists of (start, end) pairs.
        attn_type_map: int32 [N] codes 0..3, or None for all full.
        sink: fp32 sink logits, [s, hq] (sink_layout "sh") or [Sq, s, hq] ("ssh"); unscaled,
            denominator only; receives a gradient.
        softmax_scale: defaults to d ** -0.5. softcap: > 0 maps scores to softcap * tanh(x / softcap).
        deterministic: bitwise-identical results run to run.
        return_max_logits: also return the per-head max scaled logit over visible cells.
        backend: "triton", "torch" or "auto" (default: env MAGI_ATTENTION_KERNEL_BACKEND, else auto).
        sm_margin, disable_fwd_atomic_reduction, disable_bwd_dkv_atomic_reduction, ref_block_size,
            max_seqlen_q, auto_range_merge, swap_ab, pack_gqa, cat_gqa, sparse_load,
            swap_bwd_qk_loop: the anchor's CUDA tuning knobs. They are validated (types, the
            anchor's mutual exclusions) and otherwise ignored: no backend here changes its result
            or schedule for them, and results are identical to the defaults.

    Returns:
        (out [Sq, hq, d] in q's dtype, AttnForwardMeta(lse fp32 [Sq, hq], max_logits fp32 [hq] | None)).
        A row with no visible key gets out 0 and lse -inf (with a sink: lse = logsumexp(sink)).
        For fp64 inputs (torch backend) lse and max_logits are fp64.

    Example:
        >>> out, meta = flex_flash_attn_func(q, k, v, [[0, 128]], [[0, 128]], [1])  # causal
    """
    fn = "flex_flash_attn_func"
    q, k, v, qr, kr, tm, scale, cap, memo = _prepare(
        fn, q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, softcap
    )
    checks.check_sink(fn, sink, sink_layout, q)
    checks.check_anchor_options(
        fn,
        qr,
        kr,
        deterministic=deterministic,
        return_max_logits=return_max_logits,
        sm_margin=sm_margin,
        disable_fwd_atomic_reduction=disable_fwd_atomic_reduction,
        disable_bwd_dkv_atomic_reduction=disable_bwd_dkv_atomic_reduction,
        ref_block_size=ref_block_size,
        max_seqlen_q=max_seqlen_q,
        auto_range_merge=auto_range_merge,
        swap_ab=swap_ab,
        pack_gqa=pack_gqa,
        cat_gqa=cat_gqa,
        sparse_load=sparse_load,
        swap_bwd_qk_loop=swap_bwd_qk_loop,
    )
    if backend is not None and not isinstance(backend, str):
        raise FFATypeError(f"{fn}(): backend must be a str or None, got {type(backend).__name__}.")
    out, lse, max_logits = ffa_attention(
        q, k, v, qr, kr, tm, sink, sink_layout, scale, cap, deterministic, return_max_logits, backend, memo=memo
    )
    return out, AttnForwardMeta(lse=lse, max_logits=max_logits if return_max_logits else None)


def _check_buffer(fn: str, name: str, buf, shape, device, dtypes: tuple) -> None:
    if buf is None:
        return
    if not isinstance(buf, torch.Tensor):
        raise FFATypeError(f"{fn}(): {name} must be a torch.Tensor or None, got {type(buf).__name__}.")
    if buf.dtype not in dtypes:
        names = " or ".join(str(d).replace("torch.", "") for d in dict.fromkeys(dtypes))
        raise FFATypeError(f"{fn}(): {name} must be a {names} buffer, got {buf.dtype}.")
    if list(buf.shape) != list(shape):
        raise FFAInputError(f"{fn}(): {name} must have shape {list(shape)}, got {list(buf.shape)}.")
    if buf.device != device:
        raise FFAInputError(f"{fn}(): {name} is on {buf.device} but q is on {device}.")


def _stat_dtypes(q: torch.Tensor) -> tuple:
    """dtypes of the fp32 statistics buffers (lse, max_logits, delta): fp64 too for fp64 inputs."""
    return (torch.float32, torch.float64) if q.dtype == torch.float64 else (torch.float32,)


def _value_dtypes(q: torch.Tensor) -> tuple:
    """dtypes of out / dq / dk / dv buffers: the fp32 accumulators, or q's own dtype (interface 1.3:
    a runtime with one or two contributors per buffer keeps no fp32 copy; see ffa_forward)."""
    return (*_stat_dtypes(q), q.dtype)


def _overwrite_names(fn: str, overwrite, names: tuple[str, ...]) -> frozenset:
    """`overwrite` (True, False, or a collection of buffer names) as the set of names it covers."""
    if overwrite is True or overwrite is False:
        return frozenset(names) if overwrite else frozenset()
    if isinstance(overwrite, str):
        overwrite = (overwrite,)
    try:
        chosen = frozenset(overwrite)
    except TypeError:
        raise FFATypeError(f"{fn}(): overwrite must be a bool or a collection of {list(names)}, got "
                           f"{type(overwrite).__name__}.") from None
    unknown = sorted(str(n) for n in chosen - set(names))
    if unknown:
        raise FFAInputError(f"{fn}(): overwrite names {unknown} are not among {list(names)}.")
    return chosen


def _merge_partial_(out, lse, part, part_lse) -> None:
    """lse-merge (part, part_lse) into (out, lse) in place: one Triton pass where it applies (a
    CUDA device, or the interpreter), else the torch merge (fp32 arithmetic, written back)."""
    from magi_ffa.backends.triton.merge import merge_into_
    from magi_ffa.merge import correct_attn_out_lse

    if not merge_into_(out, lse, part, part_lse):
        correct_attn_out_lse(out, lse, part, part_lse, inplace=True)


def ffa_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_ranges,
    k_ranges,
    attn_type_map,
    *,
    softmax_scale: float,
    softcap: float = 0.0,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    max_logits: torch.Tensor | None = None,
    return_max_logits: bool = False,
    deterministic: bool = False,
    backend: str | None = None,
    overwrite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Accumulating forward (no autograd, no sink): lse-merge this call into `out`/`lse`.

    Args:
        out: [Sq, hq, d] and lse: fp32 [Sq, hq], merged in place when given (rows this call
            does not reach stay as they were); fresh buffers start at out 0, lse -inf. Pass
            both or neither. `out` is an fp32 accumulator, or (interface 1.3) in q's dtype: the
            merge then runs in fp32 and rounds once per call, so a buffer with at most two
            contributors ends exactly as an fp32 accumulator converted at the end would.
        max_logits: fp32 [hq], maxed in place when given (implies it is returned).
        overwrite: (interface 1.3) the given out/lse hold nothing yet: this call writes them
            whole, as if they started at out 0, lse -inf, without reading them (no fill pass on
            backends that write whole buffers).

    Returns:
        (out, lse, max_logits or None): the buffers, fp32 (fp64 for fp64 inputs when fresh).
    """
    fn = "ffa_forward"
    q, k, v, qr, kr, tm, scale, cap, memo = _prepare(
        fn, q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, softcap
    )
    inp = FFAInputs(q, k, v, qr, kr, tm, scale, cap, deterministic, memo=memo)
    return _forward_into(fn, inp, backend, out, lse, max_logits, return_max_logits, overwrite)


def _forward_into(fn, inp: FFAInputs, backend, out, lse, max_logits, return_max_logits: bool, overwrite: bool,
                  impl=None):
    """ffa_forward after its operands are checked (``inp``): the buffers' checks and the run. ``impl``:
    the backend already chosen for ``inp`` (else chosen from ``backend``)."""
    q = inp.q
    if (out is None) != (lse is None):
        raise FFAInputError(f"{fn}(): pass both out and lse to accumulate into, or neither.")
    sq, hq, d = q.shape
    _check_buffer(fn, "out", out, (sq, hq, d), q.device, _value_dtypes(q))
    _check_buffer(fn, "lse", lse, (sq, hq), q.device, _stat_dtypes(q))
    _check_buffer(fn, "max_logits", max_logits, (hq,), q.device, _stat_dtypes(q))
    adt = acc_dtype(q.dtype)
    impl = impl or select_backend(inp, backend)
    if max_logits is None and return_max_logits:
        max_logits = torch.full((hq,), float("-inf"), dtype=adt, device=q.device)
    if out is None:
        fresh = impl.SUPPORTS_FRESH  # fresh buffers written whole: no zero-fill
        out, lse = result_buffers((sq, hq, d), adt, adt, q.device, written_whole=fresh)
        run_forward(impl, inp, out, lse, max_logits, fresh=fresh)
        return out, lse, max_logits
    if overwrite and impl.SUPPORTS_FRESH:
        run_forward(impl, inp, out, lse, max_logits, fresh=True)
        return out, lse, max_logits
    if overwrite:
        out.zero_()
        lse.fill_(float("-inf"))
    if out.dtype in _stat_dtypes(q) or impl.MERGES_INPUT_DTYPE:  # the backend merges in place
        run_forward(impl, inp, out, lse, max_logits)
        return out, lse, max_logits
    # a low-precision out: this call's result in temporaries, then one lse merge in fp32
    fresh = impl.SUPPORTS_FRESH
    part, part_lse = result_buffers(out.shape, q.dtype if fresh else adt, lse.dtype, q.device, written_whole=fresh)
    run_forward(impl, inp, part, part_lse, max_logits, fresh=fresh)
    _merge_partial_(out, lse, part, part_lse)
    return out, lse, max_logits


def ffa_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    q_ranges,
    k_ranges,
    attn_type_map,
    *,
    softmax_scale: float,
    softcap: float = 0.0,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
    delta: torch.Tensor | None = None,
    deterministic: bool = False,
    backend: str | None = None,
    overwrite=False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accumulating backward (no autograd): add this call's dq, dk, dv into the given buffers.

    Args:
        dout: [Sq, hq, d] gradient of the final output.
        out, lse: the *final* merged forward results (sink included), [Sq, hq, d] and fp32 [Sq, hq].
        dq: [Sq, hq, d]; dk, dv: [Sk, hk, d]; fp32 accumulators or (interface 1.3) in q's dtype;
            added into in place, fresh if None.
        delta: fp32 [Sq, hq] = rowsum(out * dout); computed when None (pass it to reuse it
            across calls).
        overwrite: (interface 1.3) True, or the names among "dq", "dk", "dv" whose buffers hold
            nothing yet: this call writes them whole (0 where it reaches nothing) instead of
            adding into them, without a fill pass on backends that write whole buffers.

    Returns:
        (dq, dk, dv): the buffers (fresh ones fp32, fp64 for fp64 inputs).
    """
    fn = "ffa_backward"
    q, k, v, qr, kr, tm, scale, cap, memo = _prepare(
        fn, q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, softcap
    )
    inp = FFAInputs(q, k, v, qr, kr, tm, scale, cap, deterministic, memo=memo)
    return _backward_into(fn, inp, backend, dout, out, lse, dq, dk, dv, delta, overwrite)


def _backward_into(fn, inp: FFAInputs, backend, dout, out, lse, dq, dk, dv, delta, overwrite, impl=None):
    """ffa_backward after its operands are checked (``inp``): the other tensors' checks and the run
    (``impl`` as in _forward_into)."""
    q, k, v = inp.q, inp.k, inp.v
    sq, hq, d = q.shape
    for name, t, shape in (("dout", dout, q.shape), ("out", out, q.shape)):
        if not isinstance(t, torch.Tensor) or list(t.shape) != list(shape):
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise FFAInputError(f"{fn}(): {name} must be a tensor of shape {list(shape)}, got {got}.")
    _check_buffer(fn, "lse", lse, (sq, hq), q.device, (torch.float32, torch.float64))
    if lse is None:
        raise FFAInputError(f"{fn}(): lse is required (the final forward lse).")
    bufs = {"dq": dq, "dk": dk, "dv": dv}
    like = {"dq": q, "dk": k, "dv": v}
    for name, buf in bufs.items():
        _check_buffer(fn, name, buf, like[name].shape, q.device, _value_dtypes(q))
    _check_buffer(fn, "delta", delta, (sq, hq), q.device, (torch.float32, torch.float64))
    written = _overwrite_names(fn, overwrite, tuple(bufs))
    adt = acc_dtype(q.dtype)
    impl = impl or select_backend(inp, backend)
    if delta is None and impl.USES_DELTA:
        delta = rowsum_out_dout(out, dout)
    none_given = all(b is None for b in bufs.values())
    if none_given or (not written and all(b.dtype in _stat_dtypes(q) for b in bufs.values() if b is not None)):
        # fp32 accumulators added into; none given: fresh ones, written whole by a SUPPORTS_FRESH
        # backend (no zero-fill)
        fresh = none_given and impl.SUPPORTS_FRESH
        alloc = torch.empty if fresh else torch.zeros
        dq, dk, dv = (alloc(like[n].shape, dtype=adt, device=q.device) if b is None else b
                      for n, b in bufs.items())
        run_backward(impl, inp, dout, out, lse, delta, dq, dk, dv, fresh=fresh)
        return dq, dk, dv
    # Some buffers are written whole or kept in q's dtype: a backend that writes some buffers and
    # adds into others (ACCUMULATES_NAMED) gets them all as they are; a writing backend
    # (SUPPORTS_FRESH) gets those to write and temporaries in q's dtype for the rest, which are then
    # added; the others accumulate into zeroed fp32 buffers that are then copied or added.
    written = written | {n for n, b in bufs.items() if b is None}  # fresh ones, written whole
    for name in bufs:
        if bufs[name] is None:
            bufs[name] = torch.empty(like[name].shape, dtype=adt, device=q.device)
    fresh = impl.SUPPORTS_FRESH
    if fresh and impl.ACCUMULATES_NAMED:
        run_backward(impl, inp, dout, out, lse, delta, bufs["dq"], bufs["dk"], bufs["dv"], fresh=True,
                     accumulate=frozenset(bufs) - written)
        return bufs["dq"], bufs["dk"], bufs["dv"]
    targets, after = {}, []
    for name, buf in bufs.items():
        writes = name in written
        if fresh and writes:
            targets[name] = buf
        elif fresh:
            targets[name] = torch.empty(buf.shape, dtype=q.dtype, device=q.device)
            after.append((buf.add_, targets[name]))
        elif writes and buf.dtype == adt:
            targets[name] = buf.zero_()
        else:
            targets[name] = torch.zeros(buf.shape, dtype=adt, device=q.device)
            after.append((buf.copy_ if writes else buf.add_, targets[name]))
    run_backward(impl, inp, dout, out, lse, delta, targets["dq"], targets["dk"], targets["dv"], fresh=fresh)
    for op, t in after:
        op(t)
    return bufs["dq"], bufs["dk"], bufs["dv"]
