"""FA4 backend: arbitrary slice masks through Flash-Attention 4 (SM90+).

The slices become per-row key intervals (``block_sparse``, built once per mask and cached). Masks
FA4 expresses itself (full, causal, sliding window, varlen documents: ``native``) run on FA4's own
masking; any other runs on block lists plus an interval mask function for partial tiles (``kernel``),
unless it is a sum of native masks (``decompose``: one call per part, by default in the backward).
A single call (``fresh``) lets FA4 write the caller's buffers directly; the distributed runtime's
stages are lse-merged into its accumulators like every backend's. Opt-in only (``backend="fa4"``
or ``MAGI_ATTENTION_FA4_BACKEND=1``), never picked by auto selection.

Refused with NotImplementedError naming the feature: max_logits and deterministic mode. Head dims
other than 64 / 96 / 128 are refused by the capability table (the block-sparse tile rules differ
above 128). The attention sink is applied outside the kernel by ``flex_flash_attn_func`` and so
works with this backend too.
"""

from __future__ import annotations

import dataclasses
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
    if inp.memo is not None:  # the calls of one signature share the lookup
        found = inp.memo.get(("fa4 mask", block_size))
        if found is None:
            found = inp.memo[("fa4 mask", block_size)] = slice_block_mask(dataclasses.replace(inp, memo=None))
        return found
    hr = range_cache.host_ranges(inp.q_ranges, inp.k_ranges, inp.attn_type_map)
    sq, sk = inp.q.shape[0], inp.k.shape[0]
    return _masks.get_or_build(
        (hr.key, sq, sk, block_size, str(inp.q.device)),
        lambda: build_slice_block_mask(hr.q.numpy(), hr.k.numpy(), hr.types.numpy(), sq, sk, block_size,
                                       device=inp.q.device))


class FA4Backend(Backend):
    NAME = "fa4"
    DEVICES = frozenset({"cuda"})
    DTYPES = frozenset({torch.float16, torch.bfloat16})
    HEAD_DIMS = frozenset({64, 96, 128})
    IS_DETERMINISTIC = False
    SUPPORTS_FRESH = True
    USES_DELTA = False  # FA4's backward preprocess computes rowsum(out * dout) itself
    MERGES_INPUT_DTYPE = True  # its partial result is lse-merged by one pass, whatever out's dtype

    def require(self) -> None:
        from magi_ffa.backends.fa4.kernel import import_fa4

        import_fa4()

    def not_supported_reasons(self, inp: FFAInputs) -> list[str]:
        reasons = super().not_supported_reasons(inp)
        if inp.q.device.type == "cuda" and _arch(inp.q.device) < 90:
            reasons.append(f"compute capability {_arch(inp.q.device)} (FA4 needs sm90 or newer)")
        return reasons

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
        mask = slice_block_mask(inp)
        if mask.parts is not None and decompose.enabled("fwd"):
            return self._forward_parts(inp, mask.parts, out, lse, fresh)
        direct = fresh and out.dtype == inp.q.dtype  # FA4 writes the caller's buffer itself
        o, l_ = fa4_forward(inp.q, inp.k, inp.v, mask, inp.softmax_scale, inp.softcap,
                            out=out if direct else None)
        self._store(out if direct else o, l_, mask.empty_rows, out, lse, fresh, direct)

    @staticmethod
    def _store(o, l_, empty_rows, out, lse, fresh: bool, direct: bool) -> None:
        """Write (fresh) or lse-merge one call's (o, l_) into (out, lse); FA4 leaves the rows that see
        nothing undefined, so they count as out 0, lse -inf."""
        from magi_ffa.backends.triton.merge import merge_into_

        if not fresh and merge_into_(out, lse, o, l_, empty_rows):  # one pass, empty rows skipped
            return
        if empty_rows is not None:  # out 0, lse -inf, whatever the kernel left there
            o.masked_fill_(empty_rows[:, None, None], 0.0)
            l_.masked_fill_(empty_rows[:, None], float("-inf"))
        if fresh:
            if not direct:
                out.copy_(o)
            lse.copy_(l_)
        else:
            correct_attn_out_lse(out, lse, o, l_, inplace=True)

    def _forward_parts(self, inp, parts, out, lse, fresh: bool) -> None:
        """A decomposed mask (decompose.py): each native part on row/key views, lse-merged. The
        first (largest) part is stored fresh when it covers every row; otherwise out starts empty."""
        from magi_ffa.backends.fa4.kernel import fa4_forward

        sq = inp.q.shape[0]
        if fresh and parts[0].q != (0, sq):
            out.zero_()
            lse.fill_(float("-inf"))
            fresh = False
        for part in parts:
            (a, b), (c, d) = part.q, part.k
            direct = fresh and out.dtype == inp.q.dtype
            o, l_ = fa4_forward(inp.q[a:b], inp.k[c:d], inp.v[c:d], part.mask, inp.softmax_scale, inp.softcap,
                                out=out[a:b] if direct else None)
            self._store(o, l_, part.mask.empty_rows, out[a:b], lse[a:b], fresh, direct)
            fresh = False

    def backward(self, inp, dout, out, lse, delta, dq, dk, dv, *, fresh=False):
        from magi_ffa.backends.fa4.kernel import fa4_backward

        self._refuse(inp)
        if inp.num_slices == 0:
            if fresh:
                for g in (dq, dk, dv):
                    g.zero_()
            return
        mask = slice_block_mask(inp)
        if mask.parts is not None and decompose.enabled("bwd"):
            parts = mask.parts
        else:  # the whole mask as one part
            parts = (decompose.MaskPart((0, inp.q.shape[0]), (0, inp.k.shape[0]), mask),)
        if fresh and parts[0].covers != (inp.q.shape[0], inp.k.shape[0]):
            for g in (dq, dk, dv):
                g.zero_()
            fresh = False
        for part in parts:  # gradients of disjoint parts add up
            (a, b), (c, d) = part.q, part.k
            bufs = (dq[a:b], dk[c:d], dv[c:d])
            direct = fresh and all(t.dtype == inp.q.dtype for t in bufs)  # FA4 writes them itself
            grads = fa4_backward(inp.q[a:b], inp.k[c:d], inp.v[c:d], out[a:b], dout[a:b], lse[a:b], part.mask,
                                 inp.softmax_scale, inp.softcap, grads=bufs if direct else None)
            if not direct:
                for acc, g in zip(bufs, grads):
                    acc.copy_(g) if fresh else acc.add_(g)
            fresh = False
