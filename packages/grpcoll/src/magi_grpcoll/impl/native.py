"""Native intranode implementation: peers write straight into each other's symmetric-memory buffers.

For GPUs of one host with peer access (NVLink). Every rank owns one symmetric buffer
(``torch.distributed._symmetric_memory``) and one chunk-copy kernel (``kernels.chunk_copy``) reads
the user input in place (no pre-gather) and moves runs of rows in one launch:

* cast: rows bound for a peer go into that peer's buffer at their *final* output positions; rows a
  rank sends itself go straight into its output. After the barrier, each rank copies only its
  peer-sourced output runs out of its buffer (a kernel on the high-priority comm stream). By default
  the pushes move through the copy engines (one cudaMemcpyAsync per run into the peer's mapped
  buffer: ``COPY_ENGINE_CASTS``), not the kernel, so they take no SM from the attention kernel they
  overlap.
* reduce: of the rows bound for a peer, a share is pushed into the owner's receive region and the
  rest is copied into the sender's own stage region, in the same launch. After the barrier one
  float32 fold per rank reads every contribution where it lives (its own input, its receive region,
  a peer's stage over NVLink), so the sum runs while the bytes cross NVLink (``reduce_binding``).
  A reduce that folds at the wait pushes every row and folds from local memory; its pushes can go
  through the copy engines too (``COPY_ENGINE_REDUCE_PUSHES``, off by default).

Ordering costs one device-side barrier per call (symmetric-memory signal pads, after the writes:
every peer's rows have landed or are staged). The buffer is split in two halves used alternately: a
rank writes half p of call k (its own or a peer's) only after passing the barrier of call k-1,
which every peer reached after finishing its reads of half p (its own and its peers') from call
k-2, so no barrier is needed before the writes. This needs the native ops of one group to be
issued in the same order on every rank.

Everything runs on a side CUDA stream of high priority (``COMM_STREAM_PRIORITY``), after the
current stream's prior work; the returned work's ``wait_post_process()`` makes the current stream
wait for it and returns the tensors given to the call. Until then, do not touch ``output`` (a
reduce reads it on the comm stream). Binding a plan the first time needs its peers' layouts. A plan
built with every rank's lists (``group_lists``) derives them on the host, exchanging nothing;
otherwise one all_to_all (cast) or all_gather (reduce) of small int tensors plus an all_reduce for
the buffer size fetches them, on a stream of its own (``_exchange``), so binding waits for the
peers' answer but never for the kernels queued on the caller's stream. The binding is cached on the
plan. A bound plan called a third time on tensors at the same addresses (``GRAPH_MIN_SIGHTINGS``)
replays its launches from a CUDA graph (``impl._graphs``): the same kernels in the same order, for
~0.05 ms of host time instead of 0.1-0.3.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.distributed as dist

from magi_grpcoll.impl._graphs import LaunchGraphs
from magi_grpcoll.impl.base import GrpCollImpl, cast_pairs, get_impl, register_impl
from magi_grpcoll.kernels._select import triton_available
from magi_grpcoll.kernels.chunk_copy import build_chunks, build_runs, copy_chunks, copy_runs, row_bytes
from magi_grpcoll.kernels.range_reduce import OWN, RECEIVED, FoldSources, fold_from_sources
from magi_grpcoll.plan import ranges_to_rows, reduce_send_counts
from magi_grpcoll.transfer import host_of, upload

__all__ = ["NativeImpl", "native_call_state", "set_native_call_count"]

_LOCAL = -1  # chunk destination: the local output tensor, not a peer buffer

#: sightings of a launch sequence before a binding captures it into a CUDA graph. Two is not enough:
#: a step's backward casts K/V again, often into the forward's output block, so a plan used for one
#: step only (a new mask every step) saw each cast twice and captured a graph it replayed once. On
#: 2 x H200 at 32k that was ~5 captures a step: 3.8 ms of host time, and 4.0 ms of replays, against
#: ~0.26 ms per call issued eagerly. The third sighting is the next step's: a plan used again
#: captures one step later, and its steady state is unchanged.
GRAPH_MIN_SIGHTINGS = 3


class _Binding:
    """A plan bound to a group: row-by-row copy descriptions and the buffer regions it needs.

    ``copies`` maps a name to rows (source row, destination row, destination rank or ``_LOCAL``):
    cast ``push`` (into peers' buffers / the output) and ``post`` (buffer to output); reduce
    ``send`` (pushed rows into their owners' receive regions, staged rows into this rank's stage
    region). ``regions``: rows of each buffer region, the same on every rank (cast: the receive
    region; reduce: receive, stage). Chunk tables are made per row size, on first use.
    ``sources``: the reduce's :class:`FoldSources`. ``graphs``: CUDA graphs of this binding's launch
    sequences (they read its tables, so they live and die with it).

    The device tensors the comm stream reads (tables, fold sources) are marked used on it once, when
    made: a binding lives as long as its plan, and a plan can die while its calls are still queued
    (a transposed plan made for one call; a plan dropped from the functional API's cache). Their
    memory must not go back to the allocator for other work until those calls have run (unmarked, a
    freed table can be reused and overwritten under a queued call, whose copies then go to garbage
    addresses: the likely cause of the invalid-address-space fault that ``test_native_back_to_back_calls``
    met on 2 x H200 in about one run in three; with the marks it passed 7 runs of 7 there).
    """

    def __init__(self, copies: dict, regions: tuple[int, ...], device, sources=None, push_fraction=None):
        self._copies, self.regions, self._device, self.sources = copies, regions, device, sources
        self.push_fraction = push_fraction
        self._tables: dict = {}
        self._runs: dict = {}
        self.graphs = LaunchGraphs(min_sightings=GRAPH_MIN_SIGHTINGS)
        for t in sources or ():
            _used_on_comm_stream(t)

    def table(self, kind: str, nbytes: int) -> torch.Tensor:
        """The chunk table of copy ``kind`` for rows of ``nbytes`` (calls on the hot path only look it up)."""
        key = (kind, nbytes)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = _used_on_comm_stream(build_chunks(*self._copies[kind], nbytes, self._device))
        return table

    def runs(self, kind: str) -> list[tuple[int, int, int, int]]:
        """The whole runs of copy ``kind`` as host ints (for :func:`copy_runs`), made on first use."""
        runs = self._runs.get(kind)
        if runs is None:
            runs = self._runs[kind] = build_runs(*self._copies[kind])
        return runs


def _group_key(group):
    """A group's key in the per-group tables (None: the default group)."""
    return id(group) if group is not None else None


class _Buffers:
    """One symmetric buffer per group, in two halves used alternately, grown collectively.

    All ranks ask for the same half size at the same call (sizes come from all-reduced capacities),
    so growth, a collective rendezvous, happens at the same point everywhere. Before it, every rank
    waits for its device to finish all queued work; the rendezvous returns only once every rank has,
    so no queued copy, barrier or fold of any rank can still touch a replaced buffer (or the peer
    mappings of its handle), and it is released at once. Growth is rare (the first calls of new
    sizes), so the sync costs nothing in steady state, and no release has to wait on events.
    """

    def __init__(self) -> None:
        self._by_group: dict = {}
        self._generations = 0  # buffers made so far: names a buffer in graph keys
        self._held: set = set()  # groups whose last call's half holds rows that a later fold reads

    def hold(self, group) -> None:
        """The call just issued on ``group`` folds at its wait: its half stays in use until then."""
        self._held.add(_group_key(group))

    def release(self, group) -> None:
        self._held.discard(_group_key(group))

    def state(self, group) -> tuple[int, int] | None:
        """(native calls issued on ``group`` so far, its buffer's generation), or None before the first."""
        cur = self._by_group.get(_group_key(group))
        return None if cur is None else (cur["calls"], cur["gen"])

    def set_calls(self, group, calls: int) -> None:
        cur = self._by_group.get(_group_key(group))
        if cur is None:
            raise RuntimeError("magi_grpcoll native: no native call has been issued on this group yet.")
        cur["calls"] = int(calls)

    def half(self, group, half_bytes: int, device):
        """(buffer, handle, device address of the peer-buffer address array, byte offset of the
        half this call uses, the buffer's generation)."""
        key = _group_key(group)
        if key in self._held:
            raise RuntimeError(
                "magi_grpcoll native: a group_reduce(fold_at_wait=True) on this group has not been waited "
                "yet; its received rows still sit in the shared buffer. Call its wait_post_process() before "
                "issuing another native group_cast/group_reduce on the group.")
        cur = self._by_group.get(key)
        if cur is None or cur["half"] < half_bytes:
            from torch.distributed import _symmetric_memory as symm_mem

            half = max((half_bytes + 15) // 16 * 16, 1 << 20)
            pg = group if group is not None else dist.group.WORLD
            enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
            if enable is not None:  # needed on torch < 2.8; deprecated (a no-op) later
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    enable(pg.group_name)
            if cur is not None and torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)  # this rank's calls on the old buffer are done
            buf = symm_mem.empty(2 * half, dtype=torch.uint8, device=device)
            hdl = symm_mem.rendezvous(buf, pg)  # every rank has synced: the old buffer is free
            self._generations += 1
            cur = self._by_group[key] = {"buf": buf, "hdl": hdl, "half": half, "calls": 0,
                                         "peer_bufs": hdl.buffer_ptrs_dev,  # read once: host time
                                         "gen": self._generations}
        parity = cur["calls"] % 2
        cur["calls"] += 1
        return cur["buf"], cur["hdl"], cur["peer_bufs"], parity * cur["half"], cur["gen"]


def _byte_rows(t: torch.Tensor) -> torch.Tensor:
    """[rows, row bytes] uint8 view of a contiguous tensor (what the copy-engine runs slice)."""
    return t.view(torch.uint8).view(t.shape[0], row_bytes(t))


def _push_by_copy_engines(hdl, src: torch.Tensor, runs, local_out: torch.Tensor, region_rows: int,
                          region_off: int) -> None:
    """Copy the ``runs`` of ``src`` through the copy engines (``copy_runs``): a peer's runs into its
    region of ``region_rows`` rows at byte ``region_off`` of its buffer, the local ones into
    ``local_out`` (byte rows). What a cast's push and a fold-at-wait reduce's send share."""
    rb = row_bytes(src)
    views = {p: hdl.get_buffer(p, (region_rows, rb), torch.uint8, region_off) for p in {w for *_, w in runs if w >= 0}}
    copy_runs(_byte_rows(src), runs, out=local_out, peer_views=views)


def _plan_send_layout(plan):
    """send_rows (input rows in a2a send order) and the destination rank of each, int64 host tensors."""
    rows = host_of(plan.send_rows) if plan.send_rows is not None else torch.arange(plan.input_len)
    peer = torch.repeat_interleave(torch.arange(plan.world_size), torch.tensor(plan.send_counts))
    return rows, peer


_meta_streams: dict = {}  # device -> the stream of the bindings' meta exchanges


def _exchange(device, run):
    """``run()`` (small collectives on host-made inputs, their results read back) on a stream of its
    own: on the caller's stream they would wait for every kernel queued before them, and the
    read-back would make the host wait for those too; here the host waits only for the peers. A
    plain call off CUDA (no queue to keep) and inside a caller's graph capture."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return run()
    stream = _meta_streams.get(device)
    if stream is None:
        stream = _meta_streams[device] = torch.cuda.Stream(device=device)
    with torch.cuda.stream(stream):
        return run()


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
        if len(_stream_objects) > 256:  # external streams could bring ever new handles
            _stream_objects.clear()
        s = _stream_objects[key] = torch.cuda.current_stream(idx)
    return s


class _StreamWork:
    """The pending part of a native op: an event on the comm stream that the current stream waits on.

    ``held``: the op's tensors when they were not marked used on the comm stream (the call's
    ``record_streams=False``, or ``RECORD_STREAMS`` off): kept until the wait, after which freeing
    them is ordered after the op on the waiting stream; a work dropped before its wait marks them
    then, so the allocator still waits for the op.
    """

    def __init__(self, event, device, stream=None, held: tuple = ()) -> None:
        self._event, self._device, self._stream, self._held = event, device, stream, held

    def wait(self) -> None:
        _current_stream(self._device).wait_event(self._event)
        self._held = ()

    def __del__(self) -> None:
        for t in self._held:
            try:
                t.record_stream(self._stream)
            except Exception:  # noqa: BLE001 - interpreter shutdown: nothing is reused any more
                pass


_comm_streams: dict = {}

#: CUDA stream priority of the comm stream (lower is higher; torch clamps to the device's range).
#: Why high: the attention kernels it overlaps (FA4 causal/varlen, Triton FFA) launch one CTA per
#: tile, and at equal priority the block scheduler hands out every pending CTA of the kernel that
#: came first before any CTA of a copy queued behind it, so a cast issued before an attention call
#: ran only as that call drained (measured: each stage's K/V arrived after the previous stage's
#: kernel, fully exposed). At high priority the copies take SMs as the first CTAs retire.
COMM_STREAM_PRIORITY = -1
#: Casts move their rows with the copy engines (one cudaMemcpyAsync per run, see ``copy_runs``)
#: instead of the chunk-copy kernel. Why: the kernel's programs take SMs, and an attention kernel
#: that needs a whole SM per CTA (FA4) then waits for the copy; the copy engines take none, so the
#: cast runs under the attention kernel instead of before or after it. The reduce keeps the kernel
#: (its fold must read the staged rows anyway).
COPY_ENGINE_CASTS = True
#: A native op's tensors are marked used on the comm stream (``record_stream``), or, off, held by its
#: work until the wait (``_StreamWork``). Why a switch: record_stream delays a freed block's reuse
#: until the comm stream's events are seen complete, so with the host ahead of the GPU the caching
#: allocator hands back other addresses and the CUDA graphs keyed by addresses rarely replay (4-layer
#: varlen steps on 2 x H200: 134 replays, 53 captures, 226 eager launches). Held, a block is reusable
#: once the waiting stream has waited for the op. That assumes the tensors live on the stream that
#: waits, so it stays the default here; a caller that knows that holds (magi_attention's runtime, whose
#: tensors live on its one compute stream) passes ``record_streams=False`` to its calls (interface 1.5).
RECORD_STREAMS = True
#: A ``group_reduce(fold_at_wait=True)`` runs here (on): every row is pushed to its owner's receive
#: region during the transfer (push fraction 1: nothing is left to pull), and the fold runs at the
#: wait, from local memory, after whatever the caller wrote to the output meanwhile; until that
#: wait no other native call may be issued on the group (its half of the buffer still holds the
#: rows; such a call raises). Off: such a reduce runs as a2av (an all-to-all, the fold at the wait).
#: Why: the runtime's hidden tail reduce (MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE, one remote stage)
#: then folds into the host's dK/dV after the host stage instead of into a zeroed buffer added at the
#: end (on 2 x H200 the zero fill and the add took ~0.26 ms a layer, as much as the hiding saved).
#: Checked on 2 x H200 (the reduce against its reference, and the runtime's hide-tail case against
#: float64); with hide tail at 64k it kept the backward at the default's speed where the a2av form
#: lost 3-4% (BENCHMARKS.md "Native fold-at-wait").
FOLD_AT_WAIT = True
#: A reduce folding at the wait pushes its rows through the copy engines (one cudaMemcpyAsync per run
#: into the owner's receive region, as the casts do: ``copy_runs``) instead of the chunk-copy kernel.
#: Why: with every row pushed there is nothing staged for the fold to pull, and the push runs beside
#: the caller's kernels (the host stage, under the runtime's hidden tail reduce), where the kernel
#: takes SMs from them. Measured once (causal 64k, 2 x H200, hidden tail: backward 1.7% faster than the
#: kernel's pushes, BENCHMARKS.md "Stop 47"); off until the runtime's float64 case has run with it on a GPU.
COPY_ENGINE_REDUCE_PUSHES = False


def _comm_stream(device):
    s = _comm_streams.get(device)
    if s is None:
        s = _comm_streams[device] = torch.cuda.Stream(device=device, priority=COMM_STREAM_PRIORITY)
    return s


def _used_on_comm_stream(t: torch.Tensor) -> torch.Tensor:
    """Mark a long-lived device tensor that the comm stream reads (``_Binding``); returns it."""
    if getattr(t, "is_cuda", False):
        t.record_stream(_comm_stream(t.device))
    return t


def _on_comm_stream(device, tensors, fn, record: bool | None = None) -> _StreamWork:
    """Run fn() on the comm stream after the current stream's work; return its pending work (holding
    ``tensors`` until the wait when ``record`` is False; None: ``RECORD_STREAMS``)."""
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
    used = tuple(t for t in tensors if t is not None and t.is_cuda)
    record = RECORD_STREAMS if record is None else record
    if record:
        for t in used:
            t.record_stream(stream)
    ev = torch.cuda.Event()
    ev.record(stream)
    return _StreamWork(ev, device, stream, () if record else used)


def cast_receive_positions(plan) -> torch.Tensor:
    """[sum(recv_counts)] int64 host tensor: the output row of each a2a-v receive slot (what sources
    must learn)."""
    if plan.recv_rows is None:
        return torch.arange(sum(plan.recv_counts))
    inv = torch.empty(sum(plan.recv_counts), dtype=torch.int64)
    inv[host_of(plan.recv_rows)] = torch.arange(plan.output_len)
    return inv


def cast_positions_from_lists(plan) -> tuple[torch.Tensor, int]:
    """What the cast binding's exchange returns, derived from ``plan.group_lists`` (every rank's
    lists): the output row at its destination of every row this rank sends (send order), and the
    group's largest output. A destination's output splits naming this rank take its rows in order
    (stable order), so the rows sent to p land in p's splits from this rank, back to back."""
    me, parts = plan.rank, []
    for _, outs, _, srcs in plan.group_lists:
        starts, lens, off = [], [], 0
        for n, r in zip(outs, srcs):
            if r == me:
                starts.append(off)
                lens.append(n)
            off += n
        parts.append(ranges_to_rows(starts, lens, "cpu"))
    return torch.cat(parts), max(sum(e[1]) for e in plan.group_lists)


