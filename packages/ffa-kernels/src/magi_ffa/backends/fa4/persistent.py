"""A persistent Hopper forward for FA4's varlen path: each CTA runs many q tiles (issue #7).

Why: on Hopper, FA4's varlen forward launches one CTA per (q tile, head). Each CTA pays a fixed
prologue (barrier set-up, the first Q and K loads) and epilogue (O through shared memory), about one
k tile's work. Long-tailed documents have ~3.5x the q tiles of causal of the same area, so that fixed
cost is most of what keeps varlen causal at 0.83-0.84 of causal (PERF_NOTES.md). A persistent
CTA hides it: its producer warp loads the next tile's Q and K while the consumers finish the
current tile.

FA4's forward (``flash_fwd_sm90.py``) already loops over work tiles in its producer and consumer
warps, but two things keep it at one tile per CTA:

* ``SingleTileVarlenScheduler`` stops after the first tile. ``GridStrideVarlenScheduler`` (below)
  strides through the same tile order (the same decoder: documents in order, each longest tile
  first) with one CTA per SM.
* The epilogue writes O into the shared memory of Q, and the consumers release Q before it, so with a
  second tile the producer could load the next Q over the O being written. The patched kernel gives
  O its own shared memory: ``sO`` sits next to ``sQ`` in the kernel's shared storage. With 128 x 128
  tiles at head dim 128 this is 192 KB of the SM's 227 KB.

The kernel is FA4's own module with those edits applied at first use to the installed FA4's source
(``patch_source``: each edit must find its anchor exactly once, else the fa4 backend keeps FA4's
kernel and says why). The patched copy is written to a cache folder and imported from there (the
CuTe DSL reads a kernel's source from its file). Its compiled kernels have their own compile cache.

On with ``MAGI_FFA_FA4_PERSISTENT_FWD=1``, for varlen forwards (native.py's documents) on sm90.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import tempfile
import threading
import warnings

__all__ = ["ENV", "PatchError", "applies", "enabled", "forward_kernel", "patch_source", "stats"]

ENV = "MAGI_FFA_FA4_PERSISTENT_FWD"
CACHE_DIR_ENV = "MAGI_FFA_CACHE_DIR"
_SCHEDULER_NAME = "_magi_grid_stride_varlen_scheduler"

#: (what, anchor, replacement): the edits of FA4's ``flash_fwd_sm90.py``; each anchor must occur once
EDITS = (
    ("shared storage: an sO layout among the structs",
     "        sQ_struct, sK_struct, sV_struct = [\n",
     "        sQ_struct, sK_struct, sV_struct, sO_struct = [\n"),
    ("shared storage: sO's size",
     "            for layout in (self.sQ_layout, self.sK_layout, self.sV_layout)\n",
     "            for layout in (self.sQ_layout, self.sK_layout, self.sV_layout, self.sO_layout)\n"),
    ("shared storage: sO's own field",
     "            sP: sP_struct\n\n        @cute.struct\n        class SharedStorageSharedQV:\n",
     "            sP: sP_struct\n            sO: sO_struct\n\n        @cute.struct\n        class SharedStorageSharedQV:\n"),
    ("the kernel's sO: its own memory, not Q's",
     "sO = storage.sQ.get_tensor(",
     "sO = storage.sO.get_tensor("),
    ("the varlen tile scheduler",
     "            TileScheduler = SingleTileVarlenScheduler\n",
     f"            TileScheduler = {_SCHEDULER_NAME}\n"),
)

_lock = threading.Lock()
_counts = {"calls": 0, "fallbacks": 0}  # FA4 calls made with the persistent kernel / with FA4's (patch refused)


def stats() -> dict:
    """How many FA4 forward calls ran the persistent kernel (``calls``: launches replayed by
    replay.py are not calls) and how many kept FA4's because the patch did not apply."""
    return dict(_counts)


class PatchError(RuntimeError):
    """The installed FA4's forward is not the code the persistent edits were written for."""


def enabled() -> bool:
    """Whether varlen forwards on sm90 run the persistent kernel (env ``ENV``: 0 / 1, default 0)."""
    value = os.environ.get(ENV, "0").strip().lower()
    if value not in ("0", "1", "off", "on"):
        raise ValueError(f"{ENV}={value!r}: expected 0 or 1")
    return value in ("1", "on")


def applies(native, head_dim: int, arch: int) -> bool:
    """Whether a forward with this native mask (native.py; None: block lists) runs persistent: varlen
    documents on sm90 at head dims up to 128 (FA4's tiles there leave room for a separate sO)."""
    return native is not None and native.varlen and arch // 10 == 9 and head_dim <= 128 and enabled()


