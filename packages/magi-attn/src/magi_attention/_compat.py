"""The single gateway to the lower wheels (magi_ffa, magi_grpcoll, magi_solver).

Why: the four wheels ship separately. Checking each one's INTERFACE_VERSION here, at import,
turns a mismatched install into one readable ImportError instead of an AttributeError deep in
a distributed run. No other module of magi_attention imports the lower packages; they use the
module objects ``ffa``, ``grpcoll`` and ``solver`` exported here (tests may swap them).
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

__all__ = ["REQUIRED", "DIST_PINS", "check_interface", "offers", "parse_spec", "version_satisfies",
           "ffa", "grpcoll", "solver", "make_dynamic_plan", "DynamicPlan"]

# Interface-version ranges this magi_attention release is written against (contracts.md).
REQUIRED: dict[str, str] = {
    "magi_ffa": ">=1.1,<2",  # 1.1: backend="fa4"
    "magi_grpcoll": ">=1.0,<2",
    "magi_solver": ">=1.0,<2",
}

# Distribution (release-version) pins; must agree with packages/magi-attn/pyproject.toml
# (tests/test_compat.py parses it and compares).
DIST_PINS: dict[str, str] = {
    "magi-ffa-kernels": ">=0.1.1,<0.2",  # 0.1.1: the fa4 backend
    "magi-grpcoll": ">=0.1.1,<0.2",  # 0.1.1: hier and sanity accept the runtime's split cuts
    "magi-solver": ">=0.1,<0.2",
}

_DIST_OF = {"magi_ffa": "magi-ffa-kernels", "magi_grpcoll": "magi-grpcoll",
            "magi_solver": "magi-solver"}


def _as_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.strip().split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def parse_spec(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    """'>=1.0,<2' -> [('>=', (1, 0)), ('<', (2,))]."""
    out = []
    for clause in spec.split(","):
        clause = clause.strip()
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if clause.startswith(op):
                out.append((op, _as_tuple(clause[len(op):])))
                break
        else:
            raise ValueError(f"parse_spec(): clause {clause!r} has no comparison operator")
    return out


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


@functools.lru_cache(maxsize=256)
def version_satisfies(version: str, spec: str) -> bool:
    """Whether a "major.minor" version lies in a comma-separated range spec (cached: ``offers`` is
    asked on hot paths, such as each of a key's ~40 candidate plans)."""
    v = _as_tuple(version)
    ops = {">=": lambda c: c >= 0, "<=": lambda c: c <= 0, "==": lambda c: c == 0,
           "!=": lambda c: c != 0, ">": lambda c: c > 0, "<": lambda c: c < 0}
    return all(ops[op](_cmp(v, bound)) for op, bound in parse_spec(spec))


def offers(module: ModuleType, spec: str) -> bool:
    """Whether ``module.INTERFACE_VERSION`` satisfies ``spec`` (a feature added in that interface
    is there); a module without one offers nothing."""
    return version_satisfies(str(getattr(module, "INTERFACE_VERSION", "0")), spec)


def check_interface(name: str, module: ModuleType) -> None:
    """Raise ImportError unless ``module.INTERFACE_VERSION`` satisfies ``REQUIRED[name]``."""
    from magi_attention._version import __version__

    required = REQUIRED[name]
    found = getattr(module, "INTERFACE_VERSION", None)
    dist = _DIST_OF[name]
    if found is None or not version_satisfies(str(found), required):
        where = getattr(module, "__file__", "?")
        rel = getattr(module, "__version__", "?")
        raise ImportError(
            f"magi-attention {__version__} needs {name} interface {required} but found "
            f"{found} ({dist} {rel} in {where}). Fix: uv pip install -U '{dist}{DIST_PINS[dist]}'"
        )


def _load(name: str) -> ModuleType:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - depends on the install
        dist = _DIST_OF[name]
        raise ImportError(
            f"magi-attention needs the {name} package ({dist}{DIST_PINS[dist]}), which could "
            f"not be imported: {exc}. Fix: uv pip install '{dist}{DIST_PINS[dist]}'"
        ) from exc
    check_interface(name, module)
    return module


ffa: ModuleType = _load("magi_ffa")
grpcoll: ModuleType = _load("magi_grpcoll")
solver: ModuleType = _load("magi_solver")


def make_dynamic_plan(*args, **kwargs):
    """magi_solver.make_dynamic_plan (QO comm) of the loaded solver; a clear error if it lacks it."""
    fn = getattr(solver, "make_dynamic_plan", None)
    if fn is None:
        raise ImportError(
            "MAGI_ATTENTION_QO_COMM=1 needs magi_solver.make_dynamic_plan, which the installed "
            f"magi_solver ({getattr(solver, '__file__', '?')}) lacks. Fix: uv pip install -U "
            f"'magi-solver{DIST_PINS['magi-solver']}'")
    return fn(*args, **kwargs)


DynamicPlan = getattr(solver, "DynamicPlan", None)
