"""The QO-comm runtime (MAGI_ATTENTION_QO_COMM=1): one host stage plus one remote stage whose
cells may run on a rank that owns neither their q nor their k (design §4, §5.6).

Why a separate runtime: the dynamic solver moves Q as well as K/V, so partial *outputs* travel
back to their owners. Forward: group_cast Q (``q_cast``) and fused K/V (``kv_cast``) into the
remote buffers while the host FFA runs, remote FFA into a fresh partial out/lse over the remote-Q
buffer, then ``group_reduce(reduce_op="lse")`` (``q_reduce``) merges each partial row into its
owner's out/lse. The sink is applied once, on the owner, after the merge; max_logits is
all-reduced with MAX. Backward: q, out, dout (fused) and lse are cast with ``q_cast``, K/V with
``kv_cast``, the host and remote FFA backward run, and partial dq / dK/dV return with sum reduces
(``q_reduce`` / ``kv_reduce``). The cast lists may send a rank's rows to itself (the solver's
calc_local_range), so the remote calc runs in one coordinate system.

Flattened head groups (MAGI_ATTENTION_FLATTEN_HEAD_GROUPS=1): the solver works on ``G =
num_heads_kv`` copies of the sequence; local tensors are viewed group-major, q ``[S, hq, d] ->
[G*S, hq/G, d]`` and k/v ``[S, G, d] -> [G*S, 1, d]``, and the results are folded back.

fp64 inputs (reference runs): grpcoll's lse reduce carries fp32 lse only, so fp64 partials go
back with a group_cast (the reduce's transpose) and are lse-merged on the owner in fp64.

Shape legend: S local tokens, Rq / Rk rows of the remote-Q / remote-KV buffers, hq/hk heads.
"""

from __future__ import annotations

from typing import Any

import torch

from magi_attention import _compat
from magi_attention.env import EnvFlags
from magi_attention.errors import MagiAttentionError
from magi_attention.runtime._common import (
    _acc_dtype,
    _Calc,
    _default_scale,
    _FFARuntimeMixin,
    _save_for_backward,
    _saved_inputs,
    kernel_backend,
)

__all__ = ["QOCommRuntime", "QOCommFunc", "qo_comm_attn_func", "plan_stats"]


def plan_stats(plan: Any, rank: int) -> dict:
    """Debug numbers of a DynamicPlan: every rank's area / comm plus this rank's buffers."""
    rp = plan.rank_plan(rank)
    return {
        "alg": plan.alg, "feasible": bool(plan.feasible), "cost": float(plan.cost),
        "num_head_groups": int(plan.num_head_groups),
        "per_rank_area": list(plan.per_rank_area), "per_rank_comm": list(plan.per_rank_comm),
        "per_rank_comm_q": list(plan.per_rank_comm_q),
        "per_rank_comm_kv": list(plan.per_rank_comm_kv),
        "host_area": int(rp.host_calc.area), "remote_area": int(rp.remote_calc.area),
        "num_remote_q_tokens": int(rp.num_remote_q_tokens),
        "num_remote_kv_tokens": int(rp.num_remote_kv_tokens),
    }


# ---------------------------------------------------------------- head-group layout
def _to_groups(x: torch.Tensor, g: int) -> torch.Tensor:
    """[S, h, ...] -> [g*S, h/g, ...] group-major (a view-free copy when g > 1)."""
    if g == 1:
        return x
    s, h = x.shape[:2]
    return x.reshape(s, g, h // g, *x.shape[2:]).transpose(0, 1).reshape(g * s, h // g,
                                                                           *x.shape[2:])


def _from_groups(x: torch.Tensor, g: int) -> torch.Tensor:
    """[g*S, h', ...] -> [S, g*h', ...] (inverse of _to_groups)."""
    if g == 1:
        return x
    s, h = x.shape[0] // g, x.shape[1]
    return x.reshape(g, s, h, *x.shape[2:]).transpose(0, 1).reshape(s, g * h, *x.shape[2:])


