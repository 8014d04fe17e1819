"""Native intranode implementation: peers write straight into each other's symmetric-memory buffers.

For GPUs of one host with peer access (NVLink). Every rank owns one symmetric buffer
(``torch.distributed._symmetric_memory``), and a Triton kernel reads the user input in place
(``send_rows``, no pre-gather) and stores each row straight into the destination rank's buffer:

* cast: at the row's *final* output position, so the post-pass is one contiguous copy;
* reduce: at the a2a-v receive position, then the usual fp32 range-reduce runs locally.

Everything runs on a side CUDA stream (after the current stream's prior work); the returned
work's ``wait_post_process()`` makes the current stream wait for it and returns the tensors given
to the call. Until then, do not touch ``output`` (a reduce reads it on the comm stream), and issue
native ops of one group in the same order on every rank.

Ordering uses the symmetric-memory device-side barrier (signal pads): one barrier before the
writes (peers have finished reading the last contents) and one after (all writes landed). The
positions in peers' buffers need remote meta, so binding a plan the first time costs one
all_to_all (cast) or all_gather (reduce) of small int tensors plus an all_reduce for the buffer
size; the binding is cached on the plan.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.distributed as dist

from magi_grpcoll.impl.base import GrpCollImpl, register_impl
from magi_grpcoll.kernels import reduce_rows
from magi_grpcoll.kernels._select import triton_available

__all__ = ["NativeImpl"]

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _push_rows_kernel(src_ptr, rows_ptr, peer_ptr, pos_ptr, buf_ptrs_ptr, row_words, buf_offset_words,
                          BLOCK: tl.constexpr):
        # one program per (sent row, column block): read the input row in place, store it in the
        # destination rank's symmetric buffer (a pointer loaded from the device array of peer buffers)
        i = tl.program_id(0).to(tl.int64)
        cb = tl.program_id(1)
        s = tl.load(rows_ptr + i).to(tl.int64)
        peer = tl.load(peer_ptr + i).to(tl.int64)
        pos = tl.load(pos_ptr + i).to(tl.int64)
        # buf_ptrs_ptr arrives as an integer address of the device array of peer buffer pointers
        ptrs = buf_ptrs_ptr.to(tl.pointer_type(tl.uint64))
        dst = tl.load(ptrs + peer).to(tl.pointer_type(tl.int32))
        offs = cb * BLOCK + tl.arange(0, BLOCK)
        m = offs < row_words
        x = tl.load(src_ptr + s * row_words + offs, mask=m)
        tl.store(dst + buf_offset_words + pos * row_words + offs, x, mask=m)


def _words(t: torch.Tensor) -> torch.Tensor:
    """View a contiguous [S, ...] tensor as int32 words [S, row_words]."""
    return t.reshape(t.shape[0], -1).view(torch.int32) if t.shape[0] else \
        torch.empty((0, max(1, _row_bytes(t) // 4)), dtype=torch.int32, device=t.device)


def _row_bytes(t: torch.Tensor) -> int:
    return math.prod(t.shape[1:]) * t.element_size()


class _Binding:
    """A plan bound to a group: per-sent-row peer and remote position, buffer capacity."""

    def __init__(self, send_rows, peer, pos, capacity_rows):
        self.send_rows, self.peer, self.pos, self.capacity_rows = send_rows, peer, pos, capacity_rows


class _Buffers:
    """One symmetric buffer per group, grown collectively (all ranks agree on the size)."""

    def __init__(self) -> None:
        self._by_group: dict = {}

    def get(self, group, nbytes: int, device):
        from torch.distributed import _symmetric_memory as symm_mem

        key = id(group) if group is not None else None
        cur = self._by_group.get(key)
        if cur is None or cur[0].numel() < nbytes:
            size = max(nbytes, 1 << 20)
            pg = group if group is not None else dist.group.WORLD
            enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
            if enable is not None:  # needed on torch < 2.8; deprecated (a no-op) later
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    enable(pg.group_name)
            buf = symm_mem.empty(size, dtype=torch.uint8, device=device)
            hdl = symm_mem.rendezvous(buf, pg)
            cur = (buf, hdl)
            self._by_group[key] = cur
        return cur


def _plan_send_layout(plan):
    """send_rows (input rows in a2a send order) and the destination rank of each, as int64 lists/tensors."""
    dev = plan.device
    rows = plan.send_rows if plan.send_rows is not None else torch.arange(plan.input_len, device=dev)
    peer = torch.repeat_interleave(torch.arange(plan.world_size, device=dev),
                                   torch.tensor(plan.send_counts, device=dev))
    return rows, peer


class _StreamWork:
    """The pending part of a native op: an event on the comm stream that the current stream waits on."""

    def __init__(self, event) -> None:
        self._event = event

    def wait(self) -> None:
        torch.cuda.current_stream().wait_event(self._event)


_comm_streams: dict = {}


def _comm_stream(device):
    s = _comm_streams.get(device)
    if s is None:
        s = _comm_streams[device] = torch.cuda.Stream(device=device)
    return s


def _on_comm_stream(device, tensors, fn):
    """Run fn() on the comm stream after the current stream's work; return the completion event."""
    stream = _comm_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    for t in tensors:
        if t is not None and t.is_cuda:
            t.record_stream(stream)
    ev = torch.cuda.Event()
    ev.record(stream)
    return ev


