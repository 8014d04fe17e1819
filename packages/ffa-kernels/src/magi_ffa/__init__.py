"""magi_ffa: Flex-Flash-Attention over lists of (q_range, k_range, mask type) slices.

`flex_flash_attn_func` is the autograd entry point (anchor signature plus `backend=`);
`ffa_forward` / `ffa_backward` are the accumulating interface of the distributed runtime, and
`FFACall` the same for one mask, checked once per call layout;
`magi_ffa.testing` ships the float64 reference. Backends: "triton" (CUDA) and "torch" (any device).
"""

from magi_ffa._version import INTERFACE_VERSION, __version__
from magi_ffa.api import ffa_backward, ffa_forward, flex_flash_attn_func
from magi_ffa.bound import FFACall
from magi_ffa.errors import BackendUnavailableError, FFAInputError, FFATypeError
from magi_ffa.merge import (
    calc_lse_sink,
    correct_attn_lse,
    correct_attn_lse_with_sink,
    correct_attn_out,
    correct_attn_out_lse,
    correct_attn_out_lse_with_sink,
    correct_attn_out_with_sink,
)
from magi_ffa.select import get_backend, select_backend
from magi_ffa.sink import apply_sink, sink_backward
from magi_ffa.types import AttnForwardMeta, MaskType

__all__ = [
    "INTERFACE_VERSION",
    "AttnForwardMeta",
    "BackendUnavailableError",
    "FFACall",
    "FFAInputError",
    "FFATypeError",
    "MaskType",
    "__version__",
    "apply_sink",
    "calc_lse_sink",
    "correct_attn_lse",
    "correct_attn_lse_with_sink",
    "correct_attn_out",
    "correct_attn_out_lse",
    "correct_attn_out_lse_with_sink",
    "correct_attn_out_with_sink",
    "ffa_backward",
    "ffa_forward",
    "flex_flash_attn_func",
    "get_backend",
    "select_backend",
    "sink_backward",
]
