"""magi_attn_extensions."""

from magi_attn_extensions._version import INTERFACE_VERSION, __version__

__all__ = ["INTERFACE_VERSION", "__version__"]
