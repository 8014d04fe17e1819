"""The contract every FFA backend implements (xformers-style capability tables).

A backend never allocates the result buffers: the caller hands it fp32 accumulators and the
backend merges (forward) or adds (backward) into them. This one convention serves both the
single-call API (fresh buffers) and the distributed runtime (buffers carried across stages).

``fresh=True`` says the call is the buffers' only contributor. A backend with
``SUPPORTS_FRESH`` then ignores their contents and writes every element (so the caller may pass
``torch.empty`` buffers, and out / dq / dk / dv in the input dtype): no zero-fill, no read-merge
and no dtype conversion pass (issue #7). Other backends ignore the flag; their callers pass
initialised fp32 buffers (out 0, lse -inf, gradients 0) as for accumulation.

Shape legend: Sq / Sk total query / key tokens, hq / hk query / kv heads, d head dim, N slices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class FFAInputs:
    """One call's operands, already validated by the public entry point.

    q: [Sq, hq, d]; k, v: [Sk, hk, d] (same dtype and device as q, last dim contiguous).
    q_ranges, k_ranges: int32 [N, 2] on q's device; attn_type_map: int32 [N] with codes 0..3.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_ranges: torch.Tensor
    k_ranges: torch.Tensor
    attn_type_map: torch.Tensor
    softmax_scale: float
    softcap: float = 0.0
    deterministic: bool = False
    # Host-derived data (the backend chosen, a translated mask) shared by every call of one
    # signature: the same unchanged range tensors and q/k/v shapes, dtypes and device (api._prepare
    # keeps one dict per signature). None: derive everything again.
    memo: dict | None = field(default=None, compare=False, repr=False)

    @property
    def num_slices(self) -> int:
        return int(self.q_ranges.shape[0])

    def memoised(self, key, build: Callable[[], Any]) -> Any:
        """``build()``, made once per call signature: kept in ``memo`` under ``key`` when the call
        has a memo, made every time otherwise."""
        if self.memo is None:
            return build()
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = build()
        return found

    def describe(self) -> str:
        """A one-line summary used in refusal messages."""
        q, k = self.q, self.k
        return (
            f"q {list(q.shape)} {str(q.dtype).removeprefix('torch.')} {q.device}, "
            f"k/v {list(k.shape)}, {self.num_slices} slices"
        )


class Backend:
    """Base class: a capability table plus forward/backward that accumulate in place."""

    NAME: str = "base"
    DEVICES: frozenset[str] = frozenset()
    DTYPES: frozenset[torch.dtype] = frozenset()
    HEAD_DIMS: frozenset[int] | None = None  # None: any head dim
    IS_DETERMINISTIC: bool = True
    SUPPORTS_FRESH: bool = False  # honours fresh=True (see the module docstring)
    USES_DELTA: bool = True  # backward reads the caller's delta; False: pass None (it derives its own)
    # forward(fresh=False) also merges into an out in q's dtype (fp32 arithmetic, one rounding);
    # False: ffa_forward hands it fp32 temporaries and merges them itself
    MERGES_INPUT_DTYPE: bool = False
    # backward(fresh=True, accumulate=names) writes the other gradients whole and adds into the named
    # ones (fp32 or the input dtype): the caller needs no temporary and no add pass for them
    ACCUMULATES_NAMED: bool = False

    def is_available(self) -> bool:
        """Whether the backend's own dependencies can be imported on this machine."""
        try:
            self.require()
        except ImportError:
            return False
        return True

    def require(self) -> None:
        """Raise the ImportError (with an install hint) of a missing optional dependency."""

    def prepare_mask(self, q_ranges, k_ranges, attn_type_map, seqlen_q: int, seqlen_k: int, device) -> bool:
        """Build now what a first call on this mask would build from the ranges alone (``FFACall.prepare``);
        whether anything was built. Backends that keep nothing per mask have nothing to do."""
        return False

    def not_supported_reasons(self, inp: FFAInputs) -> list[str]:
        """Why this backend cannot run `inp` (empty list: it can)."""
        reasons: list[str] = []
        if not self.is_available():
            reasons.append(f"backend {self.NAME!r} is not available on this machine")
        device = inp.q.device.type
        if device not in self.DEVICES:
            reasons.append(f"device={device} (supported: {', '.join(sorted(self.DEVICES))})")
        if inp.q.dtype not in self.DTYPES:
            names = ", ".join(sorted(str(t).removeprefix("torch.") for t in self.DTYPES))
            reasons.append(f"dtype={str(inp.q.dtype).removeprefix('torch.')} (supported: {names})")
        head_dim = inp.q.shape[-1]
        if self.HEAD_DIMS is not None and head_dim not in self.HEAD_DIMS:
            dims = ", ".join(str(d) for d in sorted(self.HEAD_DIMS))
            reasons.append(f"head_dim={head_dim} (supported: {dims})")
        return reasons

    def supports(self, inp: FFAInputs) -> bool:
        return not self.not_supported_reasons(inp)

    def forward(
        self,
        inp: FFAInputs,
        out: torch.Tensor,
        lse: torch.Tensor,
        max_logits: torch.Tensor | None,
        *,
        fresh: bool = False,
    ) -> None:
        """Merge this call's attention into `out` fp32 [Sq,hq,d] and `lse` fp32 [Sq,hq] in place.

        Rows the call does not reach stay untouched. `max_logits` fp32 [hq], when given, is
        maxed in place with the scaled logits of every visible cell (softcap applied).
        fresh (SUPPORTS_FRESH backends): write every row instead, unreached rows as out 0 and
        lse -inf, whatever the buffers held; `out` may then have q's dtype.
        """
        raise NotImplementedError

    def backward(
        self,
        inp: FFAInputs,
        dout: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        delta: torch.Tensor,
        dq: torch.Tensor,
        dk: torch.Tensor,
        dv: torch.Tensor,
        *,
        fresh: bool = False,
        accumulate: frozenset[str] = frozenset(),
    ) -> None:
        """Add this call's gradients into dq [Sq,hq,d], dk, dv [Sk,hk,d] (fp32) in place.

        `out`, `lse` are the final merged forward results and `delta = rowsum(out * dout)` fp32
        [Sq,hq] (None for a backend with USES_DELTA False); rows with lse = -inf contribute nothing.
        fresh (SUPPORTS_FRESH backends): write every element instead (0 where nothing reaches),
        whatever the buffers held; dq / dk / dv may then have the input dtype. accumulate
        (ACCUMULATES_NAMED backends, with fresh): the names among "dq", "dk", "dv" still added into.
        """
        raise NotImplementedError