def reduce_counts_from_lists(plan) -> torch.Tensor:
    """What the reduce binding's exchange returns, derived from ``plan.group_lists``: ``counts[r][d]``,
    the rows rank r sends to rank d."""
    return torch.tensor([reduce_send_counts(e, plan.world_size) for e in plan.group_lists], dtype=torch.int64)


def cast_binding(plan, pos: torch.Tensor, capacity_rows: int) -> _Binding:
    """Bind a cast plan given ``pos`` (the destination output row of every sent row, in send order)."""
    rows, peer = _plan_send_layout(plan)
    peer = torch.where(peer == plan.rank, _LOCAL, peer)  # rows sent to self go straight to the output
    src_of_row = torch.repeat_interleave(torch.tensor(plan.src_index, dtype=torch.int64),
                                         torch.tensor(plan.output_split_sizes, dtype=torch.int64))
    post = torch.nonzero(src_of_row != plan.rank).squeeze(1)  # output rows that arrive in the buffer
    return _Binding({"push": (rows, pos, peer), "post": (post, post, torch.full_like(post, _LOCAL))},
                    (capacity_rows,), plan.device)


def reduce_binding(plan, counts: torch.Tensor, push_fraction: float) -> _Binding:
    """Bind a reduce plan given ``counts[r][d]``, the rows rank r sends to rank d (every rank's send_counts).

    Of the rows a rank sends to a peer, the first ``ceil(push_fraction * n)`` are pushed into the
    owner's receive region (an NVLink write) and the rest staged in the sender's own stage region (a
    local copy, in the same launch); after the barrier each owner folds every output row in one
    pass, reading each contribution where it lives: its input, its receive region, or a peer's stage
    (an NVLink read). The fold's HBM traffic runs under the NVLink reads instead of after the
    transfer, and the pushes run under the stage copies.

    Computed in numpy: a new mask binds a new plan every step, on the host, and torch's per-operator
    cost on these small host arrays made this ~2x slower (16.6k rows at 64k: 1.08 -> 0.54 ms here).
    """
    me = plan.rank
    rows_t, peer_t = _plan_send_layout(plan)
    rows, peer, counts = rows_t.numpy(), peer_t.numpy(), counts.numpy().astype(np.int64)
    to_peers = counts.copy()
    np.fill_diagonal(to_peers, 0)
    pushed = np.ceil(to_peers * push_fraction).astype(np.int64)  # [r, d]
    staged = to_peers - pushed
    push_base = np.cumsum(pushed, 0) - pushed  # [r, d]: r's pushed rows start here in d's receive region
    stage_base = np.cumsum(staged, 1) - staged  # [r, d]: r's staged rows for d start here in r's stage
    # this rank's sends; m: the index of a row inside its destination's block
    m = np.arange(rows.size) - (np.cumsum(counts[me]) - counts[me])[peer]
    remote = peer != me
    push = remote & (m < pushed[me, peer])
    send_dst = np.where(push, push_base[me, peer] + m, stage_base[me, peer] + m - pushed[me, peer])
    send = tuple(torch.from_numpy(a[remote]) for a in (rows, send_dst, np.where(push, peer, _LOCAL)))
    # the fold: receive slot j from source src, index m inside src's block
    slots = host_of(plan.rmap.contrib).numpy().astype(np.int64)
    valid = slots >= 0
    recv_ends = np.cumsum(counts[:, me])
    slots = np.maximum(slots, 0)
    src = np.minimum(np.searchsorted(recv_ends, slots, side="right"), plan.world_size - 1)
    m = slots - (recv_ends - counts[:, me])[src]
    own = valid & (src == me)
    got_pushed = valid & ~own & (m < pushed[src, me])
    row = np.where(got_pushed, push_base[src, me] + m, stage_base[src, me] + m - pushed[src, me])
    row[own] = rows[int(counts[me, :me].sum()) + m[own]]
    who = np.where(own, OWN, np.where(got_pushed, RECEIVED, src))
    row[~valid], who[~valid] = -1, OWN
    dev = plan.device
    sources = FoldSources(plan.rmap.touched, upload(torch.from_numpy(who.astype(np.int32)), dev),
                          upload(torch.from_numpy(row), dev), plan.rmap.count)
    regions = (int(pushed.sum(0).max()), int(staged.sum(1).max()))
    return _Binding({"send": send}, regions, dev, sources=sources, push_fraction=push_fraction)


