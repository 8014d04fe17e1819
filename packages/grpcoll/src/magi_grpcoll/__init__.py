"""magi_grpcoll."""

from magi_grpcoll._version import INTERFACE_VERSION, __version__

__all__ = ["INTERFACE_VERSION", "__version__"]
