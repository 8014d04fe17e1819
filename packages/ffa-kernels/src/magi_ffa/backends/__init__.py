"""Kernel backends of Flex-Flash-Attention; each says what it supports and why it refuses.

The Triton backend (`magi_ffa.backends.triton`) is imported lazily by `magi_ffa.select`.
"""

from magi_ffa.backends.base import Backend, FFAInputs

__all__ = ["Backend", "FFAInputs"]
