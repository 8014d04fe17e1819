"""FA4 backend: arbitrary slice masks through Flash-Attention 4 (SM90+).

The slices become per-row key intervals (``block_sparse``, built once per mask and cached). Masks
FA4 expresses itself (full, causal, sliding window, varlen documents: ``native``) run on FA4's own
masking; any other runs on block lists plus an interval mask function for partial tiles (``kernel``),
unless it is a sum of native masks (``decompose``: one call per part; parts by slice type by default
in the backward only, row layers of a staircase in both directions).
A single call (``fresh``) lets FA4 write the caller's buffers directly; the distributed runtime's
stages are lse-merged into its accumulators like every backend's. Opt-in only (``backend="fa4"``
or ``MAGI_ATTENTION_FA4_BACKEND=1``), never picked by auto selection.

Refused with NotImplementedError naming the feature: max_logits and deterministic mode. Head dims
other than 64 / 96 / 128 are refused by the capability table (the block-sparse tile rules differ
above 128). The attention sink is applied outside the kernel by ``flex_flash_attn_func`` and so
works with this backend too.
"""

from __future__ import annotations

import functools

import torch

from magi_ffa import range_cache
from magi_ffa.backends.base import Backend, FFAInputs
from magi_ffa.backends.fa4 import decompose
from magi_ffa.backends.fa4.block_sparse import SliceBlockMask, build_slice_block_mask
from magi_ffa.lru import LRUCache
from magi_ffa.merge import correct_attn_out_lse

__all__ = ["FA4Backend", "clear_mask_cache"]

_masks = LRUCache(32)  # (ranges bytes, Sq, Sk, block, device) -> SliceBlockMask


def clear_mask_cache() -> None:
    """Forget the translated masks (and the FA4 launches recorded for them)."""
    from magi_ffa.backends.fa4 import replay

    _masks.clear()
    replay.clear()


@functools.cache
def _arch(device: torch.device) -> int:
    """10 * major + minor compute capability (cached: it is asked on every call)."""
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def slice_block_mask(inp: FFAInputs) -> SliceBlockMask:
    """The translated mask of `inp`'s slices at the block size of `inp`'s GPU, cached by content
    (one host copy of the ranges)."""
    from magi_ffa.backends.fa4.kernel import sparse_block_size

    block_size = sparse_block_size(_arch(inp.q.device))
    return inp.memoised(("fa4 mask", block_size), lambda: _translated(inp, block_size))  # once per signature


def _translated(inp: FFAInputs, block_size: tuple[int, int]) -> SliceBlockMask:
    hr = range_cache.host_ranges(inp.q_ranges, inp.k_ranges, inp.attn_type_map)
    return _mask_of(hr, inp.q.shape[0], inp.k.shape[0], block_size, inp.q.device)


def _mask_of(hr: range_cache.HostRanges, sq: int, sk: int, block_size: tuple[int, int],
             device: torch.device) -> SliceBlockMask:
    """The translation of `hr` at these lengths, block size and device, cached by content: a call and
    ``FA4Backend.prepare_mask`` made ahead of it find the same entry."""
    return _masks.get_or_build(
        (hr.key, sq, sk, block_size, str(device)),
        lambda: build_slice_block_mask(hr.q.numpy(), hr.k.numpy(), hr.types.numpy(), sq, sk, block_size,
                                       device=device))


