"""Bad input raises a clear ValueError/TypeError naming the function and the argument."""

from __future__ import annotations

import pytest
import torch
from magi_ffa import (
    BackendUnavailableError,
    FFAInputError,
    FFATypeError,
    ffa_backward,
    ffa_forward,
    flex_flash_attn_func,
)

QR, KR, TM = [[0, 8], [8, 16]], [[0, 8], [0, 16]], [1, 0]


def _qkv(sq=16, sk=16, hq=4, hk=2, d=8, dtype=torch.float32):
    return (
        torch.randn(sq, hq, d, dtype=dtype),
        torch.randn(sk, hk, d, dtype=dtype),
        torch.randn(sk, hk, d, dtype=dtype),
    )


def _call(q=None, k=None, v=None, qr=QR, kr=KR, tm=TM, **kw):
    dq, dk, dv = _qkv()
    kw.setdefault("backend", "torch")
    return flex_flash_attn_func(
        dq if q is None else q, dk if k is None else k, dv if v is None else v, qr, kr, tm, **kw
    )


CASES = [
    # (kwargs for _call, exception type, message fragment)
    (dict(qr=[[0, 8], [12, 9]]), FFAInputError, r"q_ranges\[1\]=\(12, 9\) is inverted"),
    (dict(kr=[[0, 8], [0, 17]]), FFAInputError, r"k_ranges\[1\]=\(0, 17\) is out of bounds"),
    (dict(qr=[[-1, 8], [8, 16]]), FFAInputError, r"q_ranges\[0\]=\(-1, 8\) is out of bounds"),
    (dict(kr=[[0, 8]], tm=[1]), FFAInputError, r"q_ranges has 2 slices but k_ranges has 1"),
    (dict(tm=[1, 4]), FFAInputError, r"attn_type_map\[1\]=4 is not a mask type code"),
    (dict(tm=[1, -1]), FFAInputError, r"attn_type_map\[1\]=-1"),
    (dict(tm=[1]), FFAInputError, r"attn_type_map must have shape \[2\]"),
    (dict(qr=torch.tensor([[0.0, 8.0]])), FFATypeError, r"q_ranges must be an int32 tensor"),
    (dict(qr=torch.tensor([0, 8], dtype=torch.int32)), FFAInputError, r"q_ranges must have shape \[N, 2\]"),
    (dict(qr="0:8"), FFATypeError, r"q_ranges must be a list of \(start, end\) int pairs"),
    (
        dict(k=torch.randn(16, 2, 8, dtype=torch.float64)),
        FFATypeError,
        r"k.dtype=float64 differs from q.dtype=float32",
    ),
    (dict(v=torch.randn(16, 2, 8, dtype=torch.float16)), FFATypeError, r"v.dtype=float16 differs"),
    (
        dict(q=torch.randn(16, 4, 8).to(torch.int32)),
        FFATypeError,
        r"q.dtype=int32 is not a supported float dtype",
    ),
    (
        dict(k=torch.randn(16, 3, 8), v=torch.randn(16, 3, 8)),
        FFAInputError,
        r"q heads \(4\) must be a multiple of k/v heads \(3\)",
    ),
    (dict(q=torch.randn(16, 32)), FFAInputError, r"q must have 3 dims"),
    (
        dict(k=torch.randn(16, 2, 16), v=torch.randn(16, 2, 16)),
        FFAInputError,
        r"head_dim of k \(16\) differs from q \(8\)",
    ),
    (dict(v=torch.randn(15, 2, 8)), FFAInputError, r"k and v need the same shape"),
    (dict(q=[1, 2]), FFATypeError, r"q must be a torch.Tensor"),
    (
        dict(sink=torch.randn(2, 3)),
        FFAInputError,
        r"sink has shape \[2, 3\] but sink_layout='sh' needs \[s_sink, 4\]",
    ),
    (
        dict(sink=torch.randn(2, 4), sink_layout="ssh"),
        FFAInputError,
        r"sink_layout='ssh' needs \[16, s_sink, 4\]",
    ),
    (dict(sink=torch.randn(2, 4).half()), FFATypeError, r"sink.dtype=float16 is not supported"),
    (dict(sink=torch.randn(2, 4), sink_layout="hs"), FFAInputError, r"sink_layout='hs' is unknown"),
    (
        dict(sink=torch.randn(2, 4), sink_layout="shd"),
        NotImplementedError,
        r"sink_layout='shd' is not supported",
    ),
    (dict(softcap=-1.0), FFAInputError, r"softcap must be a finite float >= 0"),
    (dict(softmax_scale=float("nan")), FFAInputError, r"softmax_scale must be finite"),
    (dict(softmax_scale="0.1"), FFATypeError, r"softmax_scale must be a float"),
    (
        dict(deterministic=True, auto_range_merge=True),
        FFAInputError,
        r"deterministic=True cannot be combined with auto_range_merge",
    ),
    (dict(sparse_load=True), FFAInputError, r"sparse_load=True requires auto_range_merge=True"),
    (
        dict(pack_gqa=True, cat_gqa=True),
        FFAInputError,
        r"pack_gqa=True and cat_gqa=True are mutually exclusive",
    ),
    (dict(disable_bwd_dkv_atomic_reduction=True, swap_bwd_qk_loop=True), FFAInputError, r"swap_bwd_qk_loop"),
    (dict(disable_fwd_atomic_reduction=True, qr=[[0, 8], [4, 16]]), FFAInputError, r"disjoint q_ranges"),
    (dict(disable_bwd_dkv_atomic_reduction=True), FFAInputError, r"disjoint k_ranges"),
    (dict(ref_block_size=(100, 64)), FFAInputError, r"ref_block_size=\(100, 64\) is invalid"),
    (dict(ref_block_size=(128, 64), swap_ab=True), FFAInputError, r"invalid with swap_ab=True"),
    (dict(sm_margin=-1), FFAInputError, r"sm_margin must be an int >= 0"),
    # values equal to the defaults but of the wrong type: the all-defaults early return compares by identity
    (dict(sm_margin=False), FFAInputError, r"sm_margin must be an int >= 0"),
    (dict(deterministic=0), FFATypeError, r"deterministic must be a bool"),
    (dict(max_seqlen_q=1.5), FFAInputError, r"max_seqlen_q must be None or an int"),
    (dict(return_max_logits=1), FFATypeError, r"return_max_logits must be a bool"),
    (dict(backend="cudnn"), FFAInputError, r"backend='cudnn' is not a kernel backend"),
]


