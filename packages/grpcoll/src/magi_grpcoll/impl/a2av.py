"""The default implementation: range-gather pre-pass, all_to_all_single, gather/reduce post-pass.

Works on any torch.distributed backend that has all_to_all_single (gloo on CPU, NCCL on GPU). A
split with m destinations is copied m times into the send buffer; the pre- and post-passes are
skipped when a plan says they are the identity.
"""

from __future__ import annotations

import torch

from magi_grpcoll.impl._a2a import a2a_rows
from magi_grpcoll.impl.base import GrpCollImpl, cast_pairs, register_impl
from magi_grpcoll.kernels import gather_rows, reduce_rows

__all__ = ["A2AVImpl"]


def _send_buffer(plan, src: torch.Tensor, dtype=None) -> torch.Tensor:
    buf = src if plan.send_rows is None else gather_rows(src, plan.send_rows)
    if dtype is not None and buf.dtype != dtype:
        buf = buf.to(dtype)
    return buf


def _empty_rows(n: int, like: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty((n, *like.shape[1:]), dtype=dtype or like.dtype, device=like.device)


class A2AVImpl(GrpCollImpl):
    """all-to-all-v based group collectives (any backend, host list meta, preallocated output)."""

    NAME = "a2av"

    def cast(self, plan, inputs, outputs, group, *, async_op, input_lse=None, output_lse=None, **kwargs):
        from magi_grpcoll.work import GrpCollWork

        pairs = cast_pairs(inputs, outputs, input_lse, output_lse)
        works, keep, recvs = [], [], []
        n_recv = sum(plan.recv_counts)
        for src, dst in pairs:
            send = _send_buffer(plan, src)
            recv = dst if plan.recv_rows is None else _empty_rows(n_recv, dst)
            works.append(a2a_rows(recv, send, plan.recv_counts, plan.send_counts, group))
            keep += [send, recv]
            recvs.append(recv)
        defaults = tuple(d for _, d in pairs)

        def post(*outs):
            outs = outs or defaults
            for recv, dst in zip(recvs, outs):
                if plan.recv_rows is not None:
                    gather_rows(recv, plan.recv_rows, out=dst)
                elif recv is not dst:
                    dst.copy_(recv)
            return outs[0] if len(outs) == 1 else tuple(outs)

        return GrpCollWork(works, post, async_op, tuple(keep))

    def reduce(self, plan, input, output, group, *, async_op, reduce_op="sum", acc_reduce=True,
               comm_dtype=None, input_lse=None, output_lse=None, fold_at_wait=False, **kwargs):
        # the fold is the post-pass: it runs at the wait whether or not fold_at_wait asks for it
        from magi_grpcoll.work import GrpCollWork

        n_recv = sum(plan.recv_counts)
        send = _send_buffer(plan, input, comm_dtype)
        recv = _empty_rows(n_recv, send)
        works = [a2a_rows(recv, send, plan.recv_counts, plan.send_counts, group)]
        keep = [send, recv]
        recv_lse = None
        if reduce_op == "lse":
            send_lse = _send_buffer(plan, input_lse)
            recv_lse = _empty_rows(n_recv, send_lse)
            works.append(a2a_rows(recv_lse, send_lse, plan.recv_counts, plan.send_counts, group))
            keep += [send_lse, recv_lse]
        defaults = (output,) + ((output_lse,) if reduce_op == "lse" else ())

        def post(*outs):
            outs = outs or defaults
            out = outs[0]
            out_lse = outs[1] if len(outs) > 1 else None
            reduce_rows(out, recv, plan.rmap, reduce_op, acc_reduce=acc_reduce, output_lse=out_lse,
                        recv_lse=recv_lse)
            return out if out_lse is None else (out, out_lse)

        return GrpCollWork(works, post, async_op, tuple(keep))


register_impl(A2AVImpl())
