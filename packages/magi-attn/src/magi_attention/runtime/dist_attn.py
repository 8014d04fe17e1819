"""The distributed attention runtime: a host stage plus ``degree`` remote K/V stages.

Forward (design §5.2): each stage receives K and V into one ``[2*R, hk, d]`` buffer (k rows, then
v rows) with a single group_cast: of the list [k, v] where magi_grpcoll takes lists (interface
1.2; no concatenation of k and v first), else of ``cat([k, v])`` with doubled split lists; the
dK/dV reduce always runs on the doubled lists (the payload is one buffer). Every stage's cast is issued
up front, asynchronously (stage by stage when CUDA_DEVICE_MAX_CONNECTIONS=1 or with native
collectives), so on CUDA the comm stream overlaps the FFA of the previous stage and on CPU gloo's
worker threads do; on CUDA the up-front casts are issued just after the host stage's launch and wait
for K/V only (``HOST_STAGE_FIRST``). Partial
results are merged by ffa_forward's accumulation into one out/lse pair; the sink is applied once
at the end (equivalent to applying it after the host stage, as the merge is associative);
max_logits is all-reduced with MAX.

Backward (design §5.4): K/V are fetched again per stage (or the last stage's K/V are kept under
MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE), dq accumulates in place, and each stage's partial dK/dV is
group_reduced (sum) back to its owners asynchronously while the next stage computes. Under
HIDE_TAIL_REDUCE the host stage comes last, so the last remote reduce travels while it computes;
with one remote stage (and a2av or hier collectives) that reduce folds into the host's dK/dV when
waited, after the host stage.

Shape legend: Sq/Sk local tokens, R tokens received in a stage, hq/hk heads, d head dim.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist

from magi_attention import _compat
from magi_attention.env import EnvFlags
from magi_attention.runtime import graphs as _graphs
from magi_attention.runtime import host_split as _host_split
from magi_attention.runtime._common import (
    _acc_dtype,
    _Calc,
    _default_scale,
    _FFARuntimeMixin,
    _save_for_backward,
    _saved_inputs,
    binds_ahead,
    cast_lists,
    kernel_backend,
    native_folds_at_wait,
    native_holds_tensors,
    prepares_masks,
    reduce_folds_at_wait,
    value_dtype,
    writes_buffers,
)

__all__ = ["DistAttnRuntime", "DistAttnFunc", "dist_attn_func"]

#: On CUDA, the first calc (the host stage, or the kept tail) is launched before the K/V casts issued
#: up front, and those casts wait only for the inputs being ready (``_InputsReady``), not for the
#: calc launched before them. Why: a native cast costs 0.3-0.5 ms of host time (more when it runs
#: eagerly), and launching the host stage after it left the compute stream idle that long whenever
#: the host was not ahead of the GPU: at the start of every forward and backward after a sync,
#: and on every layer of a 4-layer varlen-causal step on 2 x H200 (``profile_dist --trace``: the
#: host stage's FA4 kernel started ~0.5 ms after the previous layer's merge). Off: the old order.
HOST_STAGE_FIRST = True

#: On: the backward's host stage runs as two calls on two blocks of rows where its slices allow
#: (host_split.py). The block that no dK/dV reduce folds into runs after the remote stages, while
#: the last reduce folds into the other rows, instead of leaving the compute stream idle for that
#: reduce at the end of every backward. Off by default: on 2 x H200 (64k varlen causal, fa4, native)
#: it hid most of the exposed reduce, but FA4's backward took 5-7% longer as two calls, and the
#: step was no faster (BENCHMARKS.md, stop 37).
SPLIT_HOST_BACKWARD = False


#: bytes per element of the K/V casts' rows and of the dK/dV reduces' rows, as the latest runtime
#: calls ran them (0: none yet): what ``prepare_ahead`` sizes a prefetched runtime's native copy
#: tables for, since a key names the heads and the head dim but not the dtype
recent_itemsizes = {"cast": 0, "reduce": 0}


def _empty_or(given: torch.Tensor | None, shape, dtype: torch.dtype, device) -> torch.Tensor:
    """``given`` (an output the caller allocated) when it has ``dtype``, else a new empty buffer."""
    if given is not None and given.dtype == dtype:
        return given
    return torch.empty(shape, dtype=dtype, device=device)


def _left_in(into: tuple | None, results: tuple) -> tuple:
    """``results``, or where the caller gave ``into`` (tensors of the same shapes), copied into those
    that are not already the results themselves and ``into`` returned."""
    if into is None:
        return results
    for dst, src in zip(into, results):
        if dst is not src:
            dst.copy_(src)
    return into


class _InputsReady:
    """An event recorded on the compute stream once the casts' inputs are ready, and a side stream
    that waits on it: a collective issued under ``issue()`` waits for that event only (collectives
    wait for the stream current at their call), so the calc launched after the event and before the
    collective does not delay it.

    Only the casts issued before the first calc go through it; their receive buffers are allocated
    on the compute stream before that calc is launched (``_issue_first_casts``). Temporaries a
    collective implementation allocates under it belong to the side stream, whose next use always
    waits on a later event of the compute stream, recorded after every read of them that was queued.
    """

    _streams: dict = {}  # device -> the side stream (one per device, reused)

    def __init__(self, device: torch.device) -> None:
        self._compute = torch.cuda.current_stream(device)
        self._event = torch.cuda.Event()
        self._event.record(self._compute)
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device=device)
        self._stream = stream

    @contextmanager
    def issue(self):
        """Context under which a collective call waits for the inputs only (the compute stream is
        current again after it)."""
        self._stream.wait_event(self._event)
        torch.cuda.set_stream(self._stream)
        try:
            yield
        finally:
            torch.cuda.set_stream(self._compute)


class DistAttnRuntime(_FFARuntimeMixin):
    """Runs one rank's part of a DistAttnPlan; holds the comm args and slice tensors."""

    def __init__(self, rank_plan: Any, num_stages: int, cp_group: Any, flags: EnvFlags,
                 device: torch.device, comm_kwargs: dict | None = None, group_plans: list | None = None):
        """``group_plans``: every rank's plan (index = rank) when the solver built them all; the
        stages' comm plans then carry every rank's lists (``plans_take_group_lists``)."""
        self.rank_plan = rank_plan
        # every rank's stage casts, read once (not per stage plan built)
        self.group_casts = None if group_plans is None else [[st.cast for st in p.stages] for p in group_plans]
        self.num_stages = int(num_stages)
        self.cp_group = cp_group
        self.flags = flags
        self.device = device
        self.comm_kwargs = dict(comm_kwargs or {})
        if flags.native_grpcoll and native_holds_tensors():
            self.comm_kwargs["record_streams"] = False  # stable addresses (graphs.py); 2 x H200: no slower
        self.host_calc = _Calc(rank_plan.host_calc)
        self.stages = list(rank_plan.stages)
        self.stage_calcs = [_Calc(s.calc) for s in self.stages]
        self.backend = kernel_backend(flags)
        self.save_tail = flags.bwd_hide_tail_reduce and self.num_stages > 0
        self.stage_by_stage = flags.prefetch_stage_by_stage or flags.native_grpcoll
        self.cast_lists = cast_lists()
        self.writes = writes_buffers()  # calls write their buffers; out/dq in q's dtype where exact
        # hide tail with one remote stage: its reduce folds into the host's dK/dV at its wait, after
        # the host stage (a2av and hier fold at the wait anyway; native too, unless its FOLD_AT_WAIT
        # switch is off)
        self.fold_tail_at_wait = (self.save_tail and self.writes and reduce_folds_at_wait()
                                  and (not flags.native_grpcoll or native_folds_at_wait()))
        # kernel calls reaching this rank's out/dq: the non-empty host and stage calcs
        self.contributors = sum(not c.empty for c in [self.host_calc, *self.stage_calcs])
        self._plans: dict[int, tuple[Any, Any]] = {}
        self._host_splits: dict[tuple[int, int], Any] = {}  # (Sq, Sk) -> _split_host's result
        # whole calls replayed from CUDA graphs (graphs.py): the native collectives' launches are
        # capturable, a2a-v's NCCL calls are not tried
        self.graphs = _graphs.make_runtime_graphs(flags, cp_group, device, self.num_stages)

    def prepare_ahead(self, seqlen: int, row_elems: int) -> None:
        """Do now the host work of this runtime's first calls (on the prefetch thread: prefetch.py):
        every stage's comm plans; with native collectives their bindings and copy tables for rows
        of ``row_elems`` elements at the itemsizes the latest calls used; each kernel call's mask
        translation for a local q and k of ``seqlen`` rows. Device data is uploaded on the current
        stream. Talks to no other rank (the bindings come from every rank's plan)."""
        bind = self.flags.native_grpcoll and binds_ahead()  # plans without every rank's lists decline
        for s in range(self.num_stages):
            cast, reduce = self._stage_plans(s, self.device)
            if bind:
                for plan, kind in ((cast, "cast"), (reduce, "reduce")):
                    size = recent_itemsizes[kind] * row_elems
                    plan.bind_ahead(self.cp_group, impl="native", row_bytes=(size,) if size else ())
        if prepares_masks():
            calls = [(self.host_calc, seqlen)] + [(c, int(st.num_recv_tokens))
                                                  for c, st in zip(self.stage_calcs, self.stages)]
            for calc, seqlen_k in calls:
                if not calc.empty:
                    self._bound(calc).prepare(seqlen, seqlen_k, self.device)

    # ---------------------------------------------------------------- communication
    def _stage_plans(self, s: int, device: torch.device):
        """Stage ``s``'s K/V cast plan (of k and v as a list, or of the doubled split lists) and its
        dK/dV reduce (the transpose of the doubled cast), built once.

        Why plans and not the functional group_cast: the functional API keys its plan cache on the
        split lists, which costs hashing them (and building the lists) on every call.
        """
        plans = self._plans.get(s)
        if plans is None:
            c = self.stages[s].cast
            rank, world = dist.get_rank(self.cp_group), dist.get_world_size(self.cp_group)

            def lists(cast, times: int):
                return (list(cast.input_split_sizes) * times, list(cast.output_split_sizes) * times,
                        [list(d) for d in cast.dst_indices] * times, list(cast.src_index) * times)

            def build(times: int):
                extra = {} if self.group_casts is None else {
                    "group_lists": [lists(casts[s], times) for casts in self.group_casts]}
                return _compat.grpcoll.GroupCastPlan.build(*lists(c, times), rank=rank, world_size=world,
                                                           device=device, **extra)

            doubled = build(2)
            plans = self._plans[s] = (build(1) if self.cast_lists else doubled, doubled.transpose())
        return plans

    def _kv_source(self, k: torch.Tensor, v: torch.Tensor):
        """What the stages' casts read: [k, v] (contiguous: k and v are often views of one
        projection), or one ``cat([k, v])`` shared by every stage."""
        return [k.contiguous(), v.contiguous()] if self.cast_lists else torch.cat([k, v], 0)

    def _recv_buffer(self, kv, s: int) -> torch.Tensor:
        """Stage ``s``'s K/V receive buffer [2R, hk, d] (k rows, then v rows), on the current stream."""
        k = kv[0] if isinstance(kv, (list, tuple)) else kv
        return k.new_empty((2 * int(self.stages[s].num_recv_tokens), *k.shape[1:]))

    def _cast_kv(self, kv, s: int, ready: _InputsReady | None = None, buf: torch.Tensor | None = None):
        """Issue stage ``s``'s K/V group_cast from ``_kv_source`` into ``buf`` (made here if not given),
        after ``ready``'s event only when given; returns (work, buf). Read the buffer after
        ``work.wait_post_process()``."""
        buf = self._recv_buffer(kv, s) if buf is None else buf
        recent_itemsizes["cast"] = buf.element_size()
        n_recv = buf.shape[0] // 2
        dst = [buf[:n_recv], buf[n_recv:]] if self.cast_lists else buf
        plan = self._stage_plans(s, buf.device)[0]
        with ready.issue() if ready is not None else nullcontext():
            work = plan.cast(kv, dst, self.cp_group, async_op=True, **self.comm_kwargs)
        return work, buf

    def _issue_first_casts(self, kv, stages: list[int], works: dict, first_calc_empty: bool,
                           given: dict | None = None):
        """Issue the casts of ``stages`` (those wanted before the first calc) into ``works``; returns
        a function to call right after launching the first calc. On CUDA with ``HOST_STAGE_FIRST``
        (and a first calc that launches anything) the casts are issued by that function, after
        the calc's launch but waiting only for the inputs; otherwise here, before it. ``given``:
        receive buffers the caller made, by stage."""
        given = given or {}
        if HOST_STAGE_FIRST and stages and not first_calc_empty and self.device.type == "cuda":
            ready = _InputsReady(self.device)
            # The receive buffers are allocated now, before the first calc: the casts wait for the
            # inputs only, so a buffer made after the calc's launch could be a block the calc's own
            # temporaries just freed (the caching allocator reuses blocks in the order of the stream
            # that freed them), which the cast would then overwrite while the calc still uses it (dQ
            # went NaN so inside a CUDA graph capture, where the pool holds nothing else).
            bufs = {s: given[s] if s in given else self._recv_buffer(kv, s) for s in stages}

            def issue_after_first_calc():
                for s in stages:
                    works[s] = self._cast_kv(kv, s, ready, bufs[s])

            return issue_after_first_calc
        for s in stages:
            works[s] = self._cast_kv(kv, s, buf=given.get(s))
        return lambda: None

    def _reduce_dkv(self, dkv: torch.Tensor, out: torch.Tensor, s: int, fold_at_wait: bool = False):
        """Issue stage ``s``'s transpose: sum partial dK/dV [2R] into owners' ``out`` [2Sk]
        (``fold_at_wait``: ``out`` is still being written; it is read when the work is waited)."""
        extra = {"fold_at_wait": True} if fold_at_wait else {}
        recent_itemsizes["reduce"] = dkv.element_size()
        return self._stage_plans(s, dkv.device)[1].reduce(dkv, out, self.cp_group, async_op=True,
                                                          reduce_op="sum", **extra, **self.comm_kwargs)

    # ---------------------------------------------------------------- forward
    def forward(self, q, k, v, sink, scale: float, softcap: float, return_max_logits: bool):
        """Returns (out [Sq,hq,d] q.dtype, lse [Sq,hq] fp32|fp64, max_logits [hq] | None, tail kv);
        from a CUDA graph where ``self.graphs`` allows (no sink, no max_logits: nothing but out and
        lse leaves the call, and both are allocated here, outside the graph)."""
        if self.graphs is None or sink is not None or return_max_logits:
            return self._forward(q, k, v, sink, scale, softcap, return_max_logits)
        out = torch.empty((*q.shape[:2], v.shape[-1]), dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:2], dtype=_acc_dtype(q.dtype), device=q.device)
        # a kept tail outlives the call (until the backward): its receive buffer is made here, outside
        # the graph's pool, as the outputs are
        tail = self._recv_buffer(k, self.num_stages - 1) if self.save_tail else None
        kept = (out, lse) if tail is None else (out, lse, tail)
        key = ("fwd", scale, softcap, *(_graphs.tensor_key(t) for t in (q, k, v, *kept)))
        self.graphs.run(key, lambda: self._forward(q, k, v, None, scale, softcap, False, into=(out, lse),
                                                   tail_into=tail))
        return out, lse, None, tail

    def _forward(self, q, k, v, sink, scale: float, softcap: float, return_max_logits: bool, into=None,
                 tail_into=None):
        """The forward; ``into``: (out, lse) to leave the results in (returned as they are);
        ``tail_into``: the last stage's receive buffer, when it is kept (hide tail) and made by the caller."""
        D = self.num_stages
        kv = self._kv_source(k, v) if D > 0 else None
        works: dict[int, Any] = {}
        given = {} if tail_into is None else {D - 1: tail_into}
        after_host = self._issue_first_casts(kv, list(range(D if not self.stage_by_stage else min(D, 1))),
                                             works, self.host_calc.empty, given)

        acc = _acc_dtype(q.dtype)
        sq, hq, d = q.shape
        # Written by the first call that reaches them, in q's dtype where that is exact (see
        # value_dtype); the sink and max_logits still work on fp32 accumulators.
        direct = self.writes and sink is None and not return_max_logits
        if direct:
            given_out, given_lse = into if into is not None else (None, None)
            out = _empty_or(given_out, (sq, hq, v.shape[-1]), value_dtype(q.dtype, self.contributors), q.device)
            lse = _empty_or(given_lse, (sq, hq), acc, q.device)
        else:
            out = torch.zeros((sq, hq, v.shape[-1]), dtype=acc, device=q.device)
            lse = torch.full((sq, hq), float("-inf"), dtype=acc, device=q.device)
        max_logits = (torch.full((hq,), float("-inf"), dtype=acc, device=q.device)
                      if return_max_logits else None)
        unwritten = direct  # out/lse still hold nothing

        def attend(k_, v_, calc):
            nonlocal unwritten
            self._fwd(q, k_, v_, calc, out, lse, max_logits, scale, softcap, overwrite=unwritten)
            unwritten = unwritten and calc.empty

        attend(k, v, self.host_calc)
        after_host()
        tail = None
        for s in range(D):
            work, kv_s = works.pop(s)
            work.wait_post_process()
            if self.stage_by_stage and s + 1 < D:
                works[s + 1] = self._cast_kv(kv, s + 1, buf=given.get(s + 1))
            r = kv_s.shape[0] // 2
            attend(kv_s[:r], kv_s[r:], self.stage_calcs[s])
            if self.save_tail and s == D - 1:
                tail = kv_s
        if unwritten:  # no call reached this rank's rows
            out.zero_()
            lse.fill_(float("-inf"))
        self._finish_forward(out, lse, sink, max_logits)
        out, lse = _left_in(into, (out.to(q.dtype), lse))
        return out, lse, max_logits, tail

    # ---------------------------------------------------------------- backward
    def backward(self, dout, q, k, v, out, lse, sink, tail, scale: float, softcap: float,
                 need_dsink: bool):
        """Returns (dq, dk, dv, dsink | None), local to this rank; from a CUDA graph where
        ``self.graphs`` allows (no sink: only dq and dK/dV, allocated here, leave the call)."""
        if self.graphs is None or sink is not None:
            return self._backward(dout, q, k, v, out, lse, sink, tail, scale, softcap, need_dsink)
        sk = k.shape[0]
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dkv = torch.empty((2 * sk, *k.shape[1:]), dtype=k.dtype, device=k.device)
        read = (dout, q, k, v, out, lse) + (() if tail is None else (tail,))
        key = ("bwd", scale, softcap, *(_graphs.tensor_key(t) for t in (*read, dq, dkv)))
        self.graphs.run(key, lambda: self._backward(dout, q, k, v, out, lse, None, tail, scale, softcap, False,
                                                    into=(dq, dkv)))
        return dq, dkv[:sk], dkv[sk:], None

    def _backward(self, dout, q, k, v, out, lse, sink, tail, scale: float, softcap: float,
                  need_dsink: bool, into=None):
        """The backward; ``into``: (dq, dK/dV [2 Sk]) to leave dq and dK/dV in (returned as views).

        With a magi_ffa that writes buffers (``writes_buffers``), the first call reaching dq writes
        it (in q's dtype where exact), the host calc writes this rank's dK/dV and each stage
        writes its dK/dV payload in the communication dtype, and the stages' reduces add into the
        host's dK/dV: no zero-fills, no fp32 copies of the payloads, no final casts.
        """
        D = self.num_stages
        acc = _acc_dtype(q.dtype)
        dout = dout.contiguous()
        delta = self._delta(out, dout)
        sk = k.shape[0]
        hp = self.flags.bwd_high_precision_reduce or acc == torch.float64
        comm_dtype = acc if hp else k.dtype  # the dK/dV payloads' dtype
        w = self.writes
        given_dq, given_dkv = into if into is not None else (None, None)
        if w:
            dq = _empty_or(given_dq, q.shape, value_dtype(q.dtype, self.contributors), q.device)
            dkv_host = _empty_or(given_dkv, (2 * sk, *k.shape[1:]), comm_dtype, k.device)
        else:
            dq = torch.zeros(q.shape, dtype=acc, device=q.device)
            dkv_host = torch.zeros((2 * sk, *k.shape[1:]), dtype=acc, device=k.device)

        split = None
        if self.save_tail and tail is not None:
            order = [D - 1] + list(range(D - 1)) + [None]
            fetched = list(range(D - 1))
        else:
            split = self._split_host(q.shape[0], sk) if w and D > 0 else None
            order = [None] + list(range(D)) + (["late"] if split is not None else [])
            fetched = list(range(D))
        # The reduces add into the host's dK/dV when the host calc has written them before the
        # first reduce is issued, or (hide tail, one stage) when the only reduce can be folded after
        # the host calc, at its wait: its rows travel during the host calc, and no zeroed buffer and
        # no final add are needed. a2av and hier fold at the wait anyway, so that is a pure saving;
        # so does native with its FOLD_AT_WAIT switch on, the default (every row pushed during the
        # host calc, the fold at the wait). Otherwise (host last, native with the switch off, or
        # the old interfaces) into a zeroed buffer.
        fold_late = self.fold_tail_at_wait and order == [0, None]
        reduce_into_host = w and (order[0] is None or fold_late)
        dkv_red = (dkv_host if reduce_into_host else
                   torch.zeros((2 * sk, *k.shape[1:]), dtype=comm_dtype, device=k.device)) if D > 0 else None
        kv = self._kv_source(k, v) if fetched else None
        works: dict[int, Any] = {}
        pending = list(fetched)
        n_issue = len(pending) if not self.stage_by_stage else min(1, len(pending))
        first = order[0]  # the host calc (None) or the kept tail: neither waits for a cast
        after_first = self._issue_first_casts(
            kv, pending[:n_issue], works,
            (self.host_calc if first is None else self.stage_calcs[first]).empty)
        next_issue = n_issue

        dq_unwritten = w
        reduces = []
        for i, s in enumerate(order):
            if s == "late":  # the block no reduce touches: its rows written again (dq maybe added)
                self._bwd_rows(split[1], dout, q, k, v, out, lse, delta, dq, dkv_host, scale, softcap)
                continue
            if s is None:
                names = (("dk", "dv") + (("dq",) if dq_unwritten else ())) if w else ()
                self._bwd(dout, q, k, v, out, lse, delta, self.host_calc if split is None else split[0], dq,
                          dkv_host[:sk], dkv_host[sk:], scale, softcap, overwrite=names)
                if i == 0:
                    after_first()
                if w and self.host_calc.empty:
                    dkv_host.zero_()
                dq_unwritten = dq_unwritten and self.host_calc.empty
                continue
            if s in works:
                work, kv_s = works.pop(s)
                work.wait_post_process()
                if next_issue < len(pending):
                    works[pending[next_issue]] = self._cast_kv(kv, pending[next_issue])
                    next_issue += 1
            else:
                kv_s = tail
            r = kv_s.shape[0] // 2
            calc = self.stage_calcs[s]
            if w:  # the payload, written by the call in the communication dtype
                dkv_s = (torch.empty if not calc.empty else torch.zeros)(
                    (2 * r, *k.shape[1:]), dtype=comm_dtype, device=k.device)
                names = ("dk", "dv") + (("dq",) if dq_unwritten else ())
            else:
                dkv_s = torch.zeros((2 * r, *k.shape[1:]), dtype=acc, device=k.device)
                names = ()
            self._bwd(dout, q, kv_s[:r], kv_s[r:], out, lse, delta, calc, dq,
                      dkv_s[:r], dkv_s[r:], scale, softcap, overwrite=names)
            if i == 0:
                after_first()
            dq_unwritten = dq_unwritten and calc.empty
            payload = dkv_s.to(comm_dtype)  # itself when already written in that dtype
            reduces.append(self._reduce_dkv(payload, dkv_red, s, fold_at_wait=fold_late))
        if dq_unwritten:  # no call reached this rank's rows
            dq.zero_()

        dsink = None
        if need_dsink and sink is not None:
            dsink = self._dsink(sink, lse, out.to(acc), dout)
        for work in reduces:
            work.wait_post_process(dkv_red)
        if dkv_red is None or dkv_red is dkv_host:
            dkv = dkv_host
        elif w:
            dkv = dkv_host.add_(dkv_red)
        else:
            dkv = dkv_host + dkv_red.to(acc)
        dq, dkv = _left_in(into, (dq, dkv))
        return dq.to(q.dtype), dkv[:sk].to(k.dtype), dkv[sk:].to(v.dtype), dsink

    @property
    def host_split_rows(self) -> list[tuple[int, int]]:
        """The late blocks of the backward's split host stage (rows), one per input shape that split."""
        return [split[1][1] for split in self._host_splits.values() if split is not None]

    def _split_host(self, sq: int, sk: int):
        """(early calc, (late calc, its rows, whether it adds into dq)) of the host stage
        (host_split.py), or None: made once per shape, and only with ``SPLIT_HOST_BACKWARD`` on."""
        if not SPLIT_HOST_BACKWARD or self.host_calc.empty or sq != sk:
            return None
        if (sq, sk) not in self._host_splits:
            busy = [_host_split.sent_rows(st.cast.input_split_sizes, st.cast.dst_indices) for st in self.stages]
            hc = self.host_calc
            cut = _host_split.split_host_rows(hc.q_ranges.numpy(), hc.k_ranges.numpy(), hc.types.numpy(), sq, busy)
            if cut is None:
                self._host_splits[(sq, sk)] = None
            else:  # the late call adds into dq rows a remote stage has added into, else writes them
                a, b = cut.late_rows
                adds_dq = any(bool(((c.q_ranges[:, 0] < b) & (c.q_ranges[:, 1] > a)).any())
                              for c in self.stage_calcs if not c.empty)
                self._host_splits[(sq, sk)] = (_Calc(cut.early), (_Calc(cut.late), cut.late_rows, adds_dq))
        return self._host_splits[(sq, sk)]

    def _bwd_rows(self, part, dout, q, k, v, out, lse, delta, dq, dkv_host, scale, softcap):
        """The late block of the split host stage: its calc on rows [a, b) of every tensor, its dK/dV
        rows written whole, its dq rows too unless a remote stage has added into them."""
        calc, (a, b), adds_dq = part
        sk = k.shape[0]
        self._bwd(dout[a:b], q[a:b], k[a:b], v[a:b], out[a:b], lse[a:b], None if delta is None else delta[a:b],
                  calc, dq[a:b], dkv_host[a:b], dkv_host[sk + a:sk + b], scale, softcap,
                  overwrite=("dk", "dv") if adds_dq else ("dq", "dk", "dv"))