@pytest.mark.parametrize("kw,exc,msg", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_input(kw, exc, msg):
    with pytest.raises(exc, match=msg) as info:
        _call(**kw)
    assert (
        "flex_flash_attn_func()" in str(info.value) or exc is FFAInputError and "backend" in str(info.value)
    )


def test_error_types_are_value_and_type_errors():
    assert issubclass(FFAInputError, ValueError) and issubclass(FFATypeError, TypeError)
    assert issubclass(BackendUnavailableError, ValueError)


def test_disjoint_ranges_accepted_with_atomic_knobs():
    out, _ = _call(
        qr=[[0, 8], [8, 16]],
        kr=[[0, 8], [8, 16]],
        disable_fwd_atomic_reduction=True,
        disable_bwd_dkv_atomic_reduction=True,
    )
    assert out.shape == (16, 4, 8)


def test_accumulation_interface_checks():
    q, k, v = _qkv()
    with pytest.raises(FFAInputError, match=r"ffa_forward\(\): pass both out and lse"):
        ffa_forward(q, k, v, QR, KR, TM, softmax_scale=0.3, out=torch.zeros(16, 4, 8), backend="torch")
    with pytest.raises(FFAInputError, match=r"ffa_forward\(\): lse must have shape \[16, 4\]"):
        ffa_forward(
            q,
            k,
            v,
            QR,
            KR,
            TM,
            softmax_scale=0.3,
            out=torch.zeros(16, 4, 8),
            lse=torch.zeros(16, 2),
            backend="torch",
        )
    with pytest.raises(FFATypeError, match=r"ffa_forward\(\): out must be a float32 buffer, got torch.float16"):
        ffa_forward(
            q,
            k,
            v,
            QR,
            KR,
            TM,
            softmax_scale=0.3,
            out=torch.zeros(16, 4, 8).half(),
            lse=torch.zeros(16, 4),
            backend="torch",
        )
    with pytest.raises(FFAInputError, match=r"ffa_forward\(\): q_ranges\[1\]=\(8, 20\) is out of bounds"):
        ffa_forward(q, k, v, [[0, 8], [8, 20]], KR, TM, softmax_scale=0.3, backend="torch")
    out, lse, _ = ffa_forward(q, k, v, QR, KR, TM, softmax_scale=0.3, backend="torch")
    with pytest.raises(FFAInputError, match=r"ffa_backward\(\): dk must have shape \[16, 2, 8\]"):
        ffa_backward(
            q, q, k, v, out, lse, QR, KR, TM, softmax_scale=0.3, dk=torch.zeros(16, 4, 8), backend="torch"
        )
    with pytest.raises(FFAInputError, match=r"ffa_backward\(\): dout must be a tensor of shape \[16, 4, 8\]"):
        ffa_backward(k, q, k, v, out, lse, QR, KR, TM, softmax_scale=0.3, backend="torch")


def test_range_checks_follow_the_cached_host_copy():
    """Value checks read the shared host copy: still right after an in-place change of a range
    tensor that passed before, and against each call's own sequence lengths."""
    q, k, v = _qkv()
    qr = torch.tensor(QR, dtype=torch.int32)
    kr = torch.tensor(KR, dtype=torch.int32)
    tm = torch.tensor(TM, dtype=torch.int32)
    flex_flash_attn_func(q, k, v, qr, kr, tm, backend="torch")
    with pytest.raises(FFAInputError, match=r"q_ranges\[1\]=\(8, 16\) is out of bounds; .*\[0, 12\]"):
        flex_flash_attn_func(q[:12], k, v, qr, kr, tm, backend="torch")
    kr[0, 0] = 9  # in place: (9, 8) is now inverted
    with pytest.raises(FFAInputError, match=r"k_ranges\[0\]=\(9, 8\) is inverted"):
        flex_flash_attn_func(q, k, v, qr, kr, tm, backend="torch")
    kr[0, 0] = 0
    tm[1] = 7
    with pytest.raises(FFAInputError, match=r"attn_type_map\[1\]=7 is not a mask type code"):
        flex_flash_attn_func(q, k, v, qr, kr, tm, backend="torch")
    tm[1] = 0
    out, _ = flex_flash_attn_func(q, k, v, qr, kr, tm, backend="torch")
    assert out.shape == q.shape


def test_repeated_calls_skip_the_checks_until_an_argument_changes(monkeypatch):
    """A call with the same range tensors (unchanged) and the same q/k/v signature reuses the first
    call's checked, normalised arguments (api._prepare); anything else is checked again."""
    from magi_ffa import api, checks

    seen = []
    real = checks.check_qkv
    monkeypatch.setattr(checks, "check_qkv", lambda *a: seen.append(1) or real(*a))
    api._prepared.clear()
    q, k, v = _qkv()
    qr, kr = torch.tensor(QR, dtype=torch.int32), torch.tensor(KR, dtype=torch.int32)
    first = flex_flash_attn_func(q, k, v, qr, kr, None, backend="torch")[0]  # type map None: all full
    again = flex_flash_attn_func(q, k, v, qr, kr, None, backend="torch")[0]
    assert len(seen) == 1 and torch.equal(first, again)
    q2, k2, v2 = _qkv(hk=3)  # 4 q heads over 3 kv heads: checked, and refused
    with pytest.raises(FFAInputError, match="multiple of k/v heads"):
        flex_flash_attn_func(q2, k2, v2, qr, kr, None, backend="torch")
    with pytest.raises(FFAInputError, match=r"k_ranges\[1\]=\(0, 16\) is out of bounds"):
        flex_flash_attn_func(q, k[:12], v[:12], qr, kr, None, backend="torch")
    assert len(seen) == 3
    flex_flash_attn_func(q, k, v, qr.clone(), kr, None, backend="torch")  # a new tensor: checked
    assert len(seen) == 4


def test_forgetting_the_host_copies_forgets_the_checked_calls():
    """range_cache.clear() (the remedy after writing range tensors behind autograd's back) also
    drops the memo of checked calls, which trusts the same identities."""
    from magi_ffa import api, range_cache

    q, k, v = _qkv()
    qr, kr, tm = (torch.tensor(x, dtype=torch.int32) for x in (QR, KR, TM))
    flex_flash_attn_func(q, k, v, qr, kr, tm, backend="torch")
    assert api._prepared
    with torch.no_grad():
        kr.data[0, 0] = 9  # .data: invisible to the version counter
    range_cache.clear()
    assert not api._prepared
    with pytest.raises(FFAInputError, match=r"k_ranges\[0\]=\(9, 8\) is inverted"):
        flex_flash_attn_func(q, k, v, qr, kr, tm, backend="torch")
