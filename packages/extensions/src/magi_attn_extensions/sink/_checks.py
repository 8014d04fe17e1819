"""Argument checks shared by the sink wrappers; each raises before any kernel runs."""

from __future__ import annotations

import torch

from magi_attn_extensions.errors import ExtensionsInputError, ExtensionsTypeError
from magi_attn_extensions.sink.correction import SINK_LAYOUTS


def check_qkv(fn: str, q, k, v, *, varlen: bool) -> tuple[int, int]:
    """q ``[b, sq, hq, d]`` / k, v ``[b, sk, hk, d]`` (or without b for varlen); returns (hq, hk)."""
    ndim = 3 if varlen else 4
    layout = "[total, h, d]" if varlen else "[b, s, h, d]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ExtensionsTypeError(f"{fn}(): {name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != ndim:
            raise ExtensionsInputError(
                f"{fn}(): {name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}."
            )
        if not t.is_floating_point():
            raise ExtensionsTypeError(f"{fn}(): {name} must be floating point, got {t.dtype}.")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ExtensionsTypeError(
            f"{fn}(): q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}."
        )
    if k.shape[:-1] != v.shape[:-1]:
        raise ExtensionsInputError(
            f"{fn}(): k and v must agree in all dims but head_dim, got k {tuple(k.shape)}, v {tuple(v.shape)}."
        )
    if q.shape[-1] != k.shape[-1]:
        raise ExtensionsInputError(
            f"{fn}(): q and k head_dim must match, got q {q.shape[-1]}, k {k.shape[-1]}."
        )
    if not varlen and q.shape[0] != k.shape[0]:
        raise ExtensionsInputError(f"{fn}(): batch sizes differ, q {q.shape[0]} vs k {k.shape[0]}.")
    hq, hk = q.shape[-2], k.shape[-2]
    if hk == 0 or hq % hk != 0:
        raise ExtensionsInputError(
            f"{fn}(): num q heads ({hq}) must be a multiple of num kv heads ({hk}) for GQA/MQA."
        )
    return hq, hk


def check_sink(fn: str, sink, sink_layout: str, rows_shape: tuple[int, ...], num_heads_q: int) -> None:
    """sink ``[s_sink, hq]`` ("sh") or ``[*rows_shape, s_sink, hq]`` ("ssh"), floating point."""
    if sink_layout == "shd":
        raise NotImplementedError(f"{fn}(): sink_layout='shd' is not supported; supported: {SINK_LAYOUTS}.")
    if sink_layout not in SINK_LAYOUTS:
        raise ExtensionsInputError(f"{fn}(): sink_layout must be one of {SINK_LAYOUTS}, got {sink_layout!r}.")
    if sink is None:
        return
    if not isinstance(sink, torch.Tensor) or not sink.is_floating_point():
        got = sink.dtype if isinstance(sink, torch.Tensor) else type(sink).__name__
        raise ExtensionsTypeError(f"{fn}(): sink must be a floating-point tensor (fp32 advised), got {got}.")
    if sink_layout == "sh":
        ok = sink.dim() == 2 and sink.shape[1] == num_heads_q
        want = f"[s_sink, {num_heads_q}]"
    else:
        ok = sink.dim() == len(rows_shape) + 2 and tuple(sink.shape[:-2]) == tuple(rows_shape)
        ok = ok and sink.shape[-1] == num_heads_q
        want = "[" + ", ".join(str(r) for r in rows_shape) + f", s_sink, {num_heads_q}]"
    if not ok or sink.shape[-2] < 1:
        raise ExtensionsInputError(
            f"{fn}(): sink with layout {sink_layout!r} must have shape {want} (s_sink >= 1), "
            f"got {tuple(sink.shape)}."
        )


def check_window(fn: str, window_size) -> tuple[int, int]:
    """``(left, right)`` ints, each -1 (unbounded) or >= 0."""
    try:
        left, right = (int(x) for x in window_size)
    except (TypeError, ValueError):
        raise ExtensionsInputError(f"{fn}(): window_size must be a pair (left, right), got {window_size!r}.") from None
    if left < -1 or right < -1:
        raise ExtensionsInputError(f"{fn}(): window_size entries must be -1 or >= 0, got {window_size!r}.")
    return left, right


def check_cu_seqlens(fn: str, name: str, cu, total: int) -> list[int]:
    """1-D integer tensor (or list), starts at 0, non-decreasing, ends at ``total``; returns a list."""
    if isinstance(cu, torch.Tensor):
        if cu.dim() != 1 or cu.is_floating_point():
            raise ExtensionsInputError(f"{fn}(): {name} must be a 1-D integer tensor, got {cu.dtype} {tuple(cu.shape)}.")
        cu = cu.tolist()
    cu = [int(x) for x in cu]
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != total or any(b < a for a, b in zip(cu, cu[1:])):
        raise ExtensionsInputError(
            f"{fn}(): {name} must start at 0, be non-decreasing and end at {total} (tokens), got {cu}."
        )
    return cu


def check_cu_seqlens_pair(fn: str, cu_seqlens_q, cu_seqlens_k, total_q: int, total_k: int):
    """Both cu_seqlens checked against their totals and listing as many sequences; returns lists."""
    cu_q = check_cu_seqlens(fn, "cu_seqlens_q", cu_seqlens_q, total_q)
    cu_k = check_cu_seqlens(fn, "cu_seqlens_k", cu_seqlens_k, total_k)
    if len(cu_q) != len(cu_k):
        raise ExtensionsInputError(
            f"{fn}(): cu_seqlens_q and cu_seqlens_k must list as many sequences, got {len(cu_q) - 1} "
            f"and {len(cu_k) - 1}."
        )
    return cu_q, cu_k


def check_scale(fn: str, softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return head_dim ** -0.5
    if not isinstance(softmax_scale, (int, float)) or not softmax_scale > 0:
        raise ExtensionsInputError(f"{fn}(): softmax_scale must be a positive float, got {softmax_scale!r}.")
    return float(softmax_scale)
