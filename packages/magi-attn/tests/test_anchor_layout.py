"""The anchor's module layout (reference §1): each public name at the path v1.1.0 code imports it
from, the group collectives under ``magi_attention.comm`` being magi_grpcoll's own functions, and
``ffa_fa4_func`` (the FA4 benchmarking entry point) through magi_ffa's FA4 stand-in on CPU."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

#: module -> names v1.1.0 code imports from it. Left out on purpose (docs/migration.md): the anchor's
#: JIT build (``common.jit``), its Triton range kernels (``common.range_op``) and its native buffer
#: manager (``init_grpcoll_buffer_mgr``); magi_grpcoll manages its own buffers.
LAYOUT = {
    "magi_attention": ["comm", "config", "functional", "init_dist_attn_runtime_key", "init_dist_attn_runtime_mgr",
                       "is_sanity_check_enable", "is_flatten_head_groups_enable", "is_sdpa_backend_enable",
                       "is_fa4_backend_enable", "is_cuda_device_max_connections_one", "is_deterministic_mode_enable",
                       "is_profile_mode_enable", "is_auto_range_merge_enable", "is_cat_gqa_enable",
                       "dist_attn_backward_hide_tail_reduce", "dist_attn_runtime_dict_size", "__version__"],
    "magi_attention.api": ["calc_attn", "dispatch", "undispatch", "magi_attn_flex_key", "magi_attn_varlen_key",
                           "get_most_recent_key", "get_position_ids", "make_varlen_key_for_new_mask_after_dispatch",
                           "make_flex_key_for_new_mask_after_dispatch", "magi_attn_flex_dispatch",
                           "magi_attn_varlen_dispatch", "flex_flash_attn_func", "compute_pad_size", "squash_batch_dim",
                           "infer_varlen_mask_from_batch", "infer_attn_mask_from_sliding_window",
                           "infer_attn_mask_from_cu_seqlens", "AttnMaskType", "AttnOverlapMode", "AttnRanges",
                           "DistAttnConfig", "DispatchConfig", "MinHeapDispatchAlg", "SequentialDispatchAlg",
                           "SortedSequentialSelectAlg", "ToppHeapDispatchAlg", "OverlapConfig", "UniformOverlapAlg"],
    "magi_attention.api.functools": ["pad_at_dim", "unpad_at_dim", "apply_padding"],
    "magi_attention.functional": ["flex_flash_attn_func", "ffa_fa4_func", "dist_attn_func", "dispatch_func",
                                  "undispatch_func", "correct_attn_lse", "correct_attn_out", "correct_attn_out_lse",
                                  "correct_attn_lse_with_sink", "correct_attn_out_with_sink",
                                  "correct_attn_out_lse_with_sink"],
    "magi_attention.common": ["AttnRange", "RangeError", "AttnRanges", "AttnMask", "AttnRectangle", "AttnRectangles",
                              "AttnForwardMeta", "enum", "USE_CPP_BACKEND", "is_cpp_backend_enable"],
    "magi_attention.common.enum": ["GroupReduceOp", "AttnSinkLayout", "OutMaybeWithLSE", "AttnType", "AttnRole",
                                   "AttnOverlapMode", "DispatchAlgType", "OverlapAlgType", "DynamicAttnAlgType",
                                   "GrpCollBufferName"],
    "magi_attention.config": ["DistAttnConfig", "DispatchConfig", "DispatchAlg", "LBDispatchAlg", "DPDispatchAlg",
                              "BSDispatchAlg", "MinHeapDispatchAlg", "SequentialDispatchAlg",
                              "SortedSequentialSelectAlg", "OverlapConfig", "OverlapAlg", "UniformOverlapAlg",
                              "GreedyOverlapAlg", "GrpCollConfig"],
    "magi_attention.dist_attn_runtime_mgr": ["DistAttnRuntimeKey", "DistAttnRuntimeMgr", "DistAttnRuntimeDict",
                                             "init_dist_attn_runtime_key", "init_dist_attn_runtime_mgr",
                                             "check_flag_comb"],
    "magi_attention.comm.primitive.grpcoll": ["group_cast", "group_reduce", "GrpCollConfig"],
    "magi_attention.utils": ["setup_dist_env", "clearup_dist_env"],
}


@pytest.mark.parametrize("module", list(LAYOUT))
def test_the_anchors_names_are_where_it_has_them(module):
    mod = importlib.import_module(module)
    assert [n for n in LAYOUT[module] if not hasattr(mod, n)] == []


def test_the_group_collectives_are_magi_grpcolls():
    import magi_attention
    import magi_grpcoll

    grpcoll = magi_attention.comm.primitive.grpcoll
    assert grpcoll.group_cast is magi_grpcoll.group_cast and grpcoll.group_reduce is magi_grpcoll.group_reduce
    assert magi_attention.comm.primitive.group_cast is magi_grpcoll.group_cast


FFA_TESTS = Path(__file__).resolve().parents[2] / "ffa-kernels" / "tests"


@pytest.mark.skipif(not (FFA_TESTS / "_fake_fa4.py").exists(), reason="needs magi_ffa's FA4 stand-in (source tree)")
def test_ffa_fa4_func_is_the_fa4_backend(monkeypatch):
    """(out, lse) of the fa4 backend, through magi_ffa's CPU stand-in for FA4, against the float64
    reference; and without FA4, the backend's error naming what to install."""
    from magi_attention.functional import ffa_fa4_func

    g = torch.Generator().manual_seed(0)
    q = torch.randn(24, 4, 64, generator=g, dtype=torch.float64)
    k, v = (torch.randn(24, 2, 64, generator=g, dtype=torch.float64) for _ in range(2))
    qr, kr, types = [[0, 10], [10, 24]], [[0, 10], [0, 24]], [1, 0]
    with pytest.raises(ImportError, match="flash-attn-4"):
        ffa_fa4_func(q, k, v, qr, kr, types)
    monkeypatch.syspath_prepend(str(FFA_TESTS))
    import _fake_fa4
    from magi_ffa.testing import ref_attn_dense

    _fake_fa4.install_backend_on_cpu(monkeypatch)
    try:
        out, lse = ffa_fa4_func(q, k, v, qr, kr, types, softcap=5.0, reuse_attn_arg=True)
    finally:
        from magi_ffa.backends import fa4 as fa4_backend
        from magi_ffa.backends.fa4 import kernel

        fa4_backend.clear_mask_cache()
        kernel.import_fa4.cache_clear()  # it holds the stand-in's modules
        sys.modules.pop("_fake_fa4", None)
    ref_out, ref_lse, _ = ref_attn_dense(q, k, v, qr, kr, types, softcap=5.0)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