def _lse_merge_rows(out: torch.Tensor, lse: torch.Tensor, rows: torch.Tensor,
                    r_out: torch.Tensor, r_lse: torch.Tensor) -> None:
    """In place: lse-merge partials (r_out [N,h,d], r_lse [N,h]) into out/lse at ``rows`` [N].

    A row with every term at -inf ends as out 0, lse -inf (design §5.3).
    """
    if rows.numel() == 0:
        return
    m = lse.clone().scatter_reduce_(0, rows.unsqueeze(-1).expand_as(r_lse), r_lse, "amax",
                                    include_self=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w_self = torch.exp(lse - m)
    w_recv = torch.exp(r_lse - m[rows])
    wsum = w_self.clone().index_add_(0, rows, w_recv)
    num = (out * w_self.unsqueeze(-1)).index_add_(0, rows, r_out * w_recv.unsqueeze(-1))
    safe = torch.where(wsum > 0, wsum, torch.ones_like(wsum))
    out.copy_(torch.where((wsum > 0).unsqueeze(-1), num / safe.unsqueeze(-1),
                          torch.zeros_like(num)))
    lse.copy_(torch.where(wsum > 0, m + torch.log(safe), torch.full_like(m, float("-inf"))))


class QOCommRuntime(_FFARuntimeMixin):
    """Runs one rank's part of a magi_solver DynamicPlan (one remote stage).

    ``plan_stats`` (dict) reports every rank's area and received tokens and this rank's remote
    buffer sizes, for debugging and benchmarks.
    """

    num_stages = 1

    def __init__(self, plan: Any, rank: int, cp_group: Any, flags: EnvFlags,
                 device: torch.device, comm_kwargs: dict | None = None):
        rp = plan.rank_plan(rank)
        self.rank_plan = rp
        self.rank = rank
        self.cp_group = cp_group
        self.flags = flags
        self.device = device
        self.comm_kwargs = dict(comm_kwargs or {})
        self.groups = int(plan.num_head_groups)
        self.host_calc = _Calc(rp.host_calc)
        self.remote_calc = _Calc(rp.remote_calc)
        self.n_rq = int(rp.num_remote_q_tokens)
        self.n_rk = int(rp.num_remote_kv_tokens)
        self.q_cast, self.kv_cast = rp.q_cast, rp.kv_cast
        self.q_reduce, self.kv_reduce = rp.q_reduce, rp.kv_reduce
        self.backend = kernel_backend(flags)
        self.plan_stats = plan_stats(plan, rank)
        self._merge_rows: torch.Tensor | None = None

    def __repr__(self) -> str:
        s = self.plan_stats
        return (f"QOCommRuntime(rank={self.rank}, alg={s['alg']}, host_area={s['host_area']}, "
                f"remote_area={s['remote_area']}, remote_q={self.n_rq}, remote_kv={self.n_rk}, "
                f"head_groups={self.groups})")

    # ---------------------------------------------------------------- communication
    def _cast(self, x: torch.Tensor, args: Any, n_out: int, times: int = 1):
        """group_cast ``x`` (``times`` same-layout blocks stacked on dim 0) into a fresh buffer."""
        buf = x.new_empty((times * n_out, *x.shape[1:]))
        work = _compat.grpcoll.group_cast(
            input=x.contiguous(), output=buf,
            input_split_sizes=list(args.input_split_sizes) * times,
            output_split_sizes=list(args.output_split_sizes) * times,
            dst_indices=[list(d) for d in args.dst_indices] * times,
            src_index=list(args.src_index) * times,
            group=self.cp_group, async_op=True, **self.comm_kwargs)
        return work, buf

    def _reduce_sum(self, x: torch.Tensor, out: torch.Tensor, args: Any, times: int,
                    comm_dtype: torch.dtype | None):
        """Sum partial rows ``x`` (remote buffer layout) into their owners' ``out`` (async)."""
        return _compat.grpcoll.group_reduce(
            input=x, output=out,
            input_split_sizes=list(args.input_split_sizes) * times,
            output_split_sizes=list(args.output_split_sizes) * times,
            dst_index=list(args.dst_index) * times,
            src_indices=[list(s) for s in args.src_indices] * times,
            group=self.cp_group, async_op=True, reduce_op="sum", comm_dtype=comm_dtype,
            **self.comm_kwargs)

    def _reduce_lse(self, r_out, r_lse, out, lse, comm_dtype) -> None:
        """Merge the remote partial out/lse into the owners' out/lse (q_reduce, "lse")."""
        red = self.q_reduce
        if lse.dtype == torch.float32:
            work = _compat.grpcoll.group_reduce(
                input=r_out, output=out, input_split_sizes=list(red.input_split_sizes),
                output_split_sizes=list(red.output_split_sizes), dst_index=list(red.dst_index),
                src_indices=[list(s) for s in red.src_indices], group=self.cp_group,
                async_op=True, reduce_op="lse", comm_dtype=comm_dtype, input_lse=r_lse,
                output_lse=lse, **self.comm_kwargs)
            work.wait_post_process(out, lse)
            return
        # fp64: cast every partial to its owner (one split per contributor), merge locally
        ins, dst = list(red.input_split_sizes), [[d] for d in red.dst_index]
        outs, srcs = [], []
        for size, contributors in zip(red.output_split_sizes, red.src_indices):
            for r in contributors:
                outs.append(int(size))
                srcs.append(int(r))
        n = sum(outs)
        packed = torch.cat([r_out, r_lse.unsqueeze(-1)], -1)  # [Rq, h, dv + 1]
        buf = packed.new_empty((n, *packed.shape[1:]))
        work = _compat.grpcoll.group_cast(
            input=packed.contiguous(), output=buf, input_split_sizes=ins, output_split_sizes=outs,
            dst_indices=dst, src_index=srcs, group=self.cp_group, async_op=True,
            **self.comm_kwargs)
        buf = work.wait_post_process(buf)
        _lse_merge_rows(out, lse, self._rows_of_merge(out.device), buf[..., :-1], buf[..., -1])

    def _rows_of_merge(self, device: torch.device) -> torch.Tensor:
        """Local row of each received partial row in the fp64 lse-merge path (built once)."""
        if self._merge_rows is None:
            red, rows, off = self.q_reduce, [], 0
            for size, contributors in zip(red.output_split_sizes, red.src_indices):
                for _ in contributors:
                    rows.append(torch.arange(off, off + int(size)))
                off += int(size)
            self._merge_rows = (torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
                                ).to(device)
        return self._merge_rows

    # ---------------------------------------------------------------- forward
    def forward(self, q, k, v, sink, scale: float, softcap: float, return_max_logits: bool):
        """Returns (out [S,hq,dv] q.dtype, lse [S,hq] fp32|fp64, max_logits [hq] | None)."""
        g = self.groups
        if g > 1 and (sink is not None or return_max_logits):
            raise MagiAttentionError(
                "calc_attn(): MAGI_ATTENTION_FLATTEN_HEAD_GROUPS=1 does not support "
                f"{'sink' if sink is not None else 'return_max_logits=True'}; unset the flag or "
                "drop the sink / max_logits")
        qg, kg, vg = _to_groups(q, g), _to_groups(k, g), _to_groups(v, g)
        w_q, rq = self._cast(qg, self.q_cast, self.n_rq)
        w_kv, rkv = self._cast(torch.cat([kg, vg], 0), self.kv_cast, self.n_rk, times=2)

        acc = _acc_dtype(q.dtype)
        sq, hq = qg.shape[:2]
        dv = vg.shape[-1]
        out = torch.zeros((sq, hq, dv), dtype=acc, device=q.device)
        lse = torch.full((sq, hq), float("-inf"), dtype=acc, device=q.device)
        max_logits = (torch.full((q.shape[1],), float("-inf"), dtype=acc, device=q.device)
                      if return_max_logits else None)
        self._fwd(qg, kg, vg, self.host_calc, out, lse, max_logits, scale, softcap)

        rq = w_q.wait_post_process(rq)
        rkv = w_kv.wait_post_process(rkv)
        r_out = torch.zeros((self.n_rq, hq, dv), dtype=acc, device=q.device)
        r_lse = torch.full((self.n_rq, hq), float("-inf"), dtype=acc, device=q.device)
        self._fwd(rq, rkv[:self.n_rk], rkv[self.n_rk:], self.remote_calc, r_out, r_lse,
                  max_logits, scale, softcap)
        hp = self.flags.fwd_high_precision_reduce or acc == torch.float64
        self._reduce_lse(r_out, r_lse, out, lse, None if hp else q.dtype)

        out, lse = _from_groups(out, g), _from_groups(lse, g)
        self._finish_forward(out, lse, sink, max_logits)
        return out.to(q.dtype), lse, max_logits

    # ---------------------------------------------------------------- backward
    def backward(self, dout, q, k, v, out, lse, sink, scale: float, softcap: float,
                 need_dsink: bool):
        """Returns (dq, dk, dv, dsink | None), local to this rank."""
        g = self.groups
        acc = _acc_dtype(q.dtype)
        dout = dout.to(out.dtype).contiguous()
        qg, kg, vg = _to_groups(q, g), _to_groups(k, g), _to_groups(v, g)
        og, dog, lseg = _to_groups(out, g), _to_groups(dout, g), _to_groups(lse, g)
        fused = qg.shape[1:] == og.shape[1:] and qg.dtype == og.dtype
        if fused:
            w_qod, r_qod = self._cast(torch.cat([qg, og, dog], 0), self.q_cast, self.n_rq, 3)
        else:
            w_qod = [self._cast(t, self.q_cast, self.n_rq) for t in (qg, og, dog)]
        w_lse, r_lse = self._cast(lseg, self.q_cast, self.n_rq)
        w_kv, r_kv = self._cast(torch.cat([kg, vg], 0), self.kv_cast, self.n_rk, times=2)

        delta = self._delta(og, dog)
        dq = torch.zeros(qg.shape, dtype=acc, device=q.device)
        sk = kg.shape[0]
        dkv = torch.zeros((2 * sk, *kg.shape[1:]), dtype=acc, device=k.device)
        self._bwd(dog, qg, kg, vg, og, lseg, delta, self.host_calc, dq, dkv[:sk], dkv[sk:],
                  scale, softcap)

        n = self.n_rq
        if fused:
            r_qod = w_qod.wait_post_process(r_qod)
            r_q, r_o, r_do = r_qod[:n], r_qod[n:2 * n], r_qod[2 * n:]
        else:
            r_q, r_o, r_do = (w.wait_post_process(b) for w, b in w_qod)
        r_lse = w_lse.wait_post_process(r_lse)
        r_kv = w_kv.wait_post_process(r_kv)
        r_delta = self._delta(r_o, r_do)
        r_dq = torch.zeros((n, *qg.shape[1:]), dtype=acc, device=q.device)
        r_dkv = torch.zeros((2 * self.n_rk, *kg.shape[1:]), dtype=acc, device=k.device)
        self._bwd(r_do, r_q, r_kv[:self.n_rk], r_kv[self.n_rk:], r_o, r_lse, r_delta,
                  self.remote_calc, r_dq, r_dkv[:self.n_rk], r_dkv[self.n_rk:], scale, softcap)
        hp = self.flags.bwd_high_precision_reduce or acc == torch.float64
        w_dq = self._reduce_sum(r_dq, dq, self.q_reduce, 1, None if hp else q.dtype)
        w_dkv = self._reduce_sum(r_dkv, dkv, self.kv_reduce, 2, None if hp else k.dtype)

        dsink = None
        if need_dsink and sink is not None:
            dsink = self._dsink(sink, lse, out.to(acc), dout)
        dq = w_dq.wait_post_process(dq)
        dkv = w_dkv.wait_post_process(dkv)
        dq = _from_groups(dq, g)
        dk, dv = _from_groups(dkv[:sk], g), _from_groups(dkv[sk:], g)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dsink


class QOCommFunc(torch.autograd.Function):
    """Autograd wrapper: (q, k, v, sink) -> (out, lse, max_logits); lse/max_logits carry no grad."""

    @staticmethod
    def forward(ctx, q, k, v, sink, runtime: QOCommRuntime, scale, softcap, return_max_logits):
        out, lse, max_logits = runtime.forward(q, k, v, sink, scale, softcap, return_max_logits)
        _save_for_backward(ctx, q, k, v, sink, out, lse, max_logits, runtime, scale, softcap)
        return out, lse, max_logits

    @staticmethod
    def backward(ctx, dout, _dlse, _dml):
        q, k, v, out, lse, sink, need_dsink = _saved_inputs(ctx)
        dq, dk, dv, dsink = ctx.runtime.backward(
            dout, q, k, v, out, lse, sink, ctx.scale, ctx.softcap, need_dsink=need_dsink)
        if dsink is not None:
            dsink = dsink.to(sink.dtype)
        return dq, dk, dv, dsink, None, None, None, None


def qo_comm_attn_func(q, k, v, runtime: QOCommRuntime, sink=None, softmax_scale=None,
                      softcap: float = 0.0, return_max_logits: bool = False):
    """Run the QO-comm runtime through autograd; returns (out, lse, max_logits | None)."""
    return QOCommFunc.apply(q, k, v, sink, runtime, _default_scale(q, softmax_scale),
                            float(softcap), bool(return_max_logits))