class DistAttnFunc(torch.autograd.Function):
    """Autograd wrapper: (q, k, v, sink) -> (out, lse, max_logits); lse/max_logits carry no grad."""

    @staticmethod
    def forward(ctx, q, k, v, sink, runtime: DistAttnRuntime, scale, softcap, return_max_logits):
        out, lse, max_logits, tail = runtime.forward(q, k, v, sink, scale, softcap,
                                                     return_max_logits)
        _save_for_backward(ctx, q, k, v, sink, out, lse, max_logits, runtime, scale, softcap)
        ctx.tail = tail
        return out, lse, max_logits

    @staticmethod
    def backward(ctx, dout, _dlse, _dml):
        q, k, v, out, lse, sink, need_dsink = _saved_inputs(ctx)
        dq, dk, dv, dsink = ctx.runtime.backward(
            dout, q, k, v, out, lse, sink, ctx.tail, ctx.scale, ctx.softcap,
            need_dsink=need_dsink)
        ctx.tail = None
        if dsink is not None:
            dsink = dsink.to(sink.dtype)
        return dq, dk, dv, dsink, None, None, None, None


def dist_attn_func(q, k, v, runtime: DistAttnRuntime, sink=None, softmax_scale=None,
                   softcap: float = 0.0, return_max_logits: bool = False):
    """Run the runtime through autograd; returns (out, lse, max_logits | None)."""
    return DistAttnFunc.apply(q, k, v, sink, runtime, _default_scale(q, softmax_scale),
                              float(softcap), bool(return_max_logits))