class NativeImpl(GrpCollImpl):
    """Symmetric-memory push implementation (one host, CUDA, NCCL group, Triton)."""

    NAME = "native"
    #: share of a reduce's peer-bound rows pushed to their owner; the rest are pulled (see reduce_binding)
    reduce_push_fraction = 0.25
    BACKENDS = frozenset({"nccl"})
    DEVICES = frozenset({"cuda"})

    def __init__(self) -> None:
        self._bindings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._fold_bindings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # reduces folding at the wait
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

            def exchange():
                # each receiver tells each source the final output row of every row it will receive
                # from it; the buffer holds the largest output of the group
                inv = cast_receive_positions(plan).to(dev)
                pos = torch.empty(sum(plan.send_counts), dtype=torch.int64, device=dev)
                dist.all_to_all_single(pos, inv, list(plan.send_counts), list(plan.recv_counts), group=group)
                cap = torch.tensor([plan.output_len], device=dev)
                dist.all_reduce(cap, op=dist.ReduceOp.MAX, group=group)
                return pos.cpu(), int(cap.item())

            pos, cap = cast_positions_from_lists(plan) if plan.group_lists is not None else _exchange(dev, exchange)
            b = self._bindings[plan] = cast_binding(plan, pos, cap)
        return b

    def _bind_reduce(self, plan, group, push_fraction: float | None = None):
        """The reduce binding of ``plan`` at the class's push fraction, or at ``push_fraction`` (a
        reduce folding at the wait pushes every row: 1.0), kept apart; rebuilt when the fraction
        changes (building exchanges every rank's send counts)."""
        fraction = self.reduce_push_fraction if push_fraction is None else push_fraction
        store = self._bindings if push_fraction is None else self._fold_bindings
        b = store.get(plan)
        if b is None or b.push_fraction != fraction:
            def exchange():
                mine = torch.tensor(plan.send_counts, dtype=torch.int64, device=plan.device)
                table = [torch.empty_like(mine) for _ in range(plan.world_size)]
                dist.all_gather(table, mine, group=group)
                return torch.stack(table).cpu()

            counts = reduce_counts_from_lists(plan) if plan.group_lists is not None else \
                _exchange(plan.device, exchange)
            b = store[plan] = reduce_binding(plan, counts, fraction)
        return b

    def bind_ahead(self, plan, group, row_bytes: tuple[int, ...]) -> bool:
        """The plan's binding and its tables for rows of each of ``row_bytes`` bytes, made now. Only
        from ``group_lists``: without them binding exchanges meta with the peers, a collective that
        every rank would have to make at the same point (and never from a background thread)."""
        from magi_grpcoll.plan import GroupReducePlan

        if plan.group_lists is None:
            return False
        if isinstance(plan, GroupReducePlan):
            b, kinds = self._bind_reduce(plan, group), ("send",)
        else:
            b, kinds = self._bind_cast(plan, group), ("post",) if COPY_ENGINE_CASTS else ("push", "post")
            if COPY_ENGINE_CASTS:
                b.runs("push")
        for rb in row_bytes:
            for kind in kinds:
                b.table(kind, rb)
        return True

    def _regions(self, group, device, sizes):
        """Byte offsets of consecutive 16-byte aligned regions in this call's buffer half, the
        half's own offset and the buffer's generation."""
        offs, total = [], 0
        for s in sizes:
            offs.append(total)
            total += (s + 15) // 16 * 16
        buf, hdl, peer_bufs, half_off, gen = self._buffers.half(group, total, device)
        return buf, hdl, peer_bufs, tuple(half_off + o for o in offs), half_off, gen

    def cast(self, plan, inputs, outputs, group, *, async_op, input_lse=None, output_lse=None,
             record_streams: bool | None = None, **kwargs):
        from magi_grpcoll.work import GrpCollWork

        b = self._bind_cast(plan, group)
        pairs = cast_pairs(inputs, outputs, input_lse, output_lse)
        dev = inputs[0].device
        cap = b.regions[0]
        rbs = [row_bytes(s) for s, _ in pairs]
        buf, hdl, peer_bufs, offs, half_off, gen = self._regions(group, dev, [cap * rb for rb in rbs])
        engines = COPY_ENGINE_CASTS
        push_runs = b.runs("push") if engines else None
        # (push, post) copy tables per tensor, never made inside a capture; the push goes through the
        # copy engines instead where they are on
        tables = [(None if engines else b.table("push", rb), b.table("post", rb)) for rb in rbs]

        def launch():  # runs eagerly or into a capture; a replay skips it
            if engines:
                for (src, dst), off in zip(pairs, offs):
                    _push_by_copy_engines(hdl, src, push_runs, _byte_rows(dst), cap, off)
            else:
                for (src, dst), off, (push, _) in zip(pairs, offs, tables):
                    copy_chunks(src, push, out=dst, peer_bufs_addr=peer_bufs, dst_offset_bytes=off)
            hdl.barrier(channel=0)  # every peer's rows have landed here
            for (_, dst), off, rb, (_, post) in zip(pairs, offs, rbs, tables):
                # a kernel, not the copy engines: a device-to-device copy on one GPU runs as a driver
                # kernel that does not get the comm stream's priority, so it waited for the attention
                # kernel to drain (2 x H200 timelines), and the next stage waited for it
                copy_chunks(buf[off:off + cap * rb].view(cap, rb), post, out=dst)

        family = ("cast", gen, engines,
                  *((s.data_ptr(), d.data_ptr(), rb) for (s, d), rb in zip(pairs, rbs)))
        work = _on_comm_stream(dev, [t for pair in pairs for t in pair],
                               lambda: b.graphs.run((family, half_off), launch, family), record_streams)
        defaults = tuple(d for _, d in pairs)

        def post(*outs):
            return defaults[0] if len(defaults) == 1 else defaults

        return GrpCollWork([work], post, async_op, (buf, b))

    def reduce(self, plan, input, output, group, *, async_op, reduce_op="sum", acc_reduce=True,
               comm_dtype=None, input_lse=None, output_lse=None, fold_at_wait=False,
               record_streams: bool | None = None, **kwargs):
        from magi_grpcoll.work import GrpCollWork

        if fold_at_wait and not FOLD_AT_WAIT:  # switched off: a2av folds at the wait
            return get_impl("a2av").reduce(plan, input, output, group, async_op=async_op, reduce_op=reduce_op,
                                           acc_reduce=acc_reduce, comm_dtype=comm_dtype, input_lse=input_lse,
                                           output_lse=output_lse, fold_at_wait=True)
        # folding at the wait, nothing may be left for the fold to pull: every row is pushed meanwhile
        b = self._bind_reduce(plan, group, 1.0 if fold_at_wait else None)
        x = input if comm_dtype is None or comm_dtype == input.dtype else input.to(comm_dtype)
        lse = reduce_op == "lse"
        srcs = [x] + ([input_lse] if lse else [])
        rbs = [row_bytes(s) for s in srcs]
        sizes = [n * rb for rb in rbs for n in b.regions]  # receive, stage (, lse receive, stage)
        buf, hdl, peer_bufs, offs, half_off, gen = self._regions(group, input.device, sizes)
        engines = fold_at_wait and COPY_ENGINE_REDUCE_PUSHES
        send_runs = b.runs("send") if engines else None
        tables = None if engines else [b.table("send", rb) for rb in rbs]  # never made inside a capture

        def send():
            if engines:  # whole runs through the copy engines: into peers' receive regions (or a stage)
                n_recv, n_stage = b.regions
                for s, rb, (recv_off, stage_off) in zip(srcs, rbs, (offs[:2], offs[2:])):
                    stage = buf[stage_off:stage_off + n_stage * rb].view(n_stage, rb)
                    _push_by_copy_engines(hdl, s, send_runs, stage, n_recv, recv_off)
            else:
                for s, table, (recv_off, stage_off) in zip(srcs, tables, (offs[:2], offs[2:])):
                    copy_chunks(s, table, out=buf[stage_off:], peer_bufs_addr=peer_bufs, dst_offset_bytes=recv_off)
            hdl.barrier(channel=0)  # every push has landed, every peer's stage is written

        def fold(out, out_lse):
            base = buf.data_ptr()
            fold_from_sources(out, x, b.sources, reduce_op, acc_reduce=acc_reduce, received_addr=base + offs[0],
                              peer_bufs_addr=peer_bufs, peer_offset_bytes=offs[1],
                              output_lse=out_lse if lse else None, local_lse=input_lse if lse else None,
                              received_lse_addr=base + offs[2] if lse else 0,
                              peer_lse_offset_bytes=offs[3] if lse else 0)

        sent = ("reduce", gen, fold_at_wait, engines, x.data_ptr(), x.dtype, *rbs,
                *((input_lse.data_ptr(),) if lse else ()))

        def fold_key(out, out_lse):
            return (sent, reduce_op, bool(acc_reduce), out.data_ptr(), out.dtype, row_bytes(out),
                    *((out_lse.data_ptr(),) if lse else ()))

        if not fold_at_wait:  # one launch sequence: the fold reads the output as the rows land
            family = fold_key(output, output_lse)
            work = _on_comm_stream(input.device, [input, x, output, input_lse, output_lse],
                                   lambda: b.graphs.run((family, half_off), lambda: (send(), fold(output, output_lse)),
                                                        family), record_streams)

            def post(*outs):
                return (output, output_lse) if lse else output

            return GrpCollWork([work], post, async_op, (buf, x, b))

        work = _on_comm_stream(input.device, [input, x, input_lse],
                               lambda: b.graphs.run((sent, half_off), send, sent), record_streams)
        self._buffers.hold(group)

        def post_fold(*outs):  # after the caller's writes to the output: fold on the comm stream, then wait
            out = outs[0] if outs else output
            out_lse = outs[1] if len(outs) > 1 else output_lse
            key = fold_key(out, out_lse)
            fold_work = _on_comm_stream(input.device, [x, out, input_lse, out_lse],
                                        lambda: b.graphs.run((key, half_off), lambda: fold(out, out_lse), key),
                                        record_streams)
            self._buffers.release(group)
            fold_work.wait()
            return (out, out_lse) if lse else out

        return GrpCollWork([work], post_fold, async_op, (buf, x, b))


_NATIVE = register_impl(NativeImpl())


def native_call_state(group=None) -> tuple[int, int] | None:
    """(native calls issued on ``group`` so far, the generation of its shared buffer), or None before
    its first native call.

    For callers that capture native calls into their own CUDA graph: a call writes the buffer half
    its count's parity names, and a replayed graph writes the halves it was captured with, so it
    may be replayed only at the parity and generation it was captured at, and the count must then
    be moved on by the calls it holds (``set_native_call_count``).
    """
    return _NATIVE._buffers.state(group)


def set_native_call_count(group, count: int) -> None:
    """Set the count of native calls issued on ``group``: back to its value before a capture (the
    captured calls ran nothing), or on by the calls a replayed graph held."""
    _NATIVE._buffers.set_calls(group, count)
