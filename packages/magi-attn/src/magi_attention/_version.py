"""Release and interface versions of magi_attention.

INTERFACE_VERSION is "major.minor": the minor part grows when the public API gains something,
the major part when it changes incompatibly. Packages that depend on this one pin it.
"""

__version__ = "0.1.11"
INTERFACE_VERSION = "1.2"
