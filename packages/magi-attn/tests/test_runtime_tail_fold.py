"""Where the runtime folds a hidden tail's dK/dV reduce (MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE, one
remote stage): into the host's dK/dV at the reduce's wait wherever the collectives fold at the wait
(a2av, hier; native only with magi_grpcoll's ``impl.native.FOLD_AT_WAIT`` switch), else into a
zeroed buffer added at the end. Decided when a runtime is built; checked here on the decision
itself, since native collectives need GPUs (their fold at the wait: magi_grpcoll's GPU test)."""

import pytest
import torch
from magi_attention import _compat
from magi_attention.config import DistAttnConfig
from magi_attention.env import snapshot_flags
from magi_attention.runtime.dist_attn import DistAttnRuntime
from magi_attention.runtime.runtime_mgr import _overlap_params


def _one_stage_rank_plan():
    T, chunk = 64, 16
    meta = _compat.solver.make_dispatch_meta([[0, T]], [[0, T]], [1], T, chunk, 2, "min_heap")
    plan = _compat.solver.make_dist_attn_plan([[0, T]], [[0, T]], [1], meta, _overlap_params(DistAttnConfig()))
    rp = next(plan.rank_plan(r) for r in range(2) if len(plan.rank_plan(r).stages) == 1)
    return rp


@pytest.mark.parametrize("native_env", ["0", "1"])
def test_the_hidden_tail_folds_at_the_wait_where_the_collectives_can(monkeypatch, native_env):
    from magi_grpcoll.impl import native

    monkeypatch.setenv("MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE", "1")
    monkeypatch.setenv("MAGI_ATTENTION_NATIVE_GRPCOLL", native_env)
    flags = snapshot_flags()
    rp = _one_stage_rank_plan()
    for switch in (False, True):
        monkeypatch.setattr(native, "FOLD_AT_WAIT", switch)
        runtime = DistAttnRuntime(rp, 1, None, flags, torch.device("cpu"))
        assert runtime.save_tail
        # a2av folds at the wait whatever the switch; native only with it
        assert runtime.fold_tail_at_wait is (native_env == "0" or switch), (native_env, switch)
    monkeypatch.setenv("MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE", "0")  # no kept tail: nothing to fold late
    assert not DistAttnRuntime(rp, 1, None, snapshot_flags(), torch.device("cpu")).fold_tail_at_wait
