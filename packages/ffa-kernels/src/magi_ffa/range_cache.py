"""Host copies of the slice ranges, made at most once per distinct range tensors (issue #7).

Why: the value checks (``checks.check_range_values``) and the Triton work lists
(``backends/triton/plan.py``) both need the ranges on the host. Every device->host read is a
host sync: the CPU waits for the GPU, and the rest of the call's host work (dispatch,
allocations, launches) then runs while the GPU idles. Callers pass the same range tensors again
and again (every training step; the forward and the backward of one call), so one copy is made
per distinct ranges and shared by both users.

Key: the three tensor objects (q_ranges, k_ranges, attn_type_map), unchanged: the same objects
(weak references), the same autograd version counter, data pointer, shape, dtype and device. A
hit touches no tensor data. A miss makes one device->host copy of all three (``_read_to_host``,
the only device read of this module) and stores it with its bytes (the content key of the work
lists) and a summary for the value checks.

Writes that bypass the version counter (``.data``, raw kernels, NCCL into the tensor) are not
seen: set ``MAGI_FFA_WORKLIST_IDENTITY_CACHE=0`` to copy on every call when ranges are mutated so.
Inference tensors (no version counter) are copied on every call.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

__all__ = ["HostRanges", "clear", "host_ranges", "identity", "identity_enabled", "on_clear", "remember",
           "still_identical"]

_MAX_ENTRIES = 64
_lock = threading.Lock()
_by_identity: OrderedDict = OrderedDict()  # (id, id, id) -> (identity record, HostRanges)


@dataclass(frozen=True, eq=False)
class HostRanges:
    """The host copy of one (q_ranges, k_ranges, attn_type_map) triple.

    q, k: int32 [N, 2] and types: int32 [N] on the CPU (never aliasing a caller's tensor);
    key: their bytes (hashable content key); sound: every range has 0 <= start <= end and every
    code is in 0..3; q_hi / k_hi: the largest q / k range end (0 for N = 0).
    """

    q: torch.Tensor
    k: torch.Tensor
    types: torch.Tensor
    key: bytes
    sound: bool
    q_hi: int
    k_hi: int

    @property
    def num_slices(self) -> int:
        return int(self.q.shape[0])

    def in_bounds(self, sq: int, sk: int) -> bool:
        """Every value check passes for q with `sq` tokens and k with `sk` (no per-slice walk)."""
        return self.sound and self.q_hi <= sq and self.k_hi <= sk


def identity_enabled() -> bool:
    return os.environ.get("MAGI_FFA_WORKLIST_IDENTITY_CACHE", "1") != "0"


_dependents: list = []  # clear() of caches keyed by the same identities (api's call memo)


def on_clear(fn) -> None:
    """Have `fn()` run by every clear(): a cache that trusts range tensors by identity as this one
    does must forget them at the same time."""
    _dependents.append(fn)


def clear() -> None:
    """Forget every stored copy (tests; or after mutating range tensors behind autograd)."""
    with _lock:
        _by_identity.clear()
    for fn in _dependents:
        fn()


def _read_to_host(flat: torch.Tensor) -> torch.Tensor:
    """The one device->host read (a host sync on an accelerator). Tests count calls here."""
    return flat.cpu()


def _make(q: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> HostRanges:
    """HostRanges from three CPU int32 tensors the caller will not mutate. The checks run on numpy
    views of them: a new mask makes new ranges every step, and torch's per-operator cost made these
    few reductions ~3x slower."""
    q = q.reshape(-1, 2)
    k = k.reshape(-1, 2)
    t = t.reshape(-1)
    qn, kn, tn = (x.contiguous().numpy() for x in (q, k, t))
    key = qn.tobytes() + kn.tobytes() + tn.tobytes()
    if qn.shape[0]:
        sound = bool(
            (qn[:, 0] >= 0).all()
            and (qn[:, 0] <= qn[:, 1]).all()
            and (kn[:, 0] >= 0).all()
            and (kn[:, 0] <= kn[:, 1]).all()
            and (tn >= 0).all()
            and (tn <= 3).all()
        )
        q_hi, k_hi = int(qn[:, 1].max()), int(kn[:, 1].max())
    else:
        sound, q_hi, k_hi = True, 0, 0
    return HostRanges(q=q, k=k, types=t, key=key, sound=sound, q_hi=q_hi, k_hi=k_hi)


def _stamps(srcs) -> tuple | None:
    """Per tensor (version, data_ptr, shape, dtype, device), None for an absent (None) entry; None
    when identity can't be trusted (inference tensors have no version counter)."""
    stamps = []
    for t in srcs:  # a loop, not generators: this runs on every call of a memoised signature
        if t is None:
            stamps.append(None)
        elif t.is_inference():
            return None
        else:
            stamps.append((t._version, t.data_ptr(), tuple(t.shape), t.dtype, t.device))
    return tuple(stamps)


def identity(srcs) -> tuple | None:
    """A record that `srcs` (tensors, or None) are these objects with these contents, for
    :func:`still_identical`; None when they can't be recognised so (identity caching off, inference
    tensors, objects without weak references). The rule of this module, for every cache that keys
    data derived from range tensors by the tensors themselves."""
    if not identity_enabled():
        return None
    stamps = _stamps(srcs)
    if stamps is None:
        return None
    try:
        refs = tuple(None if t is None else weakref.ref(t) for t in srcs)
    except TypeError:
        return None
    return refs, stamps


def still_identical(record: tuple, srcs) -> bool:
    """Whether `srcs` are the very objects `record` was made of, unchanged since (touches no data)."""
    refs, stamps = record
    if not identity_enabled():
        return False
    for r, t in zip(refs, srcs):
        if (t is not None) if r is None else (r() is not t):
            return False
    return _stamps(srcs) == stamps


def _store(key, record, hr: HostRanges) -> None:
    with _lock:
        _by_identity[key] = (record, hr)
        _by_identity.move_to_end(key)
        while len(_by_identity) > _MAX_ENTRIES:
            _by_identity.popitem(last=False)


def host_ranges(q_ranges: torch.Tensor, k_ranges: torch.Tensor, attn_type_map: torch.Tensor) -> HostRanges:
    """The host copy of int [N, 2], [N, 2], [N] tensors: stored (no device access) or made now."""
    srcs = (q_ranges, k_ranges, attn_type_map)
    key = tuple(id(t) for t in srcs)
    with _lock:
        ent = _by_identity.get(key)
        if ent is not None and still_identical(ent[0], srcs):
            _by_identity.move_to_end(key)
            return ent[1]
    record = identity(srcs)  # taken before the read: what the copy is a copy of
    n = q_ranges.shape[0]
    flat = torch.cat([x.reshape(-1).to(torch.int32) for x in srcs])
    host = _read_to_host(flat)  # torch.cat made a new tensor: the copy never aliases a source
    hr = _make(host[: 2 * n], host[2 * n : 4 * n], host[4 * n :])
    if record is not None:
        _store(key, record, hr)
    return hr


def remember(
    q_ranges: torch.Tensor,
    k_ranges: torch.Tensor,
    attn_type_map: torch.Tensor,
    host: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """Store `host` (CPU int32 copies the caller built, e.g. from nested lists) as the copy of
    the three device tensors, so that no device read is needed for them."""
    srcs = (q_ranges, k_ranges, attn_type_map)
    record = identity(srcs)
    if record is None:
        return
    _store(tuple(id(t) for t in srcs), record, _make(*(h.to(torch.int32) for h in host)))
