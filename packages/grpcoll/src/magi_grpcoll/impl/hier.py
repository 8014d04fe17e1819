"""Hierarchical a2a-v for several nodes over a 2-D (inter, intra) mesh.

Group rank g = node * L + local, with ``intra_group`` = the L ranks of my node (ordered by local
index) and ``inter_group`` = the N ranks sharing my local index (ordered by node). A cast runs:

  A. pre-intra (intra group): splits for ranks of my own node go straight there;
  B. inter (inter group): one copy of each split per *remote node* that needs it, to the rank with
     my local index there — so data bound for several ranks of a node crosses the link once;
  C. post-intra (intra group): that rank forwards what it got to the destinations in its node.

The reduce runs the same layout backwards: C reversed with a pre-reduction inside the node
(sum, or lse merge), B reversed (one partial per node), A reversed, then the final reduce with the
op. The layout needs every rank's split lists, so building it costs one ``all_gather_object`` over
the group (the layout is then cached on the plan; all ranks must make the same calls in order).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist

from magi_grpcoll.errors import GrpCollError
from magi_grpcoll.impl._a2a import a2a_rows
from magi_grpcoll.impl.base import GrpCollImpl, cast_pairs, register_impl
from magi_grpcoll.kernels import gather_rows, reduce_rows
from magi_grpcoll.plan import ReduceMap, ranges_to_rows

__all__ = ["HierImpl", "make_hier_groups"]


def make_hier_groups(intra_size: int, group=None):
    """Create (intra_group, inter_group) for group rank g = node*intra_size + local (collective call)."""
    world = dist.get_world_size(group)
    me = dist.get_rank(group)
    if intra_size < 1 or world % intra_size:
        raise GrpCollError(f"make_hier_groups(): intra_size={intra_size} must divide the group size {world}.")
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(world))
    n_nodes = world // intra_size
    intra = inter = None
    for n in range(n_nodes):  # every rank creates every group, in the same order
        g = dist.new_group([ranks[n * intra_size + i] for i in range(intra_size)])
        if me // intra_size == n:
            intra = g
    for i in range(intra_size):
        g = dist.new_group([ranks[n * intra_size + i] for n in range(n_nodes)])
        if me % intra_size == i:
            inter = g
    return intra, inter


@dataclass(frozen=True, eq=False)
class _Stage:
    """One all-to-all: rows gathered from a source buffer, counts per peer of the stage's group."""

    send_rows: torch.Tensor
    send_counts: tuple[int, ...]
    recv_counts: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class HierCastLayout:
    """Cast layout on one rank: stages A, B, C and the final un-permutation of cat(recv_A, recv_C)."""

    a: _Stage
    b: _Stage
    c: _Stage  # send_rows index the inter receive buffer
    recv_rows: torch.Tensor  # output row j <- row of cat(recv_A, recv_C)
    inv_recv_rows: torch.Tensor  # row of cat(recv_A, recv_C) <- output row (for the reduce)
    fwd_rmap: ReduceMap  # reverse C: send_C rows fold into inter-receive rows
    final_rmap: ReduceMap  # reverse A+B: cat(send_A, send_B) rows fold into the cast input rows