class NativeImpl(GrpCollImpl):
    """Symmetric-memory push implementation (one host, CUDA, NCCL group, Triton)."""

    NAME = "native"
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
        if _row_bytes(input) % 4:
            reasons.append(f"row size {_row_bytes(input)} bytes is not a multiple of 4")
        if input.device.type == "cuda" and torch.cuda.device_count() < dist.get_world_size(group):
            reasons.append("all ranks must be GPUs of one host (intranode only; use impl='hier' or 'a2av')")
        return reasons

    # ---- binding: the only place that needs remote meta
    def _bind_cast(self, plan, group):
        b = self._bindings.get(plan)
        if b is not None:
            return b
        dev = plan.device
        # each receiver tells each source the final output row of every row it will receive from it
        inv = torch.empty(sum(plan.recv_counts), dtype=torch.int64, device=dev)
        if plan.recv_rows is None:
            inv.copy_(torch.arange(inv.numel(), device=dev))
        else:
            inv[plan.recv_rows] = torch.arange(plan.output_len, device=dev)
        pos = torch.empty(sum(plan.send_counts), dtype=torch.int64, device=dev)
        dist.all_to_all_single(pos, inv, list(plan.send_counts), list(plan.recv_counts), group=group)
        rows, peer = _plan_send_layout(plan)
        cap = torch.tensor([plan.output_len], device=dev)
        dist.all_reduce(cap, op=dist.ReduceOp.MAX, group=group)
        b = _Binding(rows, peer, pos, int(cap.item()))
        self._bindings[plan] = b
        return b

    def _bind_reduce(self, plan, group):
        b = self._bindings.get(plan)
        if b is not None:
            return b
        dev = plan.device
        world = plan.world_size
        mine = torch.tensor(plan.send_counts, dtype=torch.int64, device=dev)
        table = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(table, mine, group=group)
        counts = torch.stack(table).cpu()  # counts[r][d]: rows r sends to d
        base = torch.cumsum(counts, 0) - counts  # base[r][d]: where r's rows start in d's receive buffer
        me = plan.rank
        pos_parts = [base[me, d].item() + torch.arange(plan.send_counts[d], device=dev) for d in range(world)]
        pos = torch.cat(pos_parts) if pos_parts else torch.empty(0, dtype=torch.int64, device=dev)
        rows, peer = _plan_send_layout(plan)
        cap = int(counts.sum(0).max().item())
        b = _Binding(rows, peer, pos, cap)
        self._bindings[plan] = b
        return b

    def _push(self, src, binding, hdl, offset_bytes):
        n = int(binding.send_rows.numel())
        if n == 0:
            return
        w = _words(src)
        row_words = w.shape[1]
        block = min(1024, triton.next_power_of_2(row_words))
        grid = (n, triton.cdiv(row_words, block))
        _push_rows_kernel[grid](w, binding.send_rows, binding.peer, binding.pos, hdl.buffer_ptrs_dev,
                                row_words, offset_bytes // 4, BLOCK=block)

    def _regions(self, group, device, sizes):
        """Allocate one buffer holding consecutive regions of the given byte sizes (16-byte aligned)."""
        offs, total = [], 0
        for s in sizes:
            offs.append(total)
            total += (s + 15) // 16 * 16
        buf, hdl = self._buffers.get(group, total, device)
        return buf, hdl, offs

    def cast(self, plan, input, output, group, *, async_op, input_lse=None, output_lse=None, **kwargs):
        from magi_grpcoll.work import GrpCollWork

        b = self._bind_cast(plan, group)
        pairs = [(input, output)] + ([(input_lse, output_lse)] if input_lse is not None else [])
        sizes = [b.capacity_rows * _row_bytes(s) for s, _ in pairs]
        buf, hdl, offs = self._regions(group, input.device, sizes)

        def run():
            hdl.barrier(channel=0)  # peers finished reading what this buffer held before
            for (src, _), off in zip(pairs, offs):
                self._push(src, b, hdl, off)
            hdl.barrier(channel=0)  # every peer's rows have landed here
            for (_, dst), off in zip(pairs, offs):
                if dst.numel():
                    nbytes = dst.shape[0] * _row_bytes(dst)
                    dst.reshape(-1).view(torch.uint8).copy_(buf[off:off + nbytes])

        ev = _on_comm_stream(input.device, [t for pair in pairs for t in pair], run)
        defaults = tuple(d for _, d in pairs)

        def post(*outs):
            return defaults[0] if len(defaults) == 1 else defaults

        return GrpCollWork([_StreamWork(ev)], post, async_op, (buf,))

    def reduce(self, plan, input, output, group, *, async_op, reduce_op="sum", acc_reduce=True,
               comm_dtype=None, input_lse=None, output_lse=None, **kwargs):
        from magi_grpcoll.work import GrpCollWork

        b = self._bind_reduce(plan, group)
        x = input if comm_dtype is None or comm_dtype == input.dtype else input.to(comm_dtype)
        srcs = [x] + ([input_lse] if reduce_op == "lse" else [])
        sizes = [b.capacity_rows * _row_bytes(s) for s in srcs]
        buf, hdl, offs = self._regions(group, input.device, sizes)
        n_recv = sum(plan.recv_counts)

        def view(off, like):
            nbytes = n_recv * _row_bytes(like)
            return buf[off:off + nbytes].view(like.dtype).view(n_recv, *like.shape[1:])

        def run():
            hdl.barrier(channel=0)
            for s, off in zip(srcs, offs):
                self._push(s, b, hdl, off)
            hdl.barrier(channel=0)
            reduce_rows(output, view(offs[0], x), plan.rmap, reduce_op, acc_reduce=acc_reduce,
                        output_lse=output_lse if reduce_op == "lse" else None,
                        recv_lse=view(offs[1], input_lse) if reduce_op == "lse" else None)

        ev = _on_comm_stream(input.device, [input, x, output, input_lse, output_lse], run)

        def post(*outs):
            return (output, output_lse) if reduce_op == "lse" else output

        return GrpCollWork([_StreamWork(ev)], post, async_op, (buf, x))


register_impl(NativeImpl())
