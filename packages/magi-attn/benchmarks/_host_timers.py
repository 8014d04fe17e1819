"""Inclusive host time of chosen functions, by wrapping them with a clock (``profile_dist --host-timers``).

Why not cProfile: it hooks every Python call and roughly doubles the host time of a Python-heavy
path, unevenly, so its shares mislead where the path is many small calls. A clock around a few
dozen named functions costs well under a microsecond per call, and what it reports is real time
(inclusive: a wrapped function called by another wrapped one counts in both).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from collections import defaultdict

__all__ = ["HostTimers", "RUNTIME_PATH"]

#: (module, attribute path) of the functions on the runtime's host path, outermost first.
RUNTIME_PATH = (
    ("magi_attention.runtime.dist_attn", "DistAttnRuntime.forward"),
    ("magi_attention.runtime.dist_attn", "DistAttnRuntime.backward"),
    ("magi_attention.runtime.dist_attn", "DistAttnRuntime._cast_kv"),
    ("magi_attention.runtime.dist_attn", "DistAttnRuntime._reduce_dkv"),
    ("magi_attention.runtime._common", "_FFARuntimeMixin._fwd"),
    ("magi_attention.runtime._common", "_FFARuntimeMixin._bwd"),
    ("magi_attention.runtime._common", "_FFARuntimeMixin._finish_forward"),
    ("magi_grpcoll.work", "GrpCollWork.wait_post_process"),
    ("magi_grpcoll.api", "_run_cast"),
    ("magi_grpcoll.api", "_run_reduce"),
    ("magi_grpcoll.impl.native", "NativeImpl.cast"),
    ("magi_grpcoll.impl.native", "NativeImpl.reduce"),
    ("magi_grpcoll.impl.native", "_on_comm_stream"),
    ("magi_grpcoll.impl._graphs", "LaunchGraphs.run"),
    ("magi_ffa.bound", "FFACall.forward"),
    ("magi_ffa.bound", "FFACall.backward"),
    ("magi_ffa.api", "_forward_into"),
    ("magi_ffa.api", "_backward_into"),
    ("magi_ffa.api", "_prepare"),
    ("magi_ffa.api", "select_backend"),
    ("magi_ffa.backends.fa4", "FA4Backend.forward"),
    ("magi_ffa.backends.fa4", "FA4Backend.backward"),
    ("magi_ffa.backends.fa4", "FA4Backend._store"),
    ("magi_ffa.backends.fa4", "_call_parts"),
    ("magi_ffa.backends.fa4.kernel", "fa4_forward"),
    ("magi_ffa.backends.fa4.kernel", "fa4_backward"),
    ("magi_ffa.backends.fa4.kernel", "_lse_for_fa4"),
    ("magi_ffa.backends.fa4.replay", "launch"),
    ("magi_ffa.backends.fa4.replay", "_Tape.run"),
    ("magi_ffa.backends.triton.merge", "merge_into_"),
    ("magi_ffa.backends.triton.merge", "add_into_"),
    ("magi_ffa.backends.triton.merge", "zero_rows_"),
)


class HostTimers:
    """Wraps functions with a clock while ``active``; ``table(n)`` reports per-call-of-interest times."""

    def __init__(self) -> None:
        self.active = False
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list = []

    def install(self, path=RUNTIME_PATH) -> HostTimers:
        """Wrap every (module, "Class.attr" | "attr") of ``path`` that exists (others are skipped:
        the timers follow whatever the loaded packages have)."""
        for mod_name, attr in path:
            try:
                owner = importlib.import_module(mod_name)
            except ImportError:
                continue
            *outer, name = attr.split(".")
            for part in outer:
                owner = getattr(owner, part, None)
            if owner is None or not hasattr(owner, name):
                continue
            self._wrap(owner, name, f"{mod_name.rsplit('.', 1)[-1]}.{attr}")
        # magi_ffa's package re-exports its entry points: the runtime calls them through it
        ffa = importlib.import_module("magi_ffa")
        for name in ("ffa_forward", "ffa_backward"):
            self._wrap(ffa, name, f"api.{name}")
        return self

    def _wrap(self, owner, name: str, label: str) -> None:
        raw = inspect.getattr_static(owner, name)
        static = isinstance(raw, staticmethod)
        fn = raw.__func__ if static else getattr(owner, name)
        clock, total, calls = time.perf_counter, self.total, self.calls

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.active:
                return fn(*args, **kwargs)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                total[label] += clock() - t0
                calls[label] += 1

        setattr(owner, name, staticmethod(timed) if static else timed)
        self._undo.append((owner, name, raw))

    def uninstall(self) -> None:
        for owner, name, raw in reversed(self._undo):
            setattr(owner, name, raw)
        self._undo.clear()

    def reset(self) -> None:
        self.total.clear()
        self.calls.clear()

    def table(self, n: int, what: str) -> str:
        """The wrapped functions seen, by inclusive time: us and calls per ``what`` (``n`` of them)."""
        rows = sorted(self.total.items(), key=lambda kv: -kv[1])
        lines = [f"host time by function (clocked, inclusive), per {what} ({n} {what}s):",
                 f"{'us':>9} {'calls':>6}  function"]
        lines += [f"{t / n * 1e6:9.1f} {self.calls[k] / n:6.1f}  {k}" for k, t in rows]
        return "\n".join(lines)