def _build_layout(gmeta, out_sizes, src_index, me: int, n_nodes: int, n_local: int, device) -> HierCastLayout:
    """Pure: all ranks' (in_sizes, dsts) plus my (out_sizes, src_index) -> my layout."""
    node, loc = divmod(me, n_local)
    offs = []
    for sizes, _ in gmeta:
        o, acc = [], 0
        for s in sizes:
            o.append(acc)
            acc += s
        offs.append(o)

    def size(r, i):
        return gmeta[r][0][i]

    def dsts(r, i):
        return gmeta[r][1][i]

    def rank_of(n, lo):
        return n * n_local + lo

    my_sizes, my_dsts = gmeta[me]

    def pack_mine(n_groups, wanted):
        """My splits i with wanted(g, i), grouped by peer g, each group in split order.

        Returns (starts, lengths, rows per group, [(split i, offset in the send buffer)])."""
        st, ln, cnt, pieces = [], [], [], []
        pos = 0
        for g in range(n_groups):
            c = 0
            for i in range(len(my_sizes)):
                if wanted(g, i):
                    st.append(offs[me][i])
                    ln.append(my_sizes[i])
                    pieces.append((i, pos))
                    pos += my_sizes[i]
                    c += my_sizes[i]
            cnt.append(c)
        return st, ln, cnt, pieces

    def lay_out_recv(sources_of, wanted):
        """Receive buffer: per peer g, the splits (r, i) of its sources r with wanted(r, i), in order.

        Returns (rows per peer, [((r, i), offset in the receive buffer)], total rows)."""
        cnt, pieces = [], []
        pos = 0
        for g, sources in enumerate(sources_of):
            c = 0
            for r in sources:
                for i in range(len(gmeta[r][0])):
                    if wanted(g, r, i):
                        pieces.append(((r, i), pos))
                        pos += size(r, i)
                        c += size(r, i)
            cnt.append(c)
        return cnt, pieces, pos

    # A: my splits to ranks of my node
    a_st, a_ln, a_cnt, a_pieces = pack_mine(n_local, lambda lo, i: rank_of(node, lo) in my_dsts[i])
    # B: one copy per remote node needing the split
    b_st, b_ln, b_cnt, b_pieces = pack_mine(
        n_nodes, lambda m, i: m != node and any(d // n_local == m for d in my_dsts[i]))
    # receive A: from each local rank, its splits naming me
    a_rcnt, recv_a, n_recv_a = lay_out_recv([[rank_of(node, lo)] for lo in range(n_local)],
                                            lambda g, r, i: me in dsts(r, i))
    pos_a = dict(recv_a)
    # receive B (as forwarder): from rank (m, loc) of each remote node, splits needed in my node
    # (inter_pieces: ((r, i), offset in inter buffer))
    b_rcnt, inter_pieces, _ = lay_out_recv(
        [[rank_of(m, loc)] for m in range(n_nodes)],
        lambda m, r, i: m != node and any(d // n_local == node for d in dsts(r, i)))
    # C: forward inter pieces to their destinations in my node
    c_st, c_ln, c_cnt, fwd_pieces = [], [], [], []
    pos = 0
    for lo in range(n_local):
        c = 0
        for k, ((r, i), ipos) in enumerate(inter_pieces):
            if rank_of(node, lo) in dsts(r, i):
                c_st.append(ipos)
                c_ln.append(size(r, i))
                fwd_pieces.append((k, ipos, pos, size(r, i)))
                pos += size(r, i)
                c += size(r, i)
        c_cnt.append(c)
    # receive C: from each local forwarder, the remote pieces naming me, in its inter order
    c_rcnt, recv_c, _ = lay_out_recv(
        [[rank_of(m, lf) for m in range(n_nodes) if m != node] for lf in range(n_local)],
        lambda g, r, i: me in dsts(r, i))
    pos_c = dict(recv_c)
    # final un-permutation. As in a flat a2a-v, only the row stream per source matters: the splits
    # of source r that name me arrive back to back (A from r itself, or C from r's forwarder, in
    # split order), and my output splits from r consume that stream in order, whatever their
    # sizes (the runtime merges or cuts ranges differently on the two sides).
    stream_at, stream_rows = {}, {}
    for r in range(len(gmeta)):
        pieces = [i for i in range(len(gmeta[r][0])) if me in dsts(r, i)]
        if not pieces:
            continue
        at = [pos_a[(r, i)] if r // n_local == node else n_recv_a + pos_c[(r, i)] for i in pieces]
        ends = [a + size(r, i) for a, i in zip(at, pieces)]
        assert at[1:] == ends[:-1], "hier layout: a source's pieces must arrive contiguously"
        stream_at[r], stream_rows[r] = at[0], ends[-1] - at[0]
    used = dict.fromkeys(stream_at, 0)
    starts = []
    for j, r in enumerate(src_index):
        if r not in used or used[r] + out_sizes[j] > stream_rows[r]:
            raise GrpCollError(f"group_cast(hier): output splits from rank {r} (up to split {j}) need "
                               f"{used.get(r, 0) + out_sizes[j]} rows but rank {r} sends "
                               f"{stream_rows.get(r, 0)} rows to rank {me}.")
        starts.append(stream_at[r] + used[r])
        used[r] += out_sizes[j]
    short = {r: (used[r], stream_rows[r]) for r in used if used[r] != stream_rows[r]}
    if short:
        raise GrpCollError(f"group_cast(hier): rank {me}'s output splits take fewer rows than their sources "
                           f"send (source: (taken, sent)) {short}.")
    recv_rows = ranges_to_rows(starts, list(out_sizes), "cpu")
    inv = torch.empty_like(recv_rows)
    inv[recv_rows] = torch.arange(recv_rows.numel())
    # reverse maps for the reduce
    fwd_rmap = ReduceMap.from_pieces([p for p in fwd_pieces if p[3] > 0], None, [], device)
    final = []
    n_send_a = sum(a_cnt)
    for i, p in a_pieces:
        final.append((i, offs[me][i], p, my_sizes[i]))
    for i, p in b_pieces:
        final.append((i, offs[me][i], n_send_a + p, my_sizes[i]))
    final.sort(key=lambda t: t[0])  # stable: A piece first, then nodes ascending
    counts = {i: len(my_dsts[i]) for i in range(len(my_sizes))}
    final_rmap = ReduceMap.from_pieces([p for p in final if p[3] > 0], counts, [], device)
    return HierCastLayout(
        _Stage(ranges_to_rows(a_st, a_ln, device), tuple(a_cnt), tuple(a_rcnt)),
        _Stage(ranges_to_rows(b_st, b_ln, device), tuple(b_cnt), tuple(b_rcnt)),
        _Stage(ranges_to_rows(c_st, c_ln, device), tuple(c_cnt), tuple(c_rcnt)),
        recv_rows.to(device), inv.to(device), fwd_rmap, final_rmap)


def _rows_like(n, like, dtype=None):
    return torch.empty((n, *like.shape[1:]), dtype=dtype or like.dtype, device=like.device)


class HierImpl(GrpCollImpl):
    """Hierarchical a2a-v (kwargs ``intra_group`` and ``inter_group`` required)."""

    NAME = "hier"

    def __init__(self) -> None:
        self._layouts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def not_supported_reasons(self, *, kwargs=None, **kw) -> list[str]:
        reasons = super().not_supported_reasons(kwargs=kwargs, **kw)
        kwargs = kwargs or {}
        if kwargs.get("intra_group") is None or kwargs.get("inter_group") is None:
            reasons.append("needs kwargs intra_group= and inter_group= (see magi_grpcoll.impl.hier."
                           "make_hier_groups)")
        return reasons

    def _layout(self, cast_meta_plan, key_plan, group, intra_group, inter_group) -> HierCastLayout:
        """cast_meta_plan: a GroupCastPlan (for a reduce: its transpose); cached on key_plan."""
        n_local = dist.get_world_size(intra_group)
        n_nodes = dist.get_world_size(inter_group)
        cache = self._layouts.get(key_plan)
        if cache is not None and cache[0] == (n_nodes, n_local):
            return cache[1]
        me = cast_meta_plan.rank
        world = cast_meta_plan.world_size
        if n_local * n_nodes != world or dist.get_rank(intra_group) != me % n_local \
                or dist.get_rank(inter_group) != me // n_local:
            raise GrpCollError(f"hier: rank {me} of {world} is local rank {dist.get_rank(intra_group)} of "
                               f"{n_local} and node {dist.get_rank(inter_group)} of {n_nodes}; expected group "
                               f"rank = node * intra_size + local (use make_hier_groups).")
        gmeta: list = [None] * world
        dist.all_gather_object(gmeta, (cast_meta_plan.input_split_sizes, cast_meta_plan.dst_indices),
                               group=group)
        lay = _build_layout(gmeta, cast_meta_plan.output_split_sizes, cast_meta_plan.src_index, me, n_nodes,
                            n_local, cast_meta_plan.device)
        self._layouts[key_plan] = ((n_nodes, n_local), lay)
        return lay

    def cast(self, plan, inputs, outputs, group, *, async_op, input_lse=None, output_lse=None,
             intra_group=None, inter_group=None, **kwargs):
        from magi_grpcoll.work import GrpCollWork

        lay = self._layout(plan, plan, group, intra_group, inter_group)
        pairs = cast_pairs(inputs, outputs, input_lse, output_lse)
        n_a = sum(lay.a.recv_counts)
        state = []
        works = []
        for src, dst in pairs:
            r_buf = _rows_like(n_a + sum(lay.c.recv_counts), dst)
            inter = _rows_like(sum(lay.b.recv_counts), dst)
            send_b = gather_rows(src, lay.b.send_rows)
            send_a = gather_rows(src, lay.a.send_rows)
            wb = a2a_rows(inter, send_b, lay.b.recv_counts, lay.b.send_counts, inter_group)
            wa = a2a_rows(r_buf[:n_a], send_a, lay.a.recv_counts, lay.a.send_counts, intra_group)
            works.append(wb)
            state.append((r_buf, inter, wa, (send_a, send_b)))
        defaults = tuple(d for _, d in pairs)

        def post(*outs):
            outs = outs or defaults
            for (r_buf, inter, wa, _), dst in zip(state, outs):
                send_c = gather_rows(inter, lay.c.send_rows)
                a2a_rows(r_buf[n_a:], send_c, lay.c.recv_counts, lay.c.send_counts, intra_group).wait()
                wa.wait()
                gather_rows(r_buf, lay.recv_rows, out=dst)
            return outs[0] if len(outs) == 1 else tuple(outs)

        return GrpCollWork(works, post, async_op, tuple(state))

    def reduce(self, plan, input, output, group, *, async_op, reduce_op="sum", acc_reduce=True,
               comm_dtype=None, input_lse=None, output_lse=None, intra_group=None, inter_group=None,
               fold_at_wait=False, **kwargs):
        # the fold is the post-pass: it runs at the wait whether or not fold_at_wait asks for it
        from magi_grpcoll.work import GrpCollWork

        lay = self._layout(plan.transpose(), plan, group, intra_group, inter_group)
        wire = comm_dtype or input.dtype
        n_a = sum(lay.a.recv_counts)
        tensors = [input] + ([input_lse] if reduce_op == "lse" else [])
        state = []
        for k, x in enumerate(tensors):
            dt = wire if k == 0 else torch.float32
            r_buf = gather_rows(x, lay.inv_recv_rows).to(dt)  # cast-receive layout
            back_a = _rows_like(sum(lay.a.send_counts), r_buf)
            back_c = _rows_like(sum(lay.c.send_counts), r_buf)
            wa = a2a_rows(back_a, r_buf[:n_a].contiguous(), lay.a.send_counts, lay.a.recv_counts, intra_group)
            wc = a2a_rows(back_c, r_buf[n_a:].contiguous(), lay.c.send_counts, lay.c.recv_counts, intra_group)
            state.append((r_buf, back_a, back_c, wa, wc))
        defaults = (output,) + ((output_lse,) if reduce_op == "lse" else ())

        def post(*outs):
            outs = outs or defaults
            for s in state:
                s[4].wait()
            # reverse C: pre-reduce the local partials of each forwarded piece (node-local reduction)
            back_c = state[0][2]
            pre = torch.zeros((sum(lay.b.recv_counts), *back_c.shape[1:]), dtype=back_c.dtype,
                              device=back_c.device)
            pre_lse = None
            if reduce_op == "lse":
                pre_lse = torch.full((pre.shape[0], *state[1][2].shape[1:]), float("-inf"),
                                     device=back_c.device)
            reduce_rows(pre, back_c, lay.fwd_rmap, "lse" if reduce_op == "lse" else "sum", acc_reduce=False,
                        output_lse=pre_lse, recv_lse=state[1][2] if reduce_op == "lse" else None)
            # reverse B: one partial per node crosses the inter link
            bufs = [(pre, sum(lay.b.send_counts))] + ([(pre_lse, sum(lay.b.send_counts))] if pre_lse is not None
                                                     else [])
            finals = []
            for (buf, n), s in zip(bufs, state):
                full = _rows_like(sum(lay.a.send_counts) + n, buf)
                a2a_rows(full[sum(lay.a.send_counts):], buf, lay.b.send_counts, lay.b.recv_counts,
                         inter_group).wait()
                s[3].wait()
                full[: sum(lay.a.send_counts)].copy_(s[1])
                finals.append(full)
            out = outs[0]
            out_lse = outs[1] if len(outs) > 1 else None
            reduce_rows(out, finals[0], lay.final_rmap, reduce_op, acc_reduce=acc_reduce, output_lse=out_lse,
                        recv_lse=finals[1] if len(finals) > 1 else None)
            return out if out_lse is None else (out, out_lse)

        return GrpCollWork([], post, async_op, tuple(state))


register_impl(HierImpl())
