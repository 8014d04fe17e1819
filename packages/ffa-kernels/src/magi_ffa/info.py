"""What this installation of magi_ffa can run: versions and each backend's capability table.

Run `python -m magi_ffa.info`.
"""

from __future__ import annotations

import os

import torch

from magi_ffa._version import INTERFACE_VERSION, __version__
from magi_ffa.select import BACKEND_ENV, OPT_IN, PRIORITY, get_backend

__all__ = ["backend_table", "print_info"]


def _names(xs) -> str:
    return ", ".join(sorted(str(x).removeprefix("torch.") for x in xs))


def backend_table() -> list[dict[str, str]]:
    """One row per backend: name, available, devices, dtypes, head dims, deterministic."""
    rows = []
    for name in PRIORITY + OPT_IN:
        b = get_backend(name)
        if b is None:
            rows.append({"name": name, "available": "no (import failed)"})
            continue
        rows.append(
            {
                "name": name,
                "available": "yes" if b.is_available() else "no",
                "devices": _names(b.DEVICES),
                "dtypes": _names(b.DTYPES),
                "head_dims": "any" if b.HEAD_DIMS is None else ", ".join(str(d) for d in sorted(b.HEAD_DIMS)),
                "deterministic": str(b.IS_DETERMINISTIC),
            }
        )
    return rows


def print_info() -> None:
    print(f"magi_ffa {__version__} (interface {INTERFACE_VERSION}), torch {torch.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}; {BACKEND_ENV}={os.environ.get(BACKEND_ENV, '')!r}")
    for row in backend_table():
        print("  " + ", ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    print_info()
