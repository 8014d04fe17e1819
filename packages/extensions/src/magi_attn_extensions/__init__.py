"""magi_attn_extensions: attention-sink wrappers, a transformers attention backend, Muon QK-clip.

Light at import: the FA2/FA3/FA4 wrappers and the transformers integration import their optional
packages only when first used (``magi_attn_extensions.fa2_func_with_sink`` etc. resolve lazily).
"""

from __future__ import annotations

import importlib

from magi_attn_extensions._version import INTERFACE_VERSION, __version__
from magi_attn_extensions.errors import ExtensionsInputError, ExtensionsTypeError, OptionalDependencyError
from magi_attn_extensions.muon_qk_clip import (
    QKClipResult,
    apply_qk_clip_,
    qk_clip_attention_module_,
    qk_clip_scales,
)
from magi_attn_extensions.sink import _LAZY as _LAZY_SINK
from magi_attn_extensions.sink import (
    ffa_func_with_sink,
    ffa_varlen_func_with_sink,
    sdpa_func_with_sink,
    sdpa_varlen_func_with_sink,
)

__all__ = [
    "INTERFACE_VERSION",
    "__version__",
    "ExtensionsInputError",
    "ExtensionsTypeError",
    "OptionalDependencyError",
    "QKClipResult",
    "apply_qk_clip_",
    "qk_clip_attention_module_",
    "qk_clip_scales",
    "ffa_func_with_sink",
    "ffa_varlen_func_with_sink",
    "sdpa_func_with_sink",
    "sdpa_varlen_func_with_sink",
    *_LAZY_SINK,
]


def __getattr__(name: str):
    if name in _LAZY_SINK:
        return getattr(importlib.import_module(f"magi_attn_extensions.sink.{_LAZY_SINK[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
