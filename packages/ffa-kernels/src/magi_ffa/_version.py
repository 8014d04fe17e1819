"""Release and interface versions of magi_ffa.

INTERFACE_VERSION is "major.minor": the minor part grows when the public API gains something,
the major part when it changes incompatibly. Packages that depend on this one pin it.
"""

__version__ = "0.1.13"
INTERFACE_VERSION = "1.5"  # 1.5: FFACall.prepare (a mask's translation built ahead)
