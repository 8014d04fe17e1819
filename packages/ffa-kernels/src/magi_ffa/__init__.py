"""magi_ffa."""

from magi_ffa._version import INTERFACE_VERSION, __version__

__all__ = ["INTERFACE_VERSION", "__version__"]
