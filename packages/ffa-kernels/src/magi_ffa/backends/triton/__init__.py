"""The Triton backend of Flex-Flash-Attention: capability table plus launch wrappers.

The kernels live in ``fwd_kernel.py`` / ``bwd_kernel.py`` and are imported on first launch,
not at import time: Triton decides at decoration time whether a kernel is compiled or
interpreted (``TRITON_INTERPRET=1``), and importing this module must stay cheap and
side-effect free for the backend selector.

Shape legend: Sq / Sk query / key tokens, hq / hk query / kv heads, d head dim.
"""

from __future__ import annotations

import importlib
import os

import torch

from magi_ffa.backends.base import Backend, FFAInputs
from magi_ffa.backends.triton import configs
from magi_ffa.backends.triton.plan import WorkList, cached_work_list

__all__ = ["TritonBackend", "triton_importable"]

_LOG2E = 1.4426950408889634


def triton_importable() -> bool:
    """Whether `import triton` works here (it is Linux-only)."""
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels():
    """(fwd_kernel, bwd_kernel) modules, imported lazily (see module docstring)."""
    fwd = importlib.import_module("magi_ffa.backends.triton.fwd_kernel")
    bwd = importlib.import_module("magi_ffa.backends.triton.bwd_kernel")
    return fwd, bwd


def _scales(softmax_scale: float, softcap: float) -> tuple[float, float]:
    """(qk_scale, softcap_over_scale) as the kernels take them (base-2 logits)."""
    if softcap > 0.0:
        return softcap * _LOG2E, softmax_scale / softcap
    return softmax_scale * _LOG2E, 0.0


def _rows_per_slice(inp: FFAInputs) -> float:
    """Mean query rows per slice, from shapes only (no device read): the tile-size hint."""
    return inp.q.shape[0] / max(1, inp.num_slices)


def _row_head_strides(*ts: torch.Tensor) -> tuple[int, ...]:
    """(stride(0), stride(1)) of each tensor in turn: the row/head strides every kernel takes."""
    return tuple(st for t in ts for st in (t.stride(0), t.stride(1)))


def _padded_pieces(wl: WorkList) -> torch.Tensor:
    # A zero-sized tensor may have a null data pointer; the kernels never read past tile_ptr.
    if wl.num_pieces:
        return wl.pieces
    return torch.zeros(1, 8, dtype=torch.int32, device=wl.pieces.device)


