"""Issuing a repeated FA4 call without FA4's per-call Python: record the launches once, replay them.

FA4's entry points (``_flash_attn_fwd`` / ``_flash_attn_bwd``) spend 0.1-0.2 ms of host time per
call deciding, from shapes and flags, which compiled kernels to launch with which arguments; the
launches themselves are tvm-ffi calls of a few µs. At 8k tokens that decision time is as long as the
kernel. For a call whose decisions cannot change (the same mask object, shapes, strides, dtypes,
alignment and scalars: the caller's key) the decisions are recorded once and replayed:

* **record** (the ``record_at()``-th call of a key, default the 8th; the first one compiles): the
  call runs under a
  TorchFunctionMode that sees every torch op it makes, with FA4's compile caches wrapped so that
  every compiled-kernel launch is seen with its arguments. Each tensor argument is traced to where
  it comes from: a view of one of the call's inputs, a buffer FA4 allocated during the call
  (``torch.empty`` / ``zeros``: made again on every replay, zeroed where FA4 zeroed it), or a view
  of one of the mask's tensors (kept). Anything else makes the key not replayable: a torch op
  that computes or writes data, a read of tensor data on the host, a tensor of unknown origin, an
  argument of a type not known to be a plain value.
* **check**: the tape runs once on the same inputs, into NaN-filled stand-ins for the buffers the
  call writes, and must reproduce the recorded results (a launch the recording missed would show
  here); if not, the key is not replayable. Only the elements the call computes are compared: the
  caller names them (``computed``) where FA4 leaves some unwritten, such as the rows a
  ``seqused_q`` call skips, whose contents are whatever the buffers held.
  The check runs a call's kernels a second time and reads the results back (host syncs), so it is
  made once per *structure*: the sequence of compiled kernels and where each argument comes from,
  values and mask tensors aside. A tape of a structure already checked is trusted. That is what
  varlen training needs, whose documents are packed anew every step: each step's masks are new
  keys, and their kernels' structures repeat from step to step.
* **replay**: allocate, zero, launch the recorded kernels with the new call's tensors.

Why not record on the second call: a recording traces every torch op of FA4's Python (hundreds per
call), which costs far more host time than one call (a 32k varlen step with a new mask each step,
2 x H200, cProfile: ~17 ms per recording, check included, against 0.1-0.2 ms saved per replay). A
key pays back only after tens of replays, and the keys of a mask that lives one step (varlen
training packs its documents anew every step) are called once per layer and die. Waiting for the
8th call leaves those alone (up to 7 layers) and costs a long-lived key nothing that matters.
``MAGI_FFA_FA4_RECORD_AT`` sets the call (2 or more).

Keys that are not replayable keep FA4's own path, so the worst case is today's speed. Off with
``MAGI_FFA_FA4_LAUNCH_REPLAY=0``. Not used while a CUDA graph is being captured (the capture
records FA4's launches itself).
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch.overrides import TorchFunctionMode

from magi_ffa.env import int_from_env

__all__ = ["clear", "launch", "stats"]

ENV = "MAGI_FFA_FA4_LAUNCH_REPLAY"
RECORD_AT_ENV = "MAGI_FFA_FA4_RECORD_AT"
RECORD_AT = 8  # the call of a key that is recorded (default; see the module docstring)
MAX_TAPES = 64

_tapes: OrderedDict = OrderedDict()  # key -> _Tape | calls so far (int, not recorded yet) | why refused (str)
_lock = threading.Lock()
_active = threading.local()  # .recorder: the _Recorder of the call being recorded on this thread
_counts = {"recorded": 0, "replayed": 0, "refused": 0, "trusted": 0}  # trusted: recorded, check skipped
_checked: OrderedDict = OrderedDict()  # structures (_structure) whose tapes passed the check
_refusals: list[str] = []


def stats() -> dict:
    """Counts of recorded, replayed and refused calls, of recorded ones whose check was skipped (a
    structure checked before: ``trusted``), and the last refusal reasons (tests, benches)."""
    return {**_counts, "refusals": list(_refusals)}


def clear() -> None:
    with _lock:
        _tapes.clear()
        _checked.clear()
        _refusals.clear()
        for k in _counts:
            _counts[k] = 0


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def record_at() -> int:
    """The call of a key that is recorded (``MAGI_FFA_FA4_RECORD_AT``, default ``RECORD_AT``; at least 2:
    the first call compiles FA4's kernels, which a recording must not see)."""
    return int_from_env(RECORD_AT_ENV, RECORD_AT, 2, "the call to record, 2 or later")


# ---------------------------------------------------------------------------------------------
# What a recording may see
# ---------------------------------------------------------------------------------------------

_FACTORIES = {
    torch.empty: False, torch.empty_like: False, torch.empty_strided: False, torch.Tensor.new_empty: False,
    torch.zeros: True, torch.zeros_like: True, torch.Tensor.new_zeros: True,
}  # factory -> whether its buffer starts zeroed
# ops with a non-tensor result that read no tensor data
_METADATA = frozenset({
    "size", "stride", "dim", "ndimension", "data_ptr", "element_size", "numel", "nelement",
    "storage_offset", "is_contiguous", "__len__", "__get__", "get_device", "is_floating_point",
    "is_complex", "untyped_storage", "__hash__", "is_pinned",
})


# in-place operators (``t += x``): they write like ``add_`` but are named like dunders
_INPLACE_DUNDERS = frozenset({
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
    "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__",
})


class _NotReplayable(Exception):
    pass


def _tensors_in(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from _tensors_in(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors_in(y)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """[first, last] element offsets (in t's storage) that t addresses."""
    first = t.storage_offset()
    return first, first + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))


def _plain_value(x) -> bool:
    """Immutable values a launch may take as recorded: Python scalars and CuTe's numeric wrappers."""
    return x is None or isinstance(x, (bool, int, float, str)) or type(x).__module__.split(".")[0] == "cutlass"


class _Recorder(TorchFunctionMode):
    """Sees one FA4 call: its allocations, its launches and anything that would make it unreplayable."""

    def __init__(self, inputs: Sequence[torch.Tensor | None], constants: Sequence[torch.Tensor]):
        super().__init__()
        self.inputs = list(inputs)
        self.constants = list(constants)
        self.created: list[torch.Tensor] = []
        self.steps: list[tuple] = []
        self.failure: str | None = None
        self._in_launch = False

    def fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why

    # -- torch ops ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not self._in_launch:
            self._observe(func, args, kwargs, result)
        return result

    def _observe(self, func, args, kwargs, result) -> None:
        name = getattr(func, "__name__", None) or repr(func)  # repr only when needed: it is slow
        if func in _FACTORIES:
            if isinstance(result, torch.Tensor):
                self.steps.append(("alloc", len(self.created), tuple(result.shape), tuple(result.stride()),
                                   result.dtype, result.device, _FACTORIES[func]))
                self.created.append(result)
            else:
                self.fail(f"{name} returned {type(result).__name__}")
            return
        if name == "zero_" and args and isinstance(args[0], torch.Tensor):
            if not any(_same_storage(c, args[0]) for c in self.created):
                self.fail("zero_ on a tensor FA4 did not allocate")
                return
            try:
                self.steps.append(("zero", self._where(args[0])))
            except _NotReplayable as e:  # never raise into FA4's call: refuse the key instead
                self.fail(str(e))
            return
        writes = name.endswith("_") and not name.startswith("__")
        if writes or "out" in kwargs or name == "__setitem__" or name in _INPLACE_DUNDERS:
            self.fail(f"{name} writes tensor data")
            return
        outs = list(_tensors_in(result))
        if outs:
            sources = list(_tensors_in((args, kwargs)))
            if not all(any(_same_storage(o, s) for s in sources) for o in outs):
                self.fail(f"{name} computes a new tensor")
        elif name not in _METADATA:
            self.fail(f"{name} reads tensor data or is not known to be harmless")

    # -- compiled launches -------------------------------------------------------------------
    def launch(self, fn, *args):
        try:
            self.steps.append(("launch", fn, self._template(args)))
        except _NotReplayable as e:
            self.fail(str(e))
        self._in_launch = True
        try:
            return fn(*args)
        finally:
            self._in_launch = False

    # -- templates: where each argument comes from --------------------------------------------
    def _where(self, t: torch.Tensor) -> tuple:
        if t.numel() == 0:
            return ("const", t)
        if any(s < 0 for s in t.stride()):
            raise _NotReplayable("a tensor with a negative stride")
        lo, hi = _extent(t)
        for kind, bases in (("in", self.inputs), ("new", self.created), ("const", self.constants)):
            for i, base in enumerate(bases):
                if base is None or base.dtype != t.dtype or not _same_storage(base, t):
                    continue
                b_lo, b_hi = _extent(base)
                if not (b_lo <= lo and hi <= b_hi):
                    continue
                if kind == "const":
                    return ("const", t)
                same = lo == b_lo and t.shape == base.shape and t.stride() == base.stride()
                return (kind, i, same, tuple(t.shape), tuple(t.stride()), lo - b_lo)
        raise _NotReplayable(f"a {list(t.shape)} {t.dtype} tensor of unknown origin")

    def _template(self, x):
        if isinstance(x, torch.Tensor):
            return self._where(x)
        if isinstance(x, (tuple, list)):
            kind = type(x) if hasattr(x, "_fields") else (tuple if isinstance(x, tuple) else list)
            return ("seq", kind, tuple(self._template(y) for y in x))
        if _plain_value(x):
            return ("val", x)
        raise _NotReplayable(f"a launch argument of type {type(x).__name__}")


class _WatchedCache:
    """FA4's compile cache of one entry point, handing out launch-recording wrappers while a call on
    this thread is being recorded (otherwise the compiled function itself)."""

    def __init__(self, inner):
        self._inner = inner

    def __getitem__(self, key):
        fn = self._inner[key]
        rec = getattr(_active, "recorder", None)
        return fn if rec is None else functools.partial(rec.launch, fn)

    def __setitem__(self, key, fn):
        self._inner[key] = fn

    def __contains__(self, key):
        return key in self._inner

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _watch_compile_caches(module) -> None:
    """Wrap the compile cache of every entry point of FA4's interface module (once)."""
    for obj in list(vars(module).values()):
        cache = getattr(obj, "compile_cache", None)
        if cache is not None and not isinstance(cache, _WatchedCache):
            obj.compile_cache = _WatchedCache(cache)


# ---------------------------------------------------------------------------------------------
# Tapes
# ---------------------------------------------------------------------------------------------

def _build(tpl, inputs, slots):
    kind = tpl[0]
    if kind == "in" or kind == "new":
        _, i, same, shape, stride, off = tpl
        base = inputs[i] if kind == "in" else slots[i]
        return base if same else base.as_strided(shape, stride, base.storage_offset() + off)
    if kind == "val" or kind == "const":
        return tpl[1]
    _, seq_type, items = tpl
    built = [_build(t, inputs, slots) for t in items]
    return seq_type(*built) if hasattr(seq_type, "_fields") else seq_type(built)


def _varies(tpl) -> bool:
    """Whether a template depends on the call (an input or a buffer made per replay)."""
    return tpl[0] in ("in", "new") or (tpl[0] == "seq" and any(_varies(t) for t in tpl[2]))


_FROM_INPUT, _FROM_SLOT, _BUILT = 0, 1, 2


def _hole(pos: int, tpl) -> tuple:
    """(pos, source, what) for one argument built per replay: an input or a buffer as it is (the
    common case, read in place by _Tape.run), else a template _build makes."""
    if tpl[0] in ("in", "new") and tpl[2]:  # the tensor itself, not a view of it
        return pos, _FROM_INPUT if tpl[0] == "in" else _FROM_SLOT, tpl[1]
    return pos, _BUILT, tpl


def _split_args(tpl) -> tuple[list, tuple]:
    """A launch's argument list made once (everything fixed built now) and the positions that are
    built per replay: the replay then touches only the tensors that change."""
    _, _, items = tpl
    fixed = [None if _varies(t) else _build(t, (), ()) for t in items]
    return fixed, tuple(_hole(i, t) for i, t in enumerate(items) if _varies(t))


class _Tape:
    """The recorded launches of one key, and where the call's results come from."""

    def __init__(self, rec: _Recorder, outputs_tpl, owner):
        steps = []
        for step in rec.steps:
            if step[0] == "launch":
                fixed, holes = _split_args(step[2])
                step = ("launch", step[1], fixed, holes)
            steps.append(step)
        self.steps = tuple(steps)
        self.n_new = len(rec.created)
        self.outputs = outputs_tpl
        self.owner = owner  # keeps the mask (and so its tensors and its id) alive with the key

    def run(self, inputs):
        """The recorded steps on this call's inputs. Host time on every replayed call: the holes'
        common case (an input or buffer as it is) is read here, without a call of _build."""
        slots: list = [None] * self.n_new
        for step in self.steps:
            kind = step[0]
            if kind == "launch":
                _, fn, fixed, holes = step
                args = fixed.copy()
                for pos, source, what in holes:
                    if source == _FROM_INPUT:
                        args[pos] = inputs[what]
                    elif source == _FROM_SLOT:
                        args[pos] = slots[what]
                    else:
                        args[pos] = _build(what, inputs, slots)
                fn(*args)
            elif kind == "alloc":
                _, i, shape, stride, dtype, device, zero = step
                buf = torch.empty_strided(shape, stride, dtype=dtype, device=device)
                slots[i] = buf.zero_() if zero else buf
            else:  # zero
                _build(step[1], inputs, slots).zero_()
        return _build(self.outputs, inputs, slots)


def _signature(t: torch.Tensor | None):
    if t is None:
        return None
    # requires_grad too: FA4 reads it (its MLA and sparse-KV paths choose kernels by it)
    # t.shape as it is: torch.Size is a tuple (same hash, same equality), no copy per call
    return (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16, t.requires_grad)


def _remember(key, value) -> None:
    with _lock:
        _tapes[key] = value
        _tapes.move_to_end(key)
        while len(_tapes) > MAX_TAPES:
            _tapes.popitem(last=False)


def _refuse(key, why: str) -> None:
    _counts["refused"] += 1
    _refusals.append(why)
    del _refusals[:-8]  # the last few reasons are enough to diagnose
    _remember(key, why)


def _matches(recorded, replayed) -> bool:
    a, b = list(_tensors_in(recorded)), list(_tensors_in(replayed))
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        x, y = x.double(), y.double()
        tol = 2e-2 * max(1.0, float(x.nan_to_num(0.0, 0.0, 0.0).abs().max()) if x.numel() else 1.0)
        if not torch.allclose(x, y, rtol=2e-2, atol=tol, equal_nan=True):
            return False
    return True


def _shape_of(tpl) -> tuple:
    """A template without its values: where each argument comes from, not which tensor or value."""
    kind = tpl[0]
    if kind in ("in", "new"):
        return (kind, tpl[1], len(tpl[3]))
    if kind == "seq":
        return ("seq", tpl[1], tuple(_shape_of(t) for t in tpl[2]))
    return (kind, type(tpl[1]).__name__)


def _structure(rec: _Recorder, outputs_tpl) -> tuple:
    """What the check of a tape establishes, for every tape that shares it: the compiled kernels in
    order and the origin of each of their arguments, allocations and zeroings."""
    parts = []
    for step in rec.steps:
        if step[0] == "launch":
            parts.append(("launch", id(step[1]), _shape_of(step[2])))
        elif step[0] == "alloc":
            parts.append(("alloc", step[1], len(step[2]), step[4], step[6]))
        else:
            parts.append(("zero", _shape_of(step[1])))
    return tuple(parts), _shape_of(outputs_tpl)


def _everything(result):
    return result


def _record(key, owner, call, inputs, written, constants, module, computed):
    """Run `call` once while recording it; keep the tape if it checks out. Returns call's result."""
    _watch_compile_caches(module)
    rec = _Recorder(inputs, constants)
    _active.recorder = rec
    try:
        with rec:
            result = call(*inputs)
    finally:
        _active.recorder = None
    try:
        if rec.failure is not None:
            raise _NotReplayable(rec.failure)
        outputs_tpl = rec._template(result)
        tape = _Tape(rec, outputs_tpl, owner)
        structure = _structure(rec, outputs_tpl)
        trusted = structure in _checked
        if not trusted:  # the check: same inputs, NaN stand-ins for the buffers the call writes
            expected = [t.clone() for t in _tensors_in(computed(result))]
            trial = list(inputs)
            for i in written:
                if trial[i] is not None:
                    trial[i] = torch.full_like(trial[i], float("nan"))
            if not _matches(expected, computed(tape.run(trial))):
                raise _NotReplayable("the replayed launches did not reproduce the call's results")
    except _NotReplayable as e:
        _refuse(key, str(e))
        return result
    with _lock:
        _checked[structure] = True
        _checked.move_to_end(structure)
        while len(_checked) > MAX_TAPES:
            _checked.popitem(last=False)
    _counts["recorded"] += 1
    _counts["trusted"] += trusted
    _remember(key, tape)
    return result


def launch(key: tuple, owner, call: Callable, inputs: Sequence[torch.Tensor | None], *, written: Sequence[int] = (),
           constants: Sequence[torch.Tensor] = (), module=None, computed: Callable | None = None):
    """``call(*inputs)``, FA4's own path or a replay of its recorded launches.

    key: what besides the inputs' layouts decides FA4's path (direction, scalars); `owner` (the
    mask) is part of it by identity and kept alive with the tape. written: indices of inputs that
    `call` writes (out= / dq= buffers). constants: the mask's tensors, which launches may take as
    they are. module: FA4's interface module (its compile caches are watched). computed: maps
    call's result to the tensors of the elements FA4 computes (default: all of it), which the
    recording's check compares.
    """
    if not enabled() or module is None or (inputs and inputs[0] is not None and inputs[0].is_cuda
                                            and torch.cuda.is_current_stream_capturing()):
        return call(*inputs)
    full_key = (id(owner), key, tuple([_signature(t) for t in inputs]))
    with _lock:
        entry = _tapes.get(full_key)
        if entry is not None:
            _tapes.move_to_end(full_key)
    if isinstance(entry, _Tape):  # it keeps `owner` alive, so id(owner) in the key is still owner's
        _counts["replayed"] += 1
        return entry.run(list(inputs))
    if entry is None or isinstance(entry, int):
        calls = (entry or 0) + 1
        if calls >= record_at():
            return _record(full_key, owner, call, list(inputs), written, constants, module, computed or _everything)
        _remember(full_key, calls)
        return call(*inputs)
    return call(*inputs)  # refused: FA4's own path
