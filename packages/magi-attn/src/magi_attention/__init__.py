"""magi_attention."""

from magi_attention._version import INTERFACE_VERSION, __version__

__all__ = ["INTERFACE_VERSION", "__version__"]
