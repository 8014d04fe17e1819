"""Which backend runs a call: `backend=` argument, then MAGI_ATTENTION_KERNEL_BACKEND (or
MAGI_ATTENTION_FA4_BACKEND=1, which means "fa4"), then auto.

Auto walks the priority list (triton, torch) and takes the first backend with no refusal reason;
it logs why it skipped a backend once per distinct reason. A forced backend that cannot run the
inputs raises BackendUnavailableError (a ValueError) listing its reasons, xformers style; a forced
backend whose optional dependency is missing raises its ImportError (with the install hint).
Names: "triton", "torch", "fa4" (opt-in only), "auto"; the anchor's "ffa" means auto and "sdpa"
means torch.
"""

from __future__ import annotations

import logging
import os

from magi_ffa.backends.base import Backend, FFAInputs
from magi_ffa.errors import BackendUnavailableError, FFAInputError

__all__ = ["BACKEND_ENV", "FA4_ENV", "OPT_IN", "PRIORITY", "get_backend", "resolve_backend_name", "select_backend"]

BACKEND_ENV = "MAGI_ATTENTION_KERNEL_BACKEND"
FA4_ENV = "MAGI_ATTENTION_FA4_BACKEND"
PRIORITY = ("triton", "torch")
OPT_IN = ("fa4",)  # never chosen by auto
_ALIASES = {"triton": "triton", "torch": "torch", "fa4": "fa4", "auto": "auto", "ffa": "auto",
            "sdpa": "torch", "": "auto"}

_logger = logging.getLogger("magi_ffa")
_cache: dict[str, Backend] = {}
_import_errors: dict[str, str] = {}
_logged: set[str] = set()


def get_backend(name: str) -> Backend | None:
    """The backend instance called `name`, or None when it cannot be imported (reason kept)."""
    if name in _cache:
        return _cache[name]
    if name in _import_errors:
        return None
    try:
        if name == "torch":
            from magi_ffa.backends.torch_ref import TorchBackend as cls
        elif name == "triton":
            from magi_ffa.backends.triton import TritonBackend as cls  # lazy: optional backend
        elif name == "fa4":
            from magi_ffa.backends.fa4 import FA4Backend as cls
        else:
            raise FFAInputError(f"get_backend(): unknown backend {name!r}; expected one of "
                                f"{PRIORITY + OPT_IN}.")
    except ImportError as e:
        _import_errors[name] = f"backend {name!r} cannot be imported ({type(e).__name__}: {e})"
        return None
    _cache[name] = cls()
    return _cache[name]


def resolve_backend_name(backend: str | None = None) -> str:
    """The canonical name ("triton", "torch", "fa4" or "auto") from the argument or the environment."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(BACKEND_ENV, "")
        source = BACKEND_ENV
        fa4_flag = os.environ.get(FA4_ENV, "0").strip()
        if fa4_flag not in ("", "0", "1"):  # the same toggle rule as magi_attention.env
            raise FFAInputError(f"{FA4_ENV}={fa4_flag!r} is not a valid toggle; expected '1' (on) or '0' (off).")
        if fa4_flag == "1":
            if backend.strip().lower() not in ("", "auto", "ffa", "fa4"):
                raise FFAInputError(f"{FA4_ENV}=1 conflicts with {BACKEND_ENV}={backend!r}; unset one.")
            backend, source = "fa4", FA4_ENV
    if not isinstance(backend, str):
        raise FFAInputError(
            f"flex_flash_attn_func(): backend must be a str or None, got {type(backend).__name__}."
        )
    key = backend.strip().lower()
    if key not in _ALIASES:
        raise FFAInputError(
            f"{source}={backend!r} is not a kernel backend; expected one of 'triton', 'torch', 'fa4', "
            "'auto' (or the anchor's 'ffa' = auto, 'sdpa' = torch)."
        )
    return _ALIASES[key]


def _reasons(name: str, inp: FFAInputs) -> list[str]:
    b = get_backend(name)
    if b is None:
        return [_import_errors[name]]
    return b.not_supported_reasons(inp)


def select_backend(inp: FFAInputs, backend: str | None = None) -> Backend:
    """Pick the backend for `inp` (see module docstring); raise if a forced one cannot run it.

    The choice depends on the name (argument or environment, read every call) and on q/k's
    shapes, dtype and device, so calls sharing ``inp.memo`` reuse it."""
    name = resolve_backend_name(backend)
    return inp.memoised(("backend", name), lambda: _select(inp, name))


def _select(inp: FFAInputs, name: str) -> Backend:
    if name != "auto":
        forced = get_backend(name)
        if forced is not None:
            forced.require()  # a missing optional dependency: its ImportError, with the install hint
        reasons = _reasons(name, inp)
        if reasons:
            raise BackendUnavailableError(
                f'backend="{name}" cannot run {inp.describe()}: ' + "; ".join(reasons)
            )
        return _cache[name]
    skipped: list[str] = []
    for cand in PRIORITY:
        reasons = _reasons(cand, inp)
        if not reasons:
            if skipped:
                _log_once(
                    f"magi_ffa: using backend {cand!r} for {inp.describe()}; " + "; ".join(skipped), inp
                )
            return _cache[cand]
        skipped.append(f"{cand!r} skipped: " + ", ".join(reasons))
    raise NotImplementedError(f"No FFA backend can run {inp.describe()}: " + "; ".join(skipped))


def _log_once(msg: str, inp: FFAInputs) -> None:
    key = msg.split(" for ", 1)[0] + msg.split(";", 1)[-1]
    if key in _logged:
        return
    _logged.add(key)
    # a CPU run falling back to torch is the expected path; on CUDA it is worth a warning
    level = logging.WARNING if inp.q.device.type == "cuda" else logging.INFO
    _logger.log(level, msg)