def _single_rank_env(monkeypatch, **extra):
    from magi_attention.testing import free_port

    for name in ("LOCAL_RANK", "NNODES", "NPROC_PER_NODE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), **extra}
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_setup_dist_env_from_torchruns_environment(monkeypatch):
    """The anchor quickstart's set-up: the default group from the environment (gloo here), the
    rank's device, one seed on every rank; then torn down."""
    import torch.distributed as dist
    from magi_attention.utils import clearup_dist_env, setup_dist_env

    assert not dist.is_initialized()
    _single_rank_env(monkeypatch)
    try:
        got = setup_dist_env(backend="gloo", seed=7)
        first = torch.randn(4)
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert got == (0, 0, 1, 1, 1, dist.group.WORLD, torch.device("cpu"), 7)
        assert setup_dist_env(backend="gloo", seed=7)[:5] == (0, 0, 1, 1, 1)  # an initialised group is kept
        assert torch.equal(torch.randn(4), first)  # seeded again, the same stream
    finally:
        clearup_dist_env()
    assert not dist.is_initialized()
    clearup_dist_env()  # nothing to tear down: no error


@pytest.mark.parametrize("unset,extra,match", [("RANK", {}, "RANK is not set"),
                                               (None, {"WORLD_SIZE": "x"}, "WORLD_SIZE='x'"),
                                               (None, {"NNODES": "3", "WORLD_SIZE": "1"}, "NNODES=3")])
def test_setup_dist_env_names_what_is_wrong(monkeypatch, unset, extra, match):
    import torch.distributed as dist
    from magi_attention.errors import MagiAttentionError
    from magi_attention.utils import clearup_dist_env, setup_dist_env

    _single_rank_env(monkeypatch, **extra)
    if unset:
        monkeypatch.delenv(unset)
    try:
        with pytest.raises(MagiAttentionError, match=match):
            setup_dist_env(backend="gloo")
    finally:
        clearup_dist_env()
    assert not dist.is_initialized()
