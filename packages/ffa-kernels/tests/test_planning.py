"""magi_ffa.fa4_runs_natively: the host-side answer planners get, checked against the fa4 backend's
own translation (the native form it would launch) and on hand-made masks of each kind."""

import numpy as np
import pytest
import torch
from magi_ffa import fa4_runs_natively
from magi_ffa.backends.fa4.block_sparse import build_slice_block_mask
from magi_ffa.testing import shared_question_slices

S = 512


def _native_by_translation(qr, kr, tm, sq, sk) -> bool:
    q = np.asarray(qr, dtype=np.int64).reshape(-1, 2)
    k = np.asarray(kr, dtype=np.int64).reshape(-1, 2)
    t = np.asarray(tm, dtype=np.int64).reshape(-1)
    return build_slice_block_mask(q, k, t, sq, sk, (128, 128), device="cpu").native is not None


CASES = {
    "full": ([[0, S]], [[0, S]], [0], S, S, True),
    "causal": ([[0, S]], [[0, S]], [1], S, S, True),
    "causal as two slices": ([[0, 200], [200, S]], [[0, 200], [0, S]], [1, 1], S, S, True),
    "sliding window": ([[0, 64], [64, S]], [[0, 64], [0, S]], [1, 3], S, S, True),
    "documents": ([[0, 100], [100, 350], [350, S]], [[0, 100], [100, 350], [350, S]], [1, 1, 1], S, S, True),
    "rectangle, Sq != Sk": ([[0, 300]], [[0, 40]], [0], 300, 40, True),
    # a rank's remote stage after a chunked dispatch: rows see growing prefixes of one key range
    "staircase": ([[0, 128], [128, 256], [256, 384]], [[0, 100], [0, 200], [0, 300]], [0, 0, 0], 384, 300, False),
    # two key runs per row: the answers see the prompt and their own causal part
    "shared question": (*shared_question_slices(128, [128, 128, 128]), S, S, False),
    "empty": ([[0, 0]], [[0, 0]], [0], S, S, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_runs_natively_agrees_with_the_translation(name):
    qr, kr, tm, sq, sk, expected = CASES[name]
    got = fa4_runs_natively(qr, kr, tm, sq, sk)
    assert got is expected
    if name != "empty":  # the translation of an empty mask is the (empty) block lists
        assert got == _native_by_translation(qr, kr, tm, sq, sk)


def test_runs_natively_takes_numpy_and_tensors():
    qr, kr, tm = np.array([[0, S]]), np.array([[0, S]]), np.array([1])
    assert fa4_runs_natively(qr, kr, tm, S, S)
    assert fa4_runs_natively(torch.tensor(qr, dtype=torch.int32), torch.tensor(kr, dtype=torch.int32),
                             torch.tensor(tm, dtype=torch.int32), S, S)
