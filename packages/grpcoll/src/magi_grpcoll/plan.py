"""Plans: every index tensor and all-to-all size of one group collective, built once from split lists.

A plan is a pure function of one rank's split lists (no communication), so it can be built ahead of
time, cached and executed many times. The a2a-v implementation executes it as

    cast:   send = input[send_rows]  ->  all_to_all_single  ->  output = recv[recv_rows]
    reduce: send = input[send_rows]  ->  all_to_all_single  ->  output[touched] (+)= recv[layers...]

``send_rows`` / ``recv_rows`` are ``None`` when they would be the identity (then the pre- or
post-pass is skipped and the all-to-all reads or writes the user tensors directly).

Shape legend: S_in / S_out rows of input / output (dim 0), W world size, T output rows touched by
a reduce, C the most contributors of one reduced row (<= W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from magi_grpcoll.checks import check_rank, check_rank_list, check_rank_sets, check_split_sizes
from magi_grpcoll.transfer import upload

__all__ = ["GroupCastPlan", "GroupReducePlan", "ReduceMap"]



def _cumsum0(sizes) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


def ranges_to_rows(starts: list[int], lengths: list[int], device) -> torch.Tensor:
    """Row indices of the concatenated ranges [starts[k], starts[k]+lengths[k]) as int64 [sum(lengths)]."""
    total = sum(lengths)
    if total == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    st = torch.tensor(starts, dtype=torch.int64)
    ln = torch.tensor(lengths, dtype=torch.int64)
    cu = torch.cumsum(ln, 0) - ln  # where each range begins in the concatenation
    rows = torch.arange(total, dtype=torch.int64) + torch.repeat_interleave(st - cu, ln)
    return upload(rows, device)


def _is_identity(starts: list[int], lengths: list[int], n: int) -> bool:
    pos = 0
    for s, ln in zip(starts, lengths):
        if ln == 0:
            continue
        if s != pos:
            return False
        pos += ln
    return pos == n



def _resolve_device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def _check_world(fn: str, rank, world_size, input_split_sizes, output_split_sizes):
    """Checks shared by both plan builders; returns (rank, input sizes, output sizes)."""
    if not isinstance(world_size, int) or world_size < 1:
        from magi_grpcoll.errors import GrpCollError

        raise GrpCollError(f"{fn}(): world_size must be a positive int; got {world_size!r}.")
    rank = check_rank(fn, "rank", rank, world_size)
    ins = check_split_sizes(fn, "input_split_sizes", input_split_sizes, None)
    outs = check_split_sizes(fn, "output_split_sizes", output_split_sizes, None)
    return rank, ins, outs


def _per_rank(sizes, world_size: int, member) -> list[list[int]]:
    """For each rank r, the split indices i (in split order) with member(i, r)."""
    return [[i for i in range(len(sizes)) if member(i, r)] for r in range(world_size)]


def _counts(sizes, groups: list[list[int]]) -> list[int]:
    """Rows exchanged with each peer (only these totals must agree across ranks)."""
    return [sum(sizes[i] for i in idx) for idx in groups]


def _send_side(ins, world_size: int, member, device):
    """Send buffer layout: grouped by destination rank, each group in split order.

    Returns (send_counts, send_rows); send_rows is None when the buffer is the input itself.
    """
    in_off = _cumsum0(ins)
    groups = _per_rank(ins, world_size, member)
    send_counts = _counts(ins, groups)
    send_starts = [in_off[i] for idx in groups for i in idx]
    send_lens = [ins[i] for idx in groups for i in idx]
    send_rows = None if _is_identity(send_starts, send_lens, in_off[-1]) else \
        ranges_to_rows(send_starts, send_lens, device)
    return send_counts, send_rows


def _group_lists(fn: str, group_lists, rank: int, world_size: int, own: tuple, check_entry, sent_to,
                 received_from) -> tuple:
    """Every rank's split lists (index = rank), normalised and checked against each other.

    ``own`` is this rank's normalised entry, ``check_entry(name, entry)`` normalises one entry,
    ``sent_to(entry)`` / ``received_from(entry)`` give the rows an entry's rank sends to / receives
    from each rank. The rows rank r sends to p must be the rows p expects from r: a planner that
    runs on every rank (magi_attention's solver) can thus be checked without communication.
    """
    from magi_grpcoll.errors import GrpCollError

    if not isinstance(group_lists, (list, tuple)) or len(group_lists) != world_size:
        got = f"length {len(group_lists)}" if isinstance(group_lists, (list, tuple)) else type(group_lists).__name__
        raise GrpCollError(f"{fn}(): group_lists must hold one entry per rank ({world_size}); got {got}.")
    entries = []
    for r, entry in enumerate(group_lists):
        if not isinstance(entry, (list, tuple)) or len(entry) != 4:
            raise GrpCollError(f"{fn}(): group_lists[{r}] must be the 4 split lists of rank {r} (as this "
                               f"function's first four arguments); got {type(entry).__name__}.")
        entries.append(check_entry(f"group_lists[{r}]", entry))
    if entries[rank] != own:
        raise GrpCollError(f"{fn}(): group_lists[{rank}] differs from this rank's own split lists (the "
                           "first four arguments); entry r must be rank r's lists.")
    sends = [sent_to(e) for e in entries]
    recvs = [received_from(e) for e in entries]
    for r in range(world_size):
        for p in range(world_size):
            if sends[r][p] != recvs[p][r]:
                raise GrpCollError(f"{fn}(): group_lists disagree: rank {r} sends {sends[r][p]} rows to rank "
                                   f"{p}, which expects {recvs[p][r]} from it.")
    return tuple(entries)


class _SplitLengths:
    """Row totals of the split lists (shared by both plan classes)."""

    @property
    def input_len(self) -> int:
        return sum(self.input_split_sizes)

    @property
    def output_len(self) -> int:
        return sum(self.output_split_sizes)


@dataclass(frozen=True, eq=False)
class ReduceMap:
    """How received rows fold into output rows (shared by the a2a-v and hierarchical reduce).

    Attributes:
        touched: [T] int64, output rows that receive at least one contribution (ascending).
        layers: C pairs (pos [n_c], rows [n_c]); layer c holds the c-th contribution of each row, so
            ``pos`` has no repeats inside a layer (deterministic, race-free accumulation).
        count: [T] float32, the number of original contributors of each touched row (for "avg").
        contrib: [T, C] int64, row c of each touched row's contributors in layer order, -1 padded
            (the form the Triton range-reduce kernel reads).
    """

    touched: torch.Tensor
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    count: torch.Tensor
    contrib: torch.Tensor

    @staticmethod
    def from_pieces(pieces: list[tuple[int, int, int, int]], counts_per_out: dict[int, int] | None,
                    out_split_starts: list[int], device) -> ReduceMap:
        """Build from pieces (out_split k, out_start, recv_start, length) listed in contribution order.

        ``counts_per_out`` maps split k to its number of original contributors (defaults to the
        number of pieces for k).
        """
        by_split: dict[int, list[tuple[int, int]]] = {}
        for k, out_start, recv_start, ln in pieces:
            by_split.setdefault(k, []).append((out_start, recv_start, ln))
        ks = sorted(by_split)
        t_starts, t_lens, cnt = [], [], []
        layer_pos: list[tuple[list[int], list[int]]] = []
        layer_src: list[tuple[list[int], list[int]]] = []
        pos_off = 0
        for k in ks:
            entries = by_split[k]
            ln = entries[0][2]
            t_starts.append(entries[0][0])
            t_lens.append(ln)
            n = counts_per_out[k] if counts_per_out is not None else len(entries)
            cnt.append(float(n))  # one per split, expanded per row below
            for c, (_, recv_start, _) in enumerate(entries):
                while len(layer_pos) <= c:
                    layer_pos.append(([], []))
                    layer_src.append(([], []))
                layer_pos[c][0].append(pos_off)
                layer_pos[c][1].append(ln)
                layer_src[c][0].append(recv_start)
                layer_src[c][1].append(ln)
            pos_off += ln
        touched = ranges_to_rows(t_starts, t_lens, "cpu")
        count = torch.repeat_interleave(torch.tensor(cnt, dtype=torch.float32),
                                        torch.tensor(t_lens, dtype=torch.int64)) if ks else \
            torch.empty(0, dtype=torch.float32)
        n_t = int(touched.numel())
        contrib = torch.full((n_t, max(len(layer_pos), 1)), -1, dtype=torch.int64)
        layers = []
        for c in range(len(layer_pos)):
            pos = ranges_to_rows(*layer_pos[c], "cpu")
            rows = ranges_to_rows(*layer_src[c], "cpu")
            contrib[pos, c] = rows
            layers.append((upload(pos, device), upload(rows, device)))
        return ReduceMap(upload(touched, device), tuple(layers), upload(count, device), upload(contrib, device))


def _entry(fn: str, name: str, lists, world_size: int, cast: bool) -> tuple:
    """One rank's four lists, normalised as the builder normalises its own: a cast's (input sizes,
    output sizes, dst_indices, src_index), or a reduce's (..., dst_index, src_indices)."""
    ins = tuple(check_split_sizes(fn, f"{name}[0] (input_split_sizes)", lists[0], None))
    outs = tuple(check_split_sizes(fn, f"{name}[1] (output_split_sizes)", lists[1], None))
    if cast:
        return (ins, outs, check_rank_sets(fn, f"{name}[2] (dst_indices)", lists[2], len(ins), world_size),
                tuple(check_rank_list(fn, f"{name}[3] (src_index)", lists[3], len(outs), world_size)))
    return (ins, outs, tuple(check_rank_list(fn, f"{name}[2] (dst_index)", lists[2], len(ins), world_size)),
            check_rank_sets(fn, f"{name}[3] (src_indices)", lists[3], len(outs), world_size))


def reduce_send_counts(lists, world_size: int) -> list[int]:
    """The rows a reduce's rank sends to each rank, from its four lists (its checked
    ``group_lists`` entry): what the plans check against the receivers, and what the native
    binding derives its peers' send counts from."""
    return [sum(n for n, d in zip(lists[0], lists[2]) if d == p) for p in range(world_size)]


def _transposed(group_lists):
    """Every rank's lists of the transposed collective (outputs become inputs), or None."""
    return None if group_lists is None else tuple((o, i, s, d) for i, o, d, s in group_lists)


@dataclass(frozen=True, eq=False)
class GroupCastPlan(_SplitLengths):
    """One rank's precomputed group_cast: split i of the input goes to every rank in dst_indices[i];
    output split j is the next unconsumed split that rank src_index[j] sends here (stable order).
    Precisely, only each source's row stream is defined: the output splits naming a source take
    its rows in order, so they may cut that stream differently from the source's own splits (the
    per-source totals must agree). Every impl (a2av, hier, native) follows this.

    Build with :meth:`build`, run with :meth:`cast`; :meth:`transpose` gives the matching reduce.

    Attributes ([GENERATED] ones come from the lists):
        send_counts / recv_counts: [W] rows sent to / received from each rank. [GENERATED]
        send_rows: [sum(send_counts)] int64 input rows in send order, or None for the identity. [GENERATED]
        recv_rows: [S_out] int64, output row j takes receive-buffer row recv_rows[j], or None. [GENERATED]
        group_lists: every rank's normalised lists (index = rank) when the builder was given them, else
            None; then native binds without exchanging meta.
    """

    rank: int
    world_size: int
    device: torch.device
    input_split_sizes: tuple[int, ...]
    output_split_sizes: tuple[int, ...]
    dst_indices: tuple[tuple[int, ...], ...]
    src_index: tuple[int, ...]
    send_counts: tuple[int, ...]
    recv_counts: tuple[int, ...]
    send_rows: torch.Tensor | None
    recv_rows: torch.Tensor | None
    group_lists: tuple | None = None

    @staticmethod
    def build(input_split_sizes, output_split_sizes, dst_indices, src_index, *, rank: int,
              world_size: int, device=None, group_lists=None) -> GroupCastPlan:
        """Build the plan of rank ``rank`` (pure, no communication; loops over splits happen here only).

        ``group_lists``: optionally every rank's four lists (index = rank), when the caller plans for
        all ranks anyway. They are checked against each other here, and an implementation that
        needs its peers' layouts (native: where each sent row lands) derives them locally instead
        of exchanging them, which would make the host wait for the GPU on a plan's first call.
        """
        fn = "GroupCastPlan.build"
        rank, ins, outs = _check_world(fn, rank, world_size, input_split_sizes, output_split_sizes)
        dsts = check_rank_sets(fn, "dst_indices", dst_indices, len(ins), world_size)
        srcs = check_rank_list(fn, "src_index", src_index, len(outs), world_size)
        device = _resolve_device(device)
        if group_lists is not None:
            group_lists = _group_lists(
                fn, group_lists, rank, world_size, (tuple(ins), tuple(outs), dsts, tuple(srcs)),
                lambda name, e: _entry(fn, name, e, world_size, cast=True),
                lambda e: [sum(n for n, d in zip(e[0], e[2]) if p in d) for p in range(world_size)],
                lambda e: [sum(n for n, r in zip(e[1], e[3]) if r == p) for p in range(world_size)])
        out_off = _cumsum0(outs)

        send_counts, send_rows = _send_side(ins, world_size, lambda i, r: r in dsts[i], device)

        # receive side: the buffer is grouped by source rank, each group in that source's split order,
        # which (stable order) is the order of the output splits naming that source
        recv_counts = _counts(outs, _per_rank(outs, world_size, lambda j, r: srcs[j] == r))
        recv_base = _cumsum0(recv_counts)
        cursor = list(recv_base[:-1])
        recv_starts = []
        for j in range(len(outs)):
            recv_starts.append(cursor[srcs[j]])
            cursor[srcs[j]] += outs[j]
        recv_rows = None if _is_identity(recv_starts, list(outs), out_off[-1]) else \
            ranges_to_rows(recv_starts, list(outs), device)
        return GroupCastPlan(rank, world_size, device, tuple(ins), tuple(outs), dsts, srcs,
                             tuple(send_counts), tuple(recv_counts), send_rows, recv_rows, group_lists)

    def transpose(self) -> GroupReducePlan:
        """The reduce that sends every output split back to where it came from (backward of this cast)."""
        return GroupReducePlan.build(self.output_split_sizes, self.input_split_sizes, self.src_index,
                                     self.dst_indices, rank=self.rank, world_size=self.world_size,
                                     device=self.device, group_lists=_transposed(self.group_lists))

    def cast(self, input, output, group=None, *, async_op: bool = False, input_lse=None, output_lse=None,
             impl=None, **kwargs):
        """Run this plan; returns a :class:`~magi_grpcoll.work.GrpCollWork` (see ``group_cast``)."""
        from magi_grpcoll.api import _run_cast

        return _run_cast(self, input, output, group, async_op=async_op, input_lse=input_lse,
                         output_lse=output_lse, impl=impl, **kwargs)

    def bind_ahead(self, group=None, *, impl=None, row_bytes=()) -> bool:
        """Do now what this plan's first ``cast`` through ``impl`` would do on the host before moving
        anything (interface 1.7): the native binding and its copy tables for rows of each of
        ``row_bytes`` bytes. Why: a plan built ahead (on a background thread, while the GPU works)
        then costs its first call nothing extra. Returns whether there was anything to do (False
        for a2av and hier, and for native without ``group_lists``). Talks to no peer; uploads its
        tables on the current CUDA stream."""
        from magi_grpcoll.api import _bind_ahead

        return _bind_ahead("GroupCastPlan.bind_ahead", self, group, impl, row_bytes)

    def __repr__(self) -> str:
        return (f"GroupCastPlan(rank={self.rank}/{self.world_size}, in={self.input_len} rows/"
                f"{len(self.input_split_sizes)} splits, out={self.output_len} rows/"
                f"{len(self.output_split_sizes)} splits, send={list(self.send_counts)}, "
                f"recv={list(self.recv_counts)}, pre_pass={self.send_rows is not None}, "
                f"post_pass={self.recv_rows is not None}, device={self.device})")


@dataclass(frozen=True, eq=False)
class GroupReducePlan(_SplitLengths):
    """One rank's precomputed group_reduce, the transpose of a cast: input split i goes to the single
    rank dst_index[i]; output split k folds in, per rank r in src_indices[k], the next unconsumed split
    that r sends here.

    Attributes:
        send_counts / recv_counts / send_rows: as in :class:`GroupCastPlan`. [GENERATED]
        rmap: :class:`ReduceMap` from receive-buffer rows to output rows. [GENERATED]
        group_lists: as in :class:`GroupCastPlan`.
    """

    rank: int
    world_size: int
    device: torch.device
    input_split_sizes: tuple[int, ...]
    output_split_sizes: tuple[int, ...]
    dst_index: tuple[int, ...]
    src_indices: tuple[tuple[int, ...], ...]
    send_counts: tuple[int, ...]
    recv_counts: tuple[int, ...]
    send_rows: torch.Tensor | None
    rmap: ReduceMap
    group_lists: tuple | None = None

    @staticmethod
    def build(input_split_sizes, output_split_sizes, dst_index, src_indices, *, rank: int,
              world_size: int, device=None, group_lists=None) -> GroupReducePlan:
        """Build the plan of rank ``rank`` (pure, no communication); ``group_lists`` as in
        :meth:`GroupCastPlan.build` (native then derives every rank's send counts locally)."""
        fn = "GroupReducePlan.build"
        rank, ins, outs = _check_world(fn, rank, world_size, input_split_sizes, output_split_sizes)
        dst = check_rank_list(fn, "dst_index", dst_index, len(ins), world_size)
        srcs = check_rank_sets(fn, "src_indices", src_indices, len(outs), world_size)
        device = _resolve_device(device)
        if group_lists is not None:
            group_lists = _group_lists(
                fn, group_lists, rank, world_size, (tuple(ins), tuple(outs), tuple(dst), srcs),
                lambda name, e: _entry(fn, name, e, world_size, cast=False),
                lambda e: reduce_send_counts(e, world_size),
                lambda e: [sum(n for n, r in zip(e[1], e[3]) if p in r) for p in range(world_size)])
        out_off = _cumsum0(outs)

        send_counts, send_rows = _send_side(ins, world_size, lambda i, r: dst[i] == r, device)
        recv_counts = _counts(outs, _per_rank(outs, world_size, lambda k, r: r in srcs[k]))
        recv_base = _cumsum0(recv_counts)
        cursor = list(recv_base[:-1])
        recv_start_of: dict[tuple[int, int], int] = {}
        for k in range(len(outs)):
            for r in srcs[k]:
                recv_start_of[(k, r)] = cursor[r]
                cursor[r] += outs[k]
        pieces = [(k, out_off[k], recv_start_of[(k, r)], outs[k])
                  for k in range(len(outs)) if outs[k] > 0 for r in srcs[k]]
        rmap = ReduceMap.from_pieces(pieces, None, out_off, device)
        return GroupReducePlan(rank, world_size, device, tuple(ins), tuple(outs), dst, srcs,
                               tuple(send_counts), tuple(recv_counts), send_rows, rmap, group_lists)

    def transpose(self) -> GroupCastPlan:
        """The cast whose transpose this reduce is."""
        return GroupCastPlan.build(self.output_split_sizes, self.input_split_sizes, self.src_indices,
                                   self.dst_index, rank=self.rank, world_size=self.world_size,
                                   device=self.device, group_lists=_transposed(self.group_lists))

    def bind_ahead(self, group=None, *, impl=None, row_bytes=()) -> bool:
        """As :meth:`GroupCastPlan.bind_ahead`, for this plan's first ``reduce`` (not one folding at
        the wait, which binds apart)."""
        from magi_grpcoll.api import _bind_ahead

        return _bind_ahead("GroupReducePlan.bind_ahead", self, group, impl, row_bytes)

    def reduce(self, input, output, group=None, *, async_op: bool = False, reduce_op: str = "sum",
               acc_reduce: bool = True, comm_dtype=None, input_lse=None, output_lse=None,
               fold_at_wait: bool = False, impl=None, **kwargs):
        """Run this plan; returns a :class:`~magi_grpcoll.work.GrpCollWork` (see ``group_reduce``)."""
        from magi_grpcoll.api import _run_reduce

        return _run_reduce(self, input, output, group, async_op=async_op, reduce_op=reduce_op,
                           acc_reduce=acc_reduce, comm_dtype=comm_dtype, input_lse=input_lse,
                           output_lse=output_lse, fold_at_wait=fold_at_wait, impl=impl, **kwargs)

    def __repr__(self) -> str:
        return (f"GroupReducePlan(rank={self.rank}/{self.world_size}, in={self.input_len} rows/"
                f"{len(self.input_split_sizes)} splits, out={self.output_len} rows/"
                f"{len(self.output_split_sizes)} splits, send={list(self.send_counts)}, "
                f"recv={list(self.recv_counts)}, touched={int(self.rmap.touched.numel())}, "
                f"layers={len(self.rmap.layers)}, device={self.device})")
