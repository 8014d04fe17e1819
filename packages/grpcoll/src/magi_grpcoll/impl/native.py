"""Native intranode implementation: peers write straight into each other's symmetric-memory buffers.

For GPUs of one host with peer access (NVLink). Every rank owns one symmetric buffer
(``torch.distributed._symmetric_memory``) and one chunk-copy kernel (``kernels.chunk_copy``) reads
the user input in place (no pre-gather) and moves runs of rows in one launch:

* cast: rows bound for a peer go into that peer's buffer at their *final* output positions; rows a
  rank sends itself go straight into its output. After the barrier, each rank copies only its
  peer-sourced output runs out of its buffer.
* reduce: every contribution (its own included) lands at its a2a-v receive position in the owner's
  buffer; after the barrier the usual float32 range-reduce runs locally.

Ordering costs one device-side barrier per call (symmetric-memory signal pads, after the writes:
every peer's rows have landed). The buffer is split in two halves used alternately: a rank writes
half p of call k only after passing the barrier of call k-1, which every peer reached after
finishing its reads of half p from call k-2, so no barrier is needed before the writes. This
needs the native ops of one group to be issued in the same order on every rank.

Everything runs on a side CUDA stream (after the current stream's prior work); the returned
work's ``wait_post_process()`` makes the current stream wait for it and returns the tensors given
to the call. Until then, do not touch ``output`` (a reduce reads it on the comm stream). Binding a
plan the first time needs remote meta: one all_to_all (cast) or all_gather (reduce) of small int
tensors plus an all_reduce for the buffer size; the binding is cached on the plan.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.distributed as dist

from magi_grpcoll.impl.base import GrpCollImpl, register_impl
from magi_grpcoll.kernels import pull_reduce_rows, reduce_rows
from magi_grpcoll.kernels._select import triton_available
from magi_grpcoll.kernels.chunk_copy import build_chunks, copy_chunks, row_bytes

__all__ = ["NativeImpl"]

_LOCAL = -1  # chunk destination: the local output tensor, not a peer buffer


class _Binding:
    """A plan bound to a group: row-by-row copy descriptions and the buffer capacity in rows.

    ``copies`` maps a name to rows (source row, destination row, destination rank or ``_LOCAL``):
    cast ``push`` (into peers' buffers / the output) and ``post`` (buffer to output); reduce
    ``stage`` (input rows a peer will pull, into this rank's own buffer) and ``push``. Chunk tables
    are made per row size, on first use. ``pull``: the reduce's :class:`PullMap`.
    """

    def __init__(self, copies: dict, capacity_rows: int, device, pull=None):
        self._copies, self.capacity_rows, self._device, self.pull = copies, capacity_rows, device, pull
        self._tables: dict = {}

    def table(self, kind: str, nbytes: int) -> torch.Tensor:
        """The chunk table of copy ``kind`` for rows of ``nbytes`` (calls on the hot path only look it up)."""
        key = (kind, nbytes)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = build_chunks(*self._copies[kind], nbytes, self._device)
        return table


class PullMap(NamedTuple):
    """Where the reduce's fold reads each contribution (the pull form of a plan's ReduceMap).

    touched: [T] output rows; count: [T] float32 contributors per row (for "avg"); who / row:
    [T, C] the c-th contribution of each touched row, in the ReduceMap's layer order: row ``row`` of
    this rank's own input (``who == -1``) or of the rows peer ``who`` staged; ``row == -1`` pads.
    """

    touched: torch.Tensor
    who: torch.Tensor
    row: torch.Tensor
    count: torch.Tensor


class _Buffers:
    """One symmetric buffer per group, in two halves used alternately, grown collectively.

    All ranks ask for the same half size at the same call (sizes come from all-reduced capacities),
    so growth, a collective rendezvous, happens at the same point everywhere. A replaced buffer is
    kept: a peer may still be reading it on its stream.
    """

    def __init__(self) -> None:
        self._by_group: dict = {}
        self._retired: list = []

    def half(self, group, half_bytes: int, device):
        """(buffer, handle, device address of the peer-buffer address array, byte offset of the
        half this call uses)."""
        from torch.distributed import _symmetric_memory as symm_mem

        key = id(group) if group is not None else None
        cur = self._by_group.get(key)
        if cur is None or cur["half"] < half_bytes:
            half = max((half_bytes + 15) // 16 * 16, 1 << 20)
            pg = group if group is not None else dist.group.WORLD
            enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
            if enable is not None:  # needed on torch < 2.8; deprecated (a no-op) later
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    enable(pg.group_name)
            buf = symm_mem.empty(2 * half, dtype=torch.uint8, device=device)
            hdl = symm_mem.rendezvous(buf, pg)
            if cur is not None:
                self._retired.append(cur)
            cur = self._by_group[key] = {"buf": buf, "hdl": hdl, "half": half, "calls": 0,
                                         "peer_bufs": hdl.buffer_ptrs_dev}  # read once: host time
        parity = cur["calls"] % 2
        cur["calls"] += 1
        return cur["buf"], cur["hdl"], cur["peer_bufs"], parity * cur["half"]


def _plan_send_layout(plan):
    """send_rows (input rows in a2a send order) and the destination rank of each, as int64 lists/tensors."""
    dev = plan.device
    rows = plan.send_rows if plan.send_rows is not None else torch.arange(plan.input_len, device=dev)
    peer = torch.repeat_interleave(torch.arange(plan.world_size, device=dev),
                                   torch.tensor(plan.send_counts, device=dev))
    return rows, peer


_stream_objects: dict = {}  # (device index, raw cudaStream_t) -> torch.cuda.Stream


def _current_stream(device) -> torch.cuda.Stream:
    """``torch.cuda.current_stream(device)``, without building a new Stream object on every call.

    Building one switches devices twice (``torch.cuda.Stream.__new__``): measured as a third of the
    native ops' host time at 16k tokens. The raw handle is a cheap lookup; an object cached under
    it names the same CUDA stream even if torch hands the handle out again later.
    """
    idx = device.index if device.index is not None else torch.cuda.current_device()
    key = (idx, torch._C._cuda_getCurrentRawStream(idx))
    s = _stream_objects.get(key)
    if s is None:
        s = _stream_objects[key] = torch.cuda.current_stream(idx)
    return s


class _StreamWork:
    """The pending part of a native op: an event on the comm stream that the current stream waits on."""

    def __init__(self, event, device) -> None:
        self._event, self._device = event, device

    def wait(self) -> None:
        _current_stream(self._device).wait_event(self._event)


_comm_streams: dict = {}


def _comm_stream(device):
    s = _comm_streams.get(device)
    if s is None:
        s = _comm_streams[device] = torch.cuda.Stream(device=device)
    return s


def _on_comm_stream(device, tensors, fn):
    """Run fn() on the comm stream after the current stream's work; return the completion event."""
    stream = _comm_stream(device)
    current = _current_stream(device)
    stream.wait_stream(current)
    if device.index is None or device.index == torch.cuda.current_device():
        torch.cuda.set_stream(stream)  # cheaper than the stream context manager (no device lookups)
        try:
            fn()
        finally:
            torch.cuda.set_stream(current)
    else:
        with torch.cuda.stream(stream):
            fn()
    for t in tensors:
        if t is not None and t.is_cuda:
            t.record_stream(stream)
    ev = torch.cuda.Event()
    ev.record(stream)
    return ev


def cast_receive_positions(plan) -> torch.Tensor:
    """[sum(recv_counts)] int64: the output row of each a2a-v receive slot (what sources must learn)."""
    inv = torch.empty(sum(plan.recv_counts), dtype=torch.int64, device=plan.device)
    if plan.recv_rows is None:
        inv.copy_(torch.arange(inv.numel(), device=plan.device))
    else:
        inv[plan.recv_rows] = torch.arange(plan.output_len, device=plan.device)
    return inv


def cast_binding(plan, pos: torch.Tensor, capacity_rows: int) -> _Binding:
    """Bind a cast plan given ``pos`` (the destination output row of every sent row, in send order)."""
    rows, peer = _plan_send_layout(plan)
    peer = torch.where(peer == plan.rank, _LOCAL, peer)  # rows sent to self go straight to the output
    src_of_row = torch.repeat_interleave(torch.tensor(plan.src_index, dtype=torch.int64),
                                         torch.tensor(plan.output_split_sizes, dtype=torch.int64))
    post = torch.nonzero(src_of_row != plan.rank).squeeze(1)  # output rows that arrive in the buffer
    return _Binding({"push": (rows, pos, peer), "post": (post, post, torch.full_like(post, _LOCAL))},
                    capacity_rows, plan.device)


def reduce_binding(plan, counts: torch.Tensor) -> _Binding:
    """Bind a reduce plan given ``counts[r][d]``, the rows rank r sends to rank d (every rank's send_counts).

    Pull form: each rank stages the rows it sends to peers (send order, its own block left out) in
    its own buffer; after the barrier every owner folds its output rows reading each contribution
    where it lives: a peer's staged rows over NVLink, or its own input. The fold then runs while
    the bytes cross NVLink, instead of as an extra HBM pass after a push.
    """
    me = plan.rank
    rows, peer = _plan_send_layout(plan)
    rows, peer = rows.cpu(), peer.cpu()
    stage_rows = rows[peer != me]
    peers_only = counts.clone()
    peers_only.fill_diagonal_(0)
    stage_base = torch.cumsum(peers_only, 1) - peers_only  # [r, d]: where r's rows for d start in its stage
    recv_ends = torch.cumsum(counts[:, me], 0)
    slots = plan.rmap.contrib.cpu()
    valid = slots >= 0
    slot = slots.clamp(min=0)
    src = torch.searchsorted(recv_ends, slot, right=True).clamp(max=plan.world_size - 1)
    m = slot - (recv_ends - counts[:, me])[src]  # index inside the block from src
    own = valid & (src == me)
    row = stage_base[src, me] + m
    row[own] = rows[int(counts[me, :me].sum()) + m[own]]
    who = torch.where(own, _LOCAL, src)
    row[~valid], who[~valid] = -1, _LOCAL
    dev = plan.device
    pull = PullMap(plan.rmap.touched, who.to(dev, torch.int32), row.to(dev), plan.rmap.count)
    stage = (stage_rows, torch.arange(stage_rows.numel()), torch.full_like(stage_rows, _LOCAL))
    # the push form (kept to compare): every contribution to its a2a-v slot in the owner's buffer
    base = torch.cumsum(counts, 0) - counts
    pos = torch.cat([base[me, d] + torch.arange(plan.send_counts[d]) for d in range(plan.world_size)])
    cap = max(int((counts.sum(1) - counts.diagonal()).max().item()), int(counts.sum(0).max().item()))
    return _Binding({"stage": stage, "push": (rows, pos, peer)}, cap, dev, pull=pull)


class NativeImpl(GrpCollImpl):
    """Symmetric-memory push implementation (one host, CUDA, NCCL group, Triton)."""

    NAME = "native"
    reduce_mode = "pull"  # or "push" (kept to compare)
    BACKENDS = frozenset({"nccl"})
    DEVICES = frozenset({"cuda"})

    def __init__(self) -> None:
        self._bindings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._buffers = _Buffers()

    def not_supported_reasons(self, *, input, group, cast_lse=False, reduce_op=None, kwargs=None) -> list[str]:
        reasons = super().not_supported_reasons(input=input, group=group, cast_lse=cast_lse,
                                                reduce_op=reduce_op, kwargs=kwargs)
        if not triton_available():
            reasons.append("triton does not import")
        try:
            from torch.distributed import _symmetric_memory  # noqa: F401
        except Exception:  # pragma: no cover - old torch
            reasons.append("torch.distributed._symmetric_memory is unavailable (needs torch >= 2.5)")
        if row_bytes(input) % 4:
            reasons.append(f"row size {row_bytes(input)} bytes is not a multiple of 4")
        if input.device.type == "cuda" and torch.cuda.device_count() < dist.get_world_size(group):
            reasons.append("all ranks must be GPUs of one host (intranode only; use impl='hier' or 'a2av')")
        return reasons

    # ---- binding: the only place that needs remote meta
    def _bind_cast(self, plan, group):
        b = self._bindings.get(plan)
        if b is None:
            dev = plan.device
            # each receiver tells each source the final output row of every row it will receive from it
            inv = cast_receive_positions(plan)
            pos = torch.empty(sum(plan.send_counts), dtype=torch.int64, device=dev)
            dist.all_to_all_single(pos, inv, list(plan.send_counts), list(plan.recv_counts), group=group)
            cap = torch.tensor([plan.output_len], device=dev)
            dist.all_reduce(cap, op=dist.ReduceOp.MAX, group=group)
            b = self._bindings[plan] = cast_binding(plan, pos, int(cap.item()))
        return b

    def _bind_reduce(self, plan, group):
        b = self._bindings.get(plan)
        if b is None:
            mine = torch.tensor(plan.send_counts, dtype=torch.int64, device=plan.device)
            table = [torch.empty_like(mine) for _ in range(plan.world_size)]
            dist.all_gather(table, mine, group=group)
            b = self._bindings[plan] = reduce_binding(plan, torch.stack(table).cpu())
        return b

    def _regions(self, group, device, sizes):
        """Byte offsets of consecutive 16-byte aligned regions in this call's buffer half."""
        offs, total = [], 0
        for s in sizes:
            offs.append(total)
            total += (s + 15) // 16 * 16
        buf, hdl, peer_bufs, half_off = self._buffers.half(group, total, device)
        return buf, hdl, peer_bufs, [half_off + o for o in offs]

    def cast(self, plan, input, output, group, *, async_op, input_lse=None, output_lse=None, **kwargs):
        from magi_grpcoll.work import GrpCollWork

        b = self._bind_cast(plan, group)
        pairs = [(input, output)] + ([(input_lse, output_lse)] if input_lse is not None else [])
        sizes = [b.capacity_rows * row_bytes(s) for s, _ in pairs]
        buf, hdl, peer_bufs, offs = self._regions(group, input.device, sizes)

        def run():
            for (src, dst), off in zip(pairs, offs):
                copy_chunks(src, b.table("push", row_bytes(src)), out=dst, peer_bufs_addr=peer_bufs, dst_offset_bytes=off)
            hdl.barrier(channel=0)  # every peer's rows have landed here
            for (_, dst), off in zip(pairs, offs):
                rb = row_bytes(dst)
                region = buf[off:off + b.capacity_rows * rb].view(b.capacity_rows, rb)
                copy_chunks(region, b.table("post", rb), out=dst)

        ev = _on_comm_stream(input.device, [t for pair in pairs for t in pair], run)
        defaults = tuple(d for _, d in pairs)

        def post(*outs):
            return defaults[0] if len(defaults) == 1 else defaults

        return GrpCollWork([_StreamWork(ev, input.device)], post, async_op, (buf,))

    def reduce(self, plan, input, output, group, *, async_op, reduce_op="sum", acc_reduce=True,
               comm_dtype=None, input_lse=None, output_lse=None, **kwargs):
        from magi_grpcoll.work import GrpCollWork

        b = self._bind_reduce(plan, group)
        x = input if comm_dtype is None or comm_dtype == input.dtype else input.to(comm_dtype)
        srcs = [x] + ([input_lse] if reduce_op == "lse" else [])
        sizes = [b.capacity_rows * row_bytes(s) for s in srcs]
        buf, hdl, peer_bufs, offs = self._regions(group, input.device, sizes)
        n_recv = sum(plan.recv_counts)

        def view(off, like):
            nbytes = n_recv * row_bytes(like)
            return buf[off:off + nbytes].view(like.dtype).view(n_recv, *like.shape[1:])

        def run_push():
            for s, off in zip(srcs, offs):
                copy_chunks(s, b.table("push", row_bytes(s)), peer_bufs_addr=peer_bufs, dst_offset_bytes=off)
            hdl.barrier(channel=0)  # every contribution has landed here
            reduce_rows(output, view(offs[0], x), plan.rmap, reduce_op, acc_reduce=acc_reduce,
                        output_lse=output_lse if reduce_op == "lse" else None,
                        recv_lse=view(offs[1], input_lse) if reduce_op == "lse" else None)

        def run_pull():
            for s, off in zip(srcs, offs):
                rb = row_bytes(s)
                copy_chunks(s, b.table("stage", rb), out=buf[off:off + b.capacity_rows * rb])
            hdl.barrier(channel=0)  # every peer's rows are staged
            lse = reduce_op == "lse"
            pull_reduce_rows(output, x, b.pull, reduce_op, acc_reduce=acc_reduce, peer_bufs_addr=peer_bufs,
                             peer_offset_bytes=offs[0], output_lse=output_lse if lse else None,
                             local_lse=input_lse if lse else None, peer_lse_offset_bytes=offs[1] if lse else 0)

        run = run_pull if self.reduce_mode == "pull" else run_push
        ev = _on_comm_stream(input.device, [input, x, output, input_lse, output_lse], run)

        def post(*outs):
            return (output, output_lse) if reduce_op == "lse" else output

        return GrpCollWork([_StreamWork(ev, input.device)], post, async_op, (buf, x))


register_impl(NativeImpl())
