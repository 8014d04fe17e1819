"""The version compiled into _core (a CMake definition) equals the one in _version.py."""

from __future__ import annotations

import re

import magi_solver
from magi_solver import _core, _version


def test_compiled_version_matches_python_version() -> None:
    assert _core.__version__ == _version.__version__ == magi_solver.__version__


def test_interface_version_format() -> None:
    assert re.fullmatch(r"\d+\.\d+", magi_solver.INTERFACE_VERSION)