def patch_source(text: str) -> str:
    """FA4's ``flash_fwd_sm90.py`` with ``EDITS`` applied; PatchError naming the first edit whose
    anchor is missing or not unique."""
    for what, anchor, replacement in EDITS:
        found = text.count(anchor)
        if found != 1:
            raise PatchError(f"FA4's flash_fwd_sm90.py: the anchor of '{what}' occurs {found} times "
                             f"(expected once): not the FA4 these edits were written for")
        text = text.replace(anchor, replacement)
    return text


def _cache_dir() -> str:
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "magi_ffa")
    try:
        os.makedirs(root, exist_ok=True)
        return root
    except OSError:
        fallback = os.path.join(tempfile.gettempdir(), "magi_ffa")
        os.makedirs(fallback, exist_ok=True)
        return fallback


def _write_once(path: str, text: str) -> None:
    """Write `text` to `path` unless it is there already; atomic (ranks of one host race here)."""
    if os.path.exists(path):
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _grid_stride_scheduler(tile_scheduler):
    """A subclass of FA4's SingleTileVarlenScheduler whose CTAs, one per SM at most, take the tiles
    ``block, block + grid, block + 2 grid, ...`` of the same decoder's order, until it runs out."""
    import cutlass
    import cutlass.cute as cute
    from cutlass import Int32

    base = tile_scheduler.SingleTileVarlenScheduler

    class GridStrideVarlenScheduler(base):
        @staticmethod
        def create(params, ctx=None, *, loc=None, ip=None):
            tile_idx, split_idx, _ = cute.arch.block_idx()
            return GridStrideVarlenScheduler(params, tile_idx, split_idx, loc=loc, ip=ip)

        @staticmethod
        def get_grid_shape(params, *, loc=None, ip=None):
            tiles, splits, one = base.get_grid_shape(params, loc=loc, ip=ip)
            sms = cutlass.utils.HardwareInfo().get_device_multiprocessor_count()
            return cutlass.min(tiles, Int32(sms)), splits, one

        def advance_to_next_work(self, *, loc=None, ip=None):
            # the base class's decoder marks a tile past the last one invalid, which ends the loop
            self._tile_idx = self._tile_idx + cute.arch.grid_dim()[0]
            return self.get_current_work()

    return GridStrideVarlenScheduler


@functools.lru_cache(maxsize=1)
def _patched_module():
    """FA4's forward module with ``EDITS``, imported from its file in the cache folder (once)."""
    original = importlib.import_module("flash_attn.cute.flash_fwd_sm90")
    text = patch_source(inspect.getsource(original))
    digest = hashlib.sha256((text + inspect.getsource(_grid_stride_scheduler)).encode()).hexdigest()[:16]
    name = f"magi_ffa_fa4_fwd_sm90_persistent_{digest}"
    path = os.path.join(_cache_dir(), f"{name}.py")
    _write_once(path, text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the CuTe DSL looks kernels' modules up by name
    spec.loader.exec_module(module)
    setattr(module, _SCHEDULER_NAME, _grid_stride_scheduler(importlib.import_module("flash_attn.cute.tile_scheduler")))
    return module, digest


@functools.lru_cache(maxsize=1)
def _compile_cache(digest: str):
    """The persistent kernels' compile cache (FA4's kind: on disk when FA4's cache is on), apart from
    FA4's own, whose keys do not tell the two kernels apart."""
    from flash_attn.cute.cache_utils import get_jit_cache

    return get_jit_cache(f"fwd_magi_persistent_{digest}")


@contextlib.contextmanager
def forward_kernel(iface, watched=lambda cache: cache):
    """Within it, FA4's ``_flash_attn_fwd`` builds and launches the persistent kernel: its Hopper
    kernel class and compile cache are swapped for the patched ones (and put back after). A patch that
    does not apply warns once and leaves FA4's kernel. ``watched`` wraps the compile cache (the launch
    replay's recording watches compiled launches through it)."""
    try:
        module, digest = _patched_module()
        if not hasattr(iface, "FlashAttentionForwardSm90"):
            raise PatchError("flash_attn.cute.interface has no FlashAttentionForwardSm90 to swap")
    except PatchError as e:
        _warn_once(str(e))
        _counts["fallbacks"] += 1
        yield
        return
    fwd = iface._flash_attn_fwd
    with _lock:
        _counts["calls"] += 1
        saved = iface.FlashAttentionForwardSm90, fwd.compile_cache
        iface.FlashAttentionForwardSm90, fwd.compile_cache = module.FlashAttentionForwardSm90, watched(_compile_cache(digest))
        try:
            yield
        finally:
            iface.FlashAttentionForwardSm90, fwd.compile_cache = saved


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(f"magi_ffa: {ENV}=1 is ignored: {message}", RuntimeWarning, stacklevel=3)
