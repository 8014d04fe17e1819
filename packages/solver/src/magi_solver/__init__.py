"""magi_solver: mask geometry, dispatch and distributed attention plans (C++ core)."""

from magi_solver import _core
from magi_solver._version import INTERFACE_VERSION, __version__

__all__ = ["INTERFACE_VERSION", "__version__", "_core"]
