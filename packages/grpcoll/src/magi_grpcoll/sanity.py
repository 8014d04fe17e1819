"""Cross-rank consistency check (``MAGI_ATTENTION_SANITY_CHECK=1``): one all_gather_object of meta.

Each rank contributes its local verdict (an error message or None), its per-peer send/receive row
counts and its row shape and dtype. Only the per-peer totals must agree: output splits may cut a
source's row stream differently from the source's own splits (see GroupCastPlan). Every rank then runs the same checks
on the same gathered table, so either all ranks raise the same :class:`GrpCollError` or none does;
no rank is left hanging in an all-to-all the others never enter.
"""

from __future__ import annotations

import os

import torch.distributed as dist

from magi_grpcoll.errors import GrpCollError

__all__ = ["is_sanity_check_enabled", "exchange_and_check"]


def is_sanity_check_enabled() -> bool:
    return os.environ.get("MAGI_ATTENTION_SANITY_CHECK", "0") == "1"


def exchange_and_check(fn: str, plan, err: Exception | None, group, row_info: tuple) -> None:
    """Gather every rank's meta and raise the same GrpCollError everywhere on any disagreement."""
    mine = {
        "err": None if err is None else f"{type(err).__name__}: {err}",
        "send": None if plan is None else tuple(plan.send_counts),
        "recv": None if plan is None else tuple(plan.recv_counts),
        "row": row_info,
    }
    world = dist.get_world_size(group)
    table: list = [None] * world
    dist.all_gather_object(table, mine, group=group)
    for r, entry in enumerate(table):
        if entry["err"] is not None:
            if err is not None:
                raise err
            raise GrpCollError(f"{fn}(): rank {r} of the group rejected its input ({entry['err']}); "
                               f"every rank raises so that none hangs.")
    rows = {entry["row"] for entry in table}
    if len(rows) > 1:
        detail = ", ".join(f"rank {r}: {e['row']}" for r, e in enumerate(table))
        raise GrpCollError(f"{fn}(): ranks disagree on the row shape/dtype of the tensors ({detail}); "
                           f"all ranks must pass tensors with the same trailing shape and dtype.")
    for p in range(world):
        for d in range(world):
            sent, expected = table[p]["send"][d], table[d]["recv"][p]
            if sent != expected:
                raise GrpCollError(
                    f"{fn}(): rank {p} sends {sent} rows to rank {d}, but rank {d} expects {expected} rows "
                    f"from rank {p}; check the split sizes and dst/src indices of both ranks.")
