"""The one place that imports magi_attention, checking its interface version first.

Like jax's ``_src/lib`` for jaxlib: other modules get magi_attention pieces from here, so a wrong
wheel fails with one clear ImportError instead of an AttributeError deep inside a call.
Keep ``REQUIRED_DISTRIBUTION`` equal to the ``magi-attention`` pin in pyproject.toml (a test checks).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["REQUIRED", "REQUIRED_DISTRIBUTION", "check_magi_attention", "flex_flash_attn_func", "version_matches"]

REQUIRED = ">=1.0,<2"  # magi_attention.INTERFACE_VERSION
REQUIRED_DISTRIBUTION = ">=0.1,<0.2"  # the magi-attention wheel version (pyproject.toml pin)

_OPS = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}


def _parse(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def version_matches(version: str, spec: str) -> bool:
    """Whether ``"1.2"`` satisfies ``">=1.0,<2"`` (numeric components, zero-padded comparison)."""
    have = _parse(version)
    for clause in spec.split(","):
        clause = clause.strip()
        op = next(o for o in (">=", "<=", "==", "!=", ">", "<") if clause.startswith(o))
        want = _parse(clause[len(op):])
        n = max(len(have), len(want))
        if not _OPS[op](have + (0,) * (n - len(have)), want + (0,) * (n - len(want))):
            return False
    return True


_checked: ModuleType | None = None


def check_magi_attention() -> ModuleType:
    """Import magi_attention and verify its INTERFACE_VERSION; ImportError naming both versions."""
    global _checked
    if _checked is not None:
        return _checked
    try:
        mod = importlib.import_module("magi_attention")
    except ImportError as exc:
        raise ImportError(
            f"magi_attn_extensions needs magi_attention (interface {REQUIRED}), which failed to import: "
            f"{exc}. Fix: uv pip install 'magi-attention{REQUIRED_DISTRIBUTION}'"
        ) from exc
    found = getattr(mod, "INTERFACE_VERSION", None)
    if found is None or not version_matches(str(found), REQUIRED):
        from magi_attn_extensions._version import __version__

        raise ImportError(
            f"magi-attn-extensions {__version__} needs magi_attention interface {REQUIRED} but found "
            f"{found} (magi-attention {getattr(mod, '__version__', '?')} in {getattr(mod, '__file__', '?')}). "
            f"Fix: uv pip install -U 'magi-attention{REQUIRED_DISTRIBUTION}'"
        )
    _checked = mod
    return mod


def flex_flash_attn_func():
    """``magi_attention.functional.flex_flash_attn_func`` (anchor signature, sink built in)."""
    check_magi_attention()
    try:
        return importlib.import_module("magi_attention.functional").flex_flash_attn_func
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            "ffa_*_with_sink needs magi_attention.functional.flex_flash_attn_func, which this magi_attention "
            f"install does not provide ({exc}). Fix: uv pip install -U 'magi-attention{REQUIRED_DISTRIBUTION}'"
        ) from exc


def magi_attention_api() -> ModuleType:
    """``magi_attention.api`` (dispatch, undispatch, calc_attn, magi_attn_varlen_key, ...)."""
    check_magi_attention()
    return importlib.import_module("magi_attention.api")
