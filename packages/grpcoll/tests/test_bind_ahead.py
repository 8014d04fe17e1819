"""``plan.bind_ahead`` (interface 1.7): a plan's first-call host work done ahead, on CPU.

The native binding made ahead must be the one the first call then uses (not rebuilt), with the
same tables a binding made at the call would have; a plan without every rank's lists, and the
implementations without per-plan state, do nothing; bad arguments are refused naming them.
"""

from __future__ import annotations

import random

import pytest
import torch
from magi_grpcoll import GroupCastPlan, GrpCollError
from magi_grpcoll import api as grpcoll_api
from magi_grpcoll.impl import native
from magi_grpcoll.testing import random_cast_meta

WORLD = 3


@pytest.fixture
def as_rank(monkeypatch):
    """Pretend to be a rank of a WORLD-rank group (bind_ahead checks the plan against the group)."""
    def use(rank: int):
        monkeypatch.setattr(grpcoll_api, "_group_info", lambda fn, group: (rank, WORLD))
    return use


def _plans(seed: int, lists: bool):
    meta = random_cast_meta(WORLD, random.Random(seed), max_len=9)
    group = [meta.of(p) for p in range(WORLD)] if lists else None
    return [GroupCastPlan.build(*meta.of(p), rank=p, world_size=WORLD, group_lists=group) for p in range(WORLD)]


@pytest.mark.parametrize("engines", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_native_binds_ahead_what_the_first_call_would_bind(as_rank, monkeypatch, seed, engines):
    monkeypatch.setattr(native, "COPY_ENGINE_CASTS", engines)
    impl = native._NATIVE
    for p, plan in enumerate(_plans(seed, lists=True)):
        as_rank(p)
        reduce = plan.transpose()
        assert plan.bind_ahead(None, impl="native", row_bytes=(64, 256))
        assert reduce.bind_ahead(None, impl="native", row_bytes=[64])
        b, rb = impl._bindings[plan], impl._bindings[reduce]
        assert impl._bind_cast(plan, None) is b and impl._bind_reduce(reduce, None) is rb  # not rebuilt
        kinds = ("post",) if engines else ("push", "post")
        assert set(b._tables) == {(k, n) for k in kinds for n in (64, 256)}
        assert ("push" in b._runs) == engines
        assert set(rb._tables) == {("send", 64)}
        # the same tables as a binding made at the call (from the lists, no exchange)
        fresh = native.cast_binding(plan, *native.cast_positions_from_lists(plan))
        for key, table in b._tables.items():
            assert torch.equal(table, fresh.table(*key)), (p, key)
        fresh_r = native.reduce_binding(reduce, native.reduce_counts_from_lists(reduce), impl.reduce_push_fraction)
        assert torch.equal(rb._tables[("send", 64)], fresh_r.table("send", 64))
        assert torch.equal(rb.sources.row, fresh_r.sources.row) and torch.equal(rb.sources.who, fresh_r.sources.who)


def test_nothing_to_do_without_the_lists_or_for_a2av_and_hier(as_rank):
    as_rank(0)
    plan = _plans(7, lists=False)[0]
    assert not plan.bind_ahead(None, impl="native", row_bytes=(64,))  # binding would exchange with the peers
    assert plan not in native._NATIVE._bindings
    listed = _plans(7, lists=True)[0]
    for name in ("a2av", "hier"):
        assert not listed.bind_ahead(None, impl=name, row_bytes=(64,))
        assert not listed.transpose().bind_ahead(None, impl=name)
    assert listed not in native._NATIVE._bindings


def test_bad_arguments_are_refused_naming_them(as_rank):
    as_rank(0)
    plan = _plans(3, lists=True)[0]
    with pytest.raises(GrpCollError, match=r"GroupCastPlan.bind_ahead\(\): magi_grpcoll: impl='nope' is unknown"):
        plan.bind_ahead(None, impl="nope")
    for bad in (64, (0,), (64, -1), (True,), (1.5,), "64"):
        with pytest.raises(GrpCollError, match=r"GroupReducePlan.bind_ahead\(\): row_bytes must be"):
            plan.transpose().bind_ahead(None, impl="native", row_bytes=bad)
    as_rank(1)  # the plan is rank 0's
    with pytest.raises(GrpCollError, match="built for rank 0 of 3 but this process is rank 1 of 3"):
        plan.bind_ahead(None, impl="native")