class TritonBackend(Backend):
    """FlashAttention-2 style Triton kernels over per-tile work lists; deterministic, no atomics.

    fp16/bf16 on CUDA; under ``TRITON_INTERPRET=1`` also CPU tensors and fp32 (tests only).
    Head dims: multiples of 8 up to 256 (non powers of two are padded inside the kernel).
    """

    NAME = "triton"
    DEVICES = frozenset({"cuda"})
    DTYPES = frozenset({torch.float16, torch.bfloat16})
    HEAD_DIMS = frozenset(range(8, 257, 8))
    IS_DETERMINISTIC = True
    SUPPORTS_FRESH = True

    def is_available(self) -> bool:
        if not triton_importable():
            return False
        return _interpreting() or torch.cuda.is_available()

    def not_supported_reasons(self, inp: FFAInputs) -> list[str]:
        interp = _interpreting()
        reasons: list[str] = []
        if not triton_importable():
            reasons.append("triton not importable (pip install triton; Linux only)")
        device = inp.q.device.type
        devices = self.DEVICES | ({"cpu"} if interp else set())
        if device not in devices:
            reasons.append(f"device={device} (supported: {', '.join(sorted(devices))})")
        elif device == "cuda" and not torch.cuda.is_available():
            reasons.append("device=cuda but torch.cuda.is_available() is False")
        dtypes = self.DTYPES | ({torch.float32} if interp else set())
        if inp.q.dtype not in dtypes:
            names = ", ".join(sorted(str(t).removeprefix("torch.") for t in dtypes))
            reasons.append(f"dtype={str(inp.q.dtype).removeprefix('torch.')} (supported: {names})")
        head_dim = int(inp.q.shape[-1])
        if head_dim not in self.HEAD_DIMS:
            reasons.append(f"head_dim={head_dim} (supported: multiples of 8 up to 256)")
        hq, hk = int(inp.q.shape[1]), int(inp.k.shape[1])
        if hk == 0 or hq % hk:
            reasons.append(f"num_heads_q={hq} is not a multiple of num_heads_kv={hk}")
        for name in ("q", "k", "v"):
            if getattr(inp, name).stride(-1) != 1:
                reasons.append(f"{name} last dim is not contiguous (call .contiguous())")
        return reasons

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self,
        inp: FFAInputs,
        out: torch.Tensor,
        lse: torch.Tensor,
        max_logits: torch.Tensor | None,
        *,
        fresh: bool = False,
    ) -> None:
        fwd_mod, _ = _kernels()
        q, k, v = inp.q, inp.k, inp.v
        sq, hq, d = q.shape
        hk = k.shape[1]
        if sq == 0 or inp.num_slices == 0 or k.shape[0] == 0:
            if fresh:
                out.zero_()
                lse.fill_(float("-inf"))
            return
        cfg = configs.pick("fwd", d, _rows_per_slice(inp))
        wl = cached_work_list(
            inp.q_ranges, inp.k_ranges, inp.attn_type_map,
            outer_len=sq, block_outer=cfg.block_m, block_inner=cfg.block_n,
        )
        qk_scale, cap_scale = _scales(inp.softmax_scale, inp.softcap)
        want_max = max_logits is not None
        tile_max = torch.empty((wl.num_tiles, hq) if want_max else (1,), dtype=torch.float32, device=q.device)
        grid = (wl.num_tiles, hq)
        fwd_mod.ffa_fwd_kernel[grid](
            q, k, v,
            out, lse, tile_max,
            wl.tile_ptr, _padded_pieces(wl), wl.tile_order,
            *_row_head_strides(q, k, v, out, lse),
            sq, hq, hq // hk,
            qk_scale, cap_scale,
            HEAD_DIM=d, D_PAD=configs.padded_head_dim(d),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            SOFTCAP=inp.softcap > 0.0, MAX_LOGITS=want_max, FRESH=bool(fresh),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        if want_max:
            torch.maximum(max_logits, tile_max.amax(dim=0), out=max_logits)

    # -- backward --------------------------------------------------------------------------
    def backward(
        self,
        inp: FFAInputs,
        dout: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        delta: torch.Tensor,
        dq: torch.Tensor,
        dk: torch.Tensor,
        dv: torch.Tensor,
        *,
        fresh: bool = False,
    ) -> None:
        _, bwd_mod = _kernels()
        q, k, v = inp.q, inp.k, inp.v
        sq, hq, d = q.shape
        sk, hk = k.shape[0], k.shape[1]
        if sq == 0 or sk == 0 or inp.num_slices == 0:
            if fresh:
                for g in (dq, dk, dv):
                    g.zero_()
            return
        if dout.dtype != q.dtype or dout.stride(-1) != 1:
            dout = dout.to(q.dtype).contiguous()
        qk_scale, cap_scale = _scales(inp.softmax_scale, inp.softcap)
        softcap = inp.softcap > 0.0
        d_pad = configs.padded_head_dim(d)
        group = hq // hk

        fused = configs.fused_bwd(inp.deterministic)
        dq_out = dq
        if fused and fresh:
            # atomic dq needs a zeroed fp32 accumulator; converted into the caller's dq at the end
            dq = torch.zeros(dq.shape, dtype=torch.float32, device=dq.device)
        if not fused:
            cfg = configs.pick("bwd_dq", d, _rows_per_slice(inp))
            wl = cached_work_list(
                inp.q_ranges, inp.k_ranges, inp.attn_type_map,
                outer_len=sq, block_outer=cfg.block_m, block_inner=cfg.block_n,
            )
            bwd_mod.ffa_bwd_dq_kernel[(wl.num_tiles, hq)](
                q, k, v, dout, lse, delta, dq,
                wl.tile_ptr, _padded_pieces(wl), wl.tile_order,
                *_row_head_strides(q, k, v, dout, lse, delta, dq),
                sq, group,
                inp.softmax_scale, qk_scale, cap_scale,
                HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SOFTCAP=softcap,
                FRESH=bool(fresh),
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )

        cfg = configs.pick("bwd_dkdv", d, _rows_per_slice(inp))
        wl = cached_work_list(
            inp.q_ranges, inp.k_ranges, inp.attn_type_map,
            outer_len=sk, block_outer=cfg.block_n, block_inner=cfg.block_m, transpose=True,
        )
        bwd_mod.ffa_bwd_dkdv_kernel[(wl.num_tiles, hk)](
            q, k, v, dout, lse, delta, dk, dv, dq,
            wl.tile_ptr, _padded_pieces(wl), wl.tile_order,
            *_row_head_strides(q, k, v, dout, lse, delta, dk, dv, dq),
            sk, group,
            inp.softmax_scale, qk_scale, cap_scale,
            HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SOFTCAP=softcap,
            FUSED_DQ=fused, FRESH=bool(fresh),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        if dq is not dq_out:
            dq_out.copy_(dq)
