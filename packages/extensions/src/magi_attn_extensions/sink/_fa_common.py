"""Helpers shared by the FlashAttention 2/3/4 sink wrappers: lazy import and signature-tolerant calls.

The upstream internals these wrappers call (``_wrapped_flash_attn_forward``, ``_flash_attn_forward``,
``_flash_attn_fwd``, ...) change argument names between releases (``window_size`` vs
``window_size_left/right``), so arguments are passed by keyword after reading the signature.
"""

from __future__ import annotations

import importlib
import inspect

from magi_attn_extensions.errors import OptionalDependencyError


def require(module: str, pip_name: str, wrapper: str):
    """Import ``module`` or raise an ImportError saying which package to pip install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OptionalDependencyError(
            f"{wrapper} needs the '{module}' module, which is not installed ({exc}). "
            f"Fix: pip install {pip_name}"
        ) from exc


def kwcall(fn, values: dict, window: tuple[int, int] | None = None, window_none: bool = False):
    """Call ``fn`` with those ``values`` its signature names; the window goes in whichever form it takes."""
    params = inspect.signature(fn).parameters
    kwargs = {name: val for name, val in values.items() if name in params}
    if window is not None:
        left, right = window
        if window_none:
            left, right = (None if left < 0 else left), (None if right < 0 else right)
        if "window_size" in params:
            kwargs["window_size"] = (left, right)
        else:
            kwargs.update({n: w for n, w in (("window_size_left", left), ("window_size_right", right)) if n in params})
    missing = [
        n for n, p in params.items()
        if p.default is inspect.Parameter.empty and n not in kwargs
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if missing:
        raise NotImplementedError(
            f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', fn)} has required arguments "
            f"{missing} this wrapper does not know; the installed version is not supported."
        )
    return fn(**kwargs)


def lse_from_fa(lse):
    """FlashAttention writes +inf as the lse of a row without keys; the sink math expects -inf."""
    return lse.float().masked_fill(lse.isposinf(), float("-inf"))


def lse_to_fa(lse):
    """Back to the kernel's convention (+inf makes P = exp(S - lse) vanish for empty rows)."""
    return lse.float().masked_fill(lse.isneginf(), float("inf")).contiguous()
