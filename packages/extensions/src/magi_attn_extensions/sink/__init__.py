"""Attention with a learnable sink (extra per-head softmax logits carrying no value).

Always available: ``sdpa_*`` (torch SDPA kernels) and ``ffa_*`` (flex_flash_attn_func).
Imported lazily, only when their package is installed: ``fa2_*`` (flash_attn), ``fa3_*``
(flash_attn_interface), ``fa4_*`` (flash_attn.cute); without it a clear ImportError says what to install.
"""

from __future__ import annotations

import importlib

from magi_attn_extensions.sink.correction import (
    SINK_LAYOUTS,
    calc_lse_sink,
    correct_out_lse_with_sink,
    sink_backward,
)
from magi_attn_extensions.sink.ffa import ffa_func_with_sink, ffa_varlen_func_with_sink
from magi_attn_extensions.sink.sdpa import sdpa_func_with_sink, sdpa_varlen_func_with_sink

_LAZY = {
    "fa2_func_with_sink": "fa2",
    "fa2_varlen_func_with_sink": "fa2",
    "fa3_func_with_sink": "fa3",
    "fa3_varlen_func_with_sink": "fa3",
    "fa4_func_with_sink": "fa4",
    "fa4_varlen_func_with_sink": "fa4",
}

__all__ = [
    "SINK_LAYOUTS",
    "calc_lse_sink",
    "correct_out_lse_with_sink",
    "sink_backward",
    "ffa_func_with_sink",
    "ffa_varlen_func_with_sink",
    "sdpa_func_with_sink",
    "sdpa_varlen_func_with_sink",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"magi_attn_extensions.sink.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