def _rows(t: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows [start, end) of t: t itself when that is all of it (the one-call path makes no views)."""
    return t if start == 0 and end == t.shape[0] else t[start:end]


def _call_parts(inp: FFAInputs, direction: str) -> tuple[decompose.MaskPart, ...]:
    """The FA4 calls that run `inp`'s mask in `direction` ("fwd" / "bwd"): its native parts where
    the mask is their sum and decomposition is on for that direction, else the whole mask as one."""
    mask = slice_block_mask(inp)
    if mask.parts is not None and decompose.enabled(direction, mask.parts_kind):
        return mask.parts
    return (decompose.MaskPart((0, inp.q.shape[0]), (0, inp.k.shape[0]), mask),)


class FA4Backend(Backend):
    NAME = "fa4"
    DEVICES = frozenset({"cuda"})
    DTYPES = frozenset({torch.float16, torch.bfloat16})
    HEAD_DIMS = frozenset({64, 96, 128})
    IS_DETERMINISTIC = False
    SUPPORTS_FRESH = True
    USES_DELTA = False  # FA4's backward preprocess computes rowsum(out * dout) itself
    MERGES_INPUT_DTYPE = True  # its partial result is lse-merged by one pass, whatever out's dtype
    ACCUMULATES_NAMED = True  # FA4 writes the other gradients; the named ones get one add pass

    def require(self) -> None:
        from magi_ffa.backends.fa4.kernel import import_fa4

        import_fa4()

    def not_supported_reasons(self, inp: FFAInputs) -> list[str]:
        reasons = super().not_supported_reasons(inp)
        if inp.q.device.type == "cuda" and _arch(inp.q.device) < 90:
            reasons.append(f"compute capability {_arch(inp.q.device)} (FA4 needs sm90 or newer)")
        return reasons

    def prepare_mask(self, q_ranges, k_ranges, attn_type_map, seqlen_q: int, seqlen_k: int, device) -> bool:
        """The mask's translation (native form, or block lists and row intervals, of the mask or of its
        parts) made now and cached, as the first call at these lengths on ``device`` would make it;
        uploads on the current stream.
        Nothing on a device FA4 does not run on."""
        from magi_ffa.backends.fa4.kernel import sparse_block_size

        device = torch.device(device)
        if device.type not in self.DEVICES:
            return False
        if device.type == "cuda" and device.index is None:  # the key names the device as a call's q does
            device = torch.device("cuda", torch.cuda.current_device())
        if _arch(device) < 90:
            return False
        hr = range_cache.host_ranges(q_ranges, k_ranges, attn_type_map)
        mask = _mask_of(hr, int(seqlen_q), int(seqlen_k), sparse_block_size(_arch(device)), device)
        for m in (mask,) if mask.parts is None else (part.mask for part in mask.parts):
            m.device_tensors  # noqa: B018 - the block lists and intervals a call hands FA4, built lazily
        return True

    @staticmethod
    def _refuse(inp: FFAInputs, max_logits=None) -> None:
        if inp.deterministic:
            raise NotImplementedError("fa4 backend: deterministic mode is not supported by FA4's "
                                      "block-sparse kernels; use the triton backend.")
        if max_logits is not None:
            raise NotImplementedError("fa4 backend: max_logits (return_max_logits=True) is not "
                                      "supported; use the triton backend.")

    def forward(self, inp, out, lse, max_logits, *, fresh=False):
        from magi_ffa.backends.fa4.kernel import fa4_forward

        self._refuse(inp, max_logits)
        if inp.num_slices == 0:
            if fresh:
                out.zero_()
                lse.fill_(float("-inf"))
            return
        parts = _call_parts(inp, "fwd")
        if fresh and parts[0].q != (0, inp.q.shape[0]):  # rows the first call leaves start empty
            out.zero_()
            lse.fill_(float("-inf"))
            fresh = False
        for part in parts:  # disjoint parts: each call's result is lse-merged into the others'
            (a, b), (c, d) = part.q, part.k
            out_p, lse_p = _rows(out, a, b), _rows(lse, a, b)
            direct = fresh and out.dtype == inp.q.dtype  # FA4 writes the caller's buffer itself
            o, l_ = fa4_forward(_rows(inp.q, a, b), _rows(inp.k, c, d), _rows(inp.v, c, d), part.mask,
                                inp.softmax_scale, inp.softcap, out=out_p if direct else None)
            self._store(out_p if direct else o, l_, part.mask, out_p, lse_p, fresh, direct)
            fresh = False

    @staticmethod
    def _store(o, l_, mask, out, lse, fresh: bool, direct: bool) -> None:
        """Write (fresh) or lse-merge one call's (o, l_) into (out, lse); FA4 leaves the rows that see
        nothing undefined, so they count as out 0, lse -inf."""
        from magi_ffa.backends.triton.merge import merge_into_, zero_rows_

        empty_rows = mask.empty_rows
        if not fresh and merge_into_(out, lse, o, l_, mask.seeing_rows):  # one pass over the rows that see keys
            return
        if empty_rows is not None:  # out 0, lse -inf, whatever the kernel left there
            zero_rows_(o, empty_rows)
            l_.masked_fill_(empty_rows[:, None], float("-inf"))
        if fresh:
            if not direct:
                out.copy_(o)
            lse.copy_(l_)
        else:
            correct_attn_out_lse(out, lse, o, l_, inplace=True)

    @staticmethod
    def _one_call_backward(inp, dout, out, lse, dq, dk, dv, part) -> bool:
        """The common backward, one FA4 call writing the caller's gradients whole (one part covering
        every row and key, buffers in the input dtype), without the general loop's per-part
        bookkeeping: host time on every call. False (nothing done) for any other case."""
        if part.q != (0, inp.q.shape[0]) or part.k != (0, inp.k.shape[0]):
            return False
        dt = inp.q.dtype
        if dq.dtype != dt or dk.dtype != dt or dv.dtype != dt:
            return False
        from magi_ffa.backends.fa4.kernel import fa4_backward

        fa4_backward(inp.q, inp.k, inp.v, out, dout, lse, part.mask, inp.softmax_scale, inp.softcap,
                     grads=(dq, dk, dv))
        unwritten = part.mask.skipped_rows("bwd")  # dq rows FA4 did not compute: they get nothing
        if unwritten is not None:
            from magi_ffa.backends.triton.merge import zero_rows_

            zero_rows_(dq, unwritten)
        return True

    def backward(self, inp, dout, out, lse, delta, dq, dk, dv, *, fresh=False, accumulate=frozenset()):
        self._refuse(inp)
        parts = _call_parts(inp, "bwd") if inp.num_slices else ()
        if fresh and not accumulate and len(parts) == 1 and self._one_call_backward(inp, dout, out, lse, dq, dk, dv,
                                                                                     parts[0]):
            return
        from magi_ffa.backends.fa4.kernel import fa4_backward
        from magi_ffa.backends.triton.merge import add_into_, zero_rows_

        writes = [fresh and n not in accumulate for n in ("dq", "dk", "dv")]  # written whole, or added into
        if any(writes) and (not parts or parts[0].covers != (inp.q.shape[0], inp.k.shape[0])):
            for g, w in zip((dq, dk, dv), writes):  # cells no call writes are 0
                if w:
                    g.zero_()
            writes = [False] * 3
        for part in parts:  # gradients of disjoint parts add up
            (a, b), (c, d) = part.q, part.k
            bufs = (_rows(dq, a, b), _rows(dk, c, d), _rows(dv, c, d))
            direct = [w and t.dtype == inp.q.dtype for w, t in zip(writes, bufs)]  # FA4 writes them itself
            grads = fa4_backward(_rows(inp.q, a, b), _rows(inp.k, c, d), _rows(inp.v, c, d), _rows(out, a, b),
                                 _rows(dout, a, b), _rows(lse, a, b), part.mask, inp.softmax_scale, inp.softcap,
                                 grads=[t if x else None for t, x in zip(bufs, direct)])
            unwritten = part.mask.skipped_rows("bwd")  # dq rows FA4 did not compute: they get nothing
            for acc, g, w, x, skip in zip(bufs, grads, writes, direct, (unwritten, None, None)):
                if not x:
                    acc.copy_(g) if w else add_into_(acc, g, skip)
            if writes[0] and unwritten is not None:
                zero_rows_(bufs[0], unwritten)
            writes = [False] * 3
