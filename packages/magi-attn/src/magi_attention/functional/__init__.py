"""magi_attention.functional: kernels and the autograd functions behind the API (§1.3)."""

from magi_attention import _compat
from magi_attention.functional.dispatch import dispatch_func, undispatch_func
from magi_attention.runtime.dist_attn import dist_attn_func


def _ffa(name: str):
    obj = getattr(_compat.ffa, name, None)
    if obj is not None:
        return obj

    def _unavailable(*args, **kwargs):
        raise ImportError(f"magi_ffa.{name} is not available in the installed magi_ffa")

    _unavailable.__name__ = name
    return _unavailable


flex_flash_attn_func = _ffa("flex_flash_attn_func")
correct_attn_lse = _ffa("correct_attn_lse")
correct_attn_out = _ffa("correct_attn_out")
correct_attn_out_lse = _ffa("correct_attn_out_lse")
correct_attn_lse_with_sink = _ffa("correct_attn_lse_with_sink")
correct_attn_out_with_sink = _ffa("correct_attn_out_with_sink")
correct_attn_out_lse_with_sink = _ffa("correct_attn_out_lse_with_sink")



def ffa_fa4_func(q, k, v, q_ranges, k_ranges, attn_type_map=None, *, softmax_scale=None, softcap=0.0,
                 reuse_attn_arg=False):
    """(out, lse): ``flex_flash_attn_func`` on the fa4 backend (Flash-Attention 4), with no sink, the
    anchor's benchmarking entry point. ``reuse_attn_arg`` is accepted and has no effect: the backend
    keeps each mask's translation itself. Raises the backend's error naming what is missing where FA4
    is not installed or the device cannot run it."""
    out, meta = flex_flash_attn_func(q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale=softmax_scale,
                                     softcap=softcap, backend="fa4")
    return out, meta.lse


__all__ = ["flex_flash_attn_func", "ffa_fa4_func", "dist_attn_func", "dispatch_func", "undispatch_func",
           "correct_attn_lse", "correct_attn_out", "correct_attn_out_lse",
           "correct_attn_lse_with_sink", "correct_attn_out_with_sink",
           "correct_attn_out_lse_with_sink"]
