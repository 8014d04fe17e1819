"""Where the host waits for the GPU: host-device syncs counted by the call site that asked for them.

A step whose mask is new (varlen training packs its documents anew every step) builds its key, its
runtime and its kernels' metadata on the host while the GPU runs what was queued before. Every sync on
that path (a blocking upload, a read of a device value) drains the queue, and the host work after it
runs with the GPU idle. ``HostSyncs`` turns torch's sync debug mode on and counts each sync by the
innermost frame of our packages that led to it, so a test can pin the path down and a benchmark can
say which sites remain.
"""

from __future__ import annotations

import collections
import contextlib
import traceback
import warnings

import torch

__all__ = ["HostSyncs"]

#: frames of these packages name a sync's call site
OUR_PACKAGES = ("magi_attention", "magi_ffa", "magi_grpcoll", "magi_solver")


def call_site(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame of our packages as ``package/path.py:line function``."""
    for fr in reversed(stack):
        parts = fr.filename.replace("\\", "/").split("/")
        hits = [i for i, p in enumerate(parts) if p in OUR_PACKAGES]
        if hits:
            return f"{'/'.join(parts[hits[-1]:])}:{fr.lineno} {fr.name}"
    return "(outside our packages)"


class HostSyncs:
    """Counts host-device syncs per (``phase``, call site) while entered (CUDA only; this thread).

    Set ``phase`` to attribute the syncs that follow to a named part of the work; ``paused()`` lets
    the caller's own syncs (timing, checks) go uncounted.
    """

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.phase = ""

    def __enter__(self) -> HostSyncs:
        self._show = warnings.showwarning
        self._filters = warnings.filters[:]

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                self.counts[(self.phase, call_site(traceback.extract_stack()[:-1]))] += 1
            else:
                self._show(message, category, filename, lineno, file, line)

        # turning the mode on warns once per process that it is a prototype: not a sync, so it is
        # silenced before the hook that counts syncs goes in
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.cuda.set_sync_debug_mode("warn")
        warnings.showwarning = show
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = self._show
        warnings.filters[:] = self._filters

    @staticmethod
    @contextlib.contextmanager
    def paused():
        """A block whose syncs are not counted (the caller's own: timing, checks)."""
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("default")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(mode)

    def sites(self) -> collections.Counter:
        """Counts by call site, phases merged."""
        out: collections.Counter = collections.Counter()
        for (_, site), n in self.counts.items():
            out[site] += n
        return out
