"""Env flags: defaults, strict parsing, combination checks and the key snapshot."""

import pytest
from magi_attention import env
from magi_attention.errors import EnvFlagError


def test_defaults(monkeypatch):
    for name in env.FLAG_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    f = env.snapshot_flags()
    assert not any([f.deterministic, f.qo_comm, f.sdpa_backend, f.cat_gqa])
    assert f.dsink_all_reduce_op == "none" and f.cuda_graphs == "auto"
    assert env.dist_attn_runtime_dict_size() == 1000
    assert env.ffa_fwd_sm_margin() == 4
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    assert env.ffa_bwd_sm_margin() == 0 and env.is_cuda_device_max_connections_one()


@pytest.mark.parametrize("name,value", [("MAGI_ATTENTION_DETERMINISTIC_MODE", "yes"),
                                        ("MAGI_ATTENTION_DSINK_ALL_REDUCE_OP", "max"),
                                        ("MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE", "0"),
                                        ("MAGI_ATTENTION_SDPA_BACKEND", "2"),
                                        ("MAGI_ATTENTION_CUDA_GRAPHS", "on")])
def test_bad_values_raise(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(EnvFlagError, match=name):
        env.snapshot_flags() if "SIZE" not in name else env.dist_attn_runtime_dict_size()


@pytest.mark.parametrize("pair", [
    ("MAGI_ATTENTION_HIERARCHICAL_COMM", "MAGI_ATTENTION_NATIVE_GRPCOLL"),
    ("MAGI_ATTENTION_NATIVE_GRPCOLL", "MAGI_ATTENTION_DETERMINISTIC_MODE"),
    ("MAGI_ATTENTION_FA4_BACKEND", "MAGI_ATTENTION_DETERMINISTIC_MODE"),
    ("MAGI_ATTENTION_HIERARCHICAL_COMM", "MAGI_ATTENTION_QO_COMM"),
])
def test_conflicts(monkeypatch, pair):
    for n in pair:
        monkeypatch.setenv(n, "1")
    with pytest.raises(EnvFlagError) as ei:
        env.check_flag_comb()
    assert all(n in str(ei.value) for n in pair)


def test_cuda_graphs_mode(monkeypatch):
    for raw, mode in (("auto", "auto"), ("AUTO", "auto"), ("1", "1"), ("0", "0"), ("", "auto")):
        monkeypatch.setenv("MAGI_ATTENTION_CUDA_GRAPHS", raw)
        assert env.cuda_graphs_mode() == mode and env.snapshot_flags().cuda_graphs == mode


def test_dsink_op(monkeypatch):
    for op in ("none", "sum", "avg"):
        monkeypatch.setenv("MAGI_ATTENTION_DSINK_ALL_REDUCE_OP", op)
        assert env.dsink_all_reduce_op() == op


def test_kernel_backend_follows_the_flags(monkeypatch):
    from magi_attention.runtime._common import kernel_backend

    for name in env.FLAG_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    assert kernel_backend(env.check_flag_comb()) is None  # magi_ffa chooses
    monkeypatch.setenv("MAGI_ATTENTION_FA4_BACKEND", "1")
    assert kernel_backend(env.check_flag_comb()) == "fa4"  # accepted, no longer NYI
    monkeypatch.setenv("MAGI_ATTENTION_SDPA_BACKEND", "1")
    assert kernel_backend(env.check_flag_comb()) == "torch"  # the SDPA flag wins, as in the anchor
