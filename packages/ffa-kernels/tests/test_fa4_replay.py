"""The fa4 backend's launch replay (backends/fa4/replay.py) on CPU, through the FA4 stand-in, whose
entry points are host code that launches "compiled kernels" from compile caches as FA4's do: replayed
calls against the float64 reference, and every reason a call must not be replayed."""

from __future__ import annotations

import _fake_fa4
import pytest
import torch
from magi_ffa import ffa_backward, ffa_forward, flex_flash_attn_func
from magi_ffa.backends.fa4 import replay
from magi_ffa.testing import ref_attn_dense
from test_fa4_backend import _masks


@pytest.fixture
def fake_fa4(monkeypatch):
    _fake_fa4.install_backend_on_cpu(monkeypatch)
    monkeypatch.delenv(replay.ENV, raising=False)
    monkeypatch.setenv(replay.RECORD_AT_ENV, "2")  # these tests record on the second call
    yield _fake_fa4.CALLS
    from magi_ffa.backends import fa4 as fa4_backend

    fa4_backend.clear_mask_cache()


def _data(seed, sq, sk, hq=4, hk=2):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, hq, 64, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(sk, hk, 64, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    return q, k, v, torch.randn(sq, hq, 64, generator=g, dtype=torch.float64)


def _check_call(q, k, v, dout, qr, kr, ts, softcap=0.0):
    out, meta = flex_flash_attn_func(q, k, v, qr, kr, ts, softcap=softcap, backend="fa4")
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_out, ref_lse, _ = ref_attn_dense(q, k, v, qr, kr, ts, softcap=softcap)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(meta.lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, torch.autograd.grad(ref_out, (q, k, v), dout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,sq,sk,qr,kr,ts,native", list(_masks()), ids=lambda x: x if isinstance(x, str) else "")
@pytest.mark.parametrize("heads", [(4, 2), (2, 2)], ids=["gqa", "mha"])
def test_replayed_calls_match_the_reference(fake_fa4, name, sq, sk, qr, kr, ts, native, heads):
    """Call 1 compiles, call 2 records (and checks), calls 3-4 replay: each on new data."""
    for seed in range(4):
        _check_call(*_data(seed, sq, sk, *heads), qr, kr, ts, softcap=5.0 if seed % 2 else 0.0)
    s = replay.stats()
    assert s["refused"] == 0, s["refusals"]
    # softcap alternates, so each (direction, softcap) key is seen twice: compiled, then recorded
    assert s["recorded"] == 4 and s["replayed"] == 0
    for seed in range(4, 6):
        _check_call(*_data(seed, sq, sk, *heads), qr, kr, ts, softcap=5.0 if seed % 2 else 0.0)
    assert replay.stats()["replayed"] == 4


@pytest.mark.parametrize("kept", [True, False], ids=["rows-kept", "rows-nan"])
def test_rows_fa4_leaves_unwritten_do_not_stop_the_replay(fake_fa4, monkeypatch, kept):
    """Documents without keys run with seqused_q 0: FA4 leaves their rows of out / lse / dq as the
    buffers held them (torch.empty's contents). The recording's check must still match the call's
    results (it once compared those rows and refused every such key: FA4's own path, ~1 ms of host
    time per remote stage on an H200); the replayed calls then match the reference."""
    monkeypatch.setattr(_fake_fa4, "UNWRITTEN_ROWS_KEPT", kept)
    qr, kr, ts = [[2, 10], [14, 20]], [[0, 8], [12, 18]], [0, 0]
    for seed in range(5):
        _check_call(*_data(seed, 24, 24), qr, kr, ts)
    s = replay.stats()
    assert s["refused"] == 0, s["refusals"]
    assert s["recorded"] == 2 and s["replayed"] == 6  # forward and backward: compiled, recorded, replayed x3


def test_replay_writes_given_buffers_and_accumulating_calls(fake_fa4):
    """ffa_forward / ffa_backward as the runtime drives them: out/dq/dk/dv buffers handed to FA4
    (written, not merged) and accumulating stages, the same across five steps."""
    stages = [([[0, 20]], [[0, 20]], [1]), ([[10, 14], [10, 14]], [[15, 17], [18, 20]], [0, 0])]
    for step in range(5):
        q, k, v, dout = (x.detach() for x in _data(step, 20, 20, 2, 1))
        out, lse = torch.empty(20, 2, 64, dtype=torch.float64), torch.empty(20, 2, dtype=torch.float64)
        for i, (qr, kr, ts) in enumerate(stages):
            ffa_forward(q, k, v, qr, kr, ts, softmax_scale=0.125, out=out, lse=lse, overwrite=i == 0, backend="fa4")
        grads = [torch.empty_like(t) for t in (q, k, v)]
        for i, (qr, kr, ts) in enumerate(stages):
            ffa_backward(dout, q, k, v, out, lse, qr, kr, ts, softmax_scale=0.125, dq=grads[0], dk=grads[1],
                         dv=grads[2], overwrite=i == 0, backend="fa4")
        qa, ka, va = (x.clone().requires_grad_() for x in (q, k, v))
        qr_all, kr_all, ts_all = (sum((list(st[j]) for st in stages), []) for j in range(3))
        ref_out, _, _ = ref_attn_dense(qa, ka, va, qr_all, kr_all, ts_all, softmax_scale=0.125)
        torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
        for a, b in zip(grads, torch.autograd.grad(ref_out, (qa, ka, va), dout)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    s = replay.stats()
    assert s["refused"] == 0, s["refusals"] and s["replayed"] > 0


def test_a_new_layout_is_a_new_key(fake_fa4):
    qr, kr, ts = [[0, 24]], [[0, 24]], [1]
    for _ in range(3):
        _check_call(*_data(0, 24, 24), qr, kr, ts)
    replayed = replay.stats()["replayed"]
    q, k, v, dout = _data(1, 24, 24)
    q_t = q.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # other strides
    _check_call(q_t, k, v, dout, qr, kr, ts)
    assert replay.stats()["replayed"] == replayed  # not replayed: never seen with these strides


def test_off_by_env(fake_fa4, monkeypatch):
    monkeypatch.setenv(replay.ENV, "0")
    for seed in range(4):
        _check_call(*_data(seed, 16, 16), [[0, 16]], [[0, 16]], [1])
    assert replay.stats() == {"recorded": 0, "replayed": 0, "refused": 0, "trusted": 0, "refusals": []}


@pytest.mark.parametrize("host_work,reason", [
    (lambda q, out, lse: torch.empty_like(lse).fill_(0.0), "writes tensor data"),
    (lambda q, out, lse: torch.empty_like(lse).__iadd__(1.0), "writes tensor data"),
    (lambda q, out, lse: q.sum(), "computes a new tensor"),
    (lambda q, out, lse: q.tolist(), "reads tensor data"),
], ids=["writes", "writes-in-place-operator", "computes", "reads"])
def test_host_work_on_tensors_is_never_replayed(fake_fa4, monkeypatch, host_work, reason):
    monkeypatch.setattr(_fake_fa4, "HOST_WORK", host_work)
    _forward_four_times()
    s = replay.stats()
    assert s["replayed"] == 0 and s["refused"] == 1 and reason in s["refusals"][0], s


def test_a_launch_the_recording_misses_is_caught_by_the_check(fake_fa4, monkeypatch):
    """A kernel launched other than through a compile cache is invisible to the recording: the
    replayed tape would leave out unwritten, so the check refuses the key."""
    monkeypatch.setattr(_fake_fa4, "LAUNCH_UNCACHED", True)
    _forward_four_times()
    s = replay.stats()
    assert s["replayed"] == 0 and s["refused"] == 1 and "did not reproduce" in s["refusals"][0], s


def _forward_four_times():
    for seed in range(4):
        q, k, v, _ = _data(seed, 16, 16)
        with torch.no_grad():
            out, _ = flex_flash_attn_func(q, k, v, [[0, 16]], [[0, 16]], [1], backend="fa4")
        torch.testing.assert_close(out, ref_attn_dense(q, k, v, [[0, 16]], [[0, 16]], [1])[0], atol=1e-10, rtol=0)


def test_a_checked_structure_is_trusted_for_a_new_mask(fake_fa4):
    """Varlen training brings new masks every step: the second mask of the same kernel structure
    (here two document packings of 24 tokens) is recorded without the check, and its replays are
    still right, forward and backward."""
    masks = [([[0, 8], [8, 24]], [[0, 8], [8, 24]], [1, 1]), ([[0, 16], [16, 24]], [[0, 16], [16, 24]], [1, 1])]
    for i, (qr, kr, ts) in enumerate(masks):
        for seed in range(3):  # compiled (or seen once), recorded, replayed
            _check_call(*_data(10 * i + seed, 24, 24), qr, kr, ts)
    s = replay.stats()
    assert s["refused"] == 0, s["refusals"]
    assert s["recorded"] == 4 and s["trusted"] == 2 and s["replayed"] == 4, s


def test_a_structure_is_trusted_only_after_its_check_passed(fake_fa4, monkeypatch):
    """A tape whose check failed teaches nothing: the next mask of that structure is checked (and
    refused) too."""
    monkeypatch.setattr(_fake_fa4, "LAUNCH_UNCACHED", True)
    for qr in ([[0, 16]], [[0, 12]]):
        for seed in range(2):
            q, k, v, _ = _data(seed, 16, 16)
            with torch.no_grad():
                flex_flash_attn_func(q, k, v, qr, [[0, 16]], [1], backend="fa4")
    s = replay.stats()
    assert s["refused"] == 2 and s["trusted"] == 0 and s["recorded"] == 0, s


def test_a_key_is_recorded_only_at_its_record_at_call(fake_fa4, monkeypatch):
    """By default a key runs FA4's own path until its 8th call (a recording costs tens of replays'
    savings; a new mask per step calls its keys once per layer): recorded then, replayed after."""
    monkeypatch.delenv(replay.RECORD_AT_ENV)
    assert replay.record_at() == replay.RECORD_AT == 8
    for n in range(1, 10):
        q, k, v, _ = _data(n, 16, 16)
        with torch.no_grad():
            out, _ = flex_flash_attn_func(q, k, v, [[0, 16]], [[0, 16]], [1], backend="fa4")
        torch.testing.assert_close(out, ref_attn_dense(q, k, v, [[0, 16]], [[0, 16]], [1])[0], atol=1e-10, rtol=0)
        s = replay.stats()
        assert (s["recorded"], s["replayed"]) == ((0, 0) if n < 8 else (1, n - 8)), (n, s)


@pytest.mark.parametrize("raw", ["1", "x"])
def test_record_at_must_be_a_later_call(monkeypatch, raw):
    monkeypatch.setenv(replay.RECORD_AT_ENV, raw)
    with pytest.raises(ValueError, match=replay.RECORD_AT_ENV):
        replay.record_at()
