"""The context-parallel runtime on the fa4 kernel backend, end to end on CPU/gloo in float64 (and
fp16, where the runtime keeps out/dq in the input dtype).

FA4 itself needs a Hopper GPU; magi_ffa's tests carry a stand-in that honours FA4's contract (only
the listed tiles are visited, the mask function runs on partial tiles only, rows that see no key
are left undefined). With it, the runtime's fa4 path (per-stage calls whose partial results are
merged into the accumulators, no delta pass in the backward, the sink applied once) is checked
against the dense float64 reference on 2 ranks, for the masks whose stage slices differ most.
"""

from pathlib import Path

import pytest

FFA_TESTS = Path(__file__).resolve().parents[2] / "ffa-kernels" / "tests"
FA4_ENV = {"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_DSINK_ALL_REDUCE_OP": "sum"}


def _cases() -> list[dict]:
    # fa4: head dims 64/96/128, no max_logits; its lse is fp32, which bounds the fp64 errors (~1e-7)
    base = dict(hq=4, hk=2, d=64, T=96, chunk=8, max_logits=False, tol=2e-6)
    return [
        dict(base, name="causal-deg2", mask="causal", degree=2),
        # min_heap deals the last document's chunks to both ranks: one remote stage is a staircase,
        # run as row layers of native documents (magi_ffa's decompose.row_layers)
        dict(base, name="varlen-causal-deg3", mask="varlen_causal", cu=[0, 33, 40, 96], degree=3),
        dict(base, name="sliding-window", mask="sliding_window", cu=[0, 50, 96], window=(7, 3), degree=2),
        # the turned sequential split: one rank's host stage is two pieces, documents with one window,
        # run as FA4 varlen with a local window (native.VARLEN_WINDOWS)
        dict(base, name="rotated-window-documents", mask="sliding_window", cu=[0, 96], window=(12, 0), degree=2,
             dispatch="rotated_sequential", fa4_varlen_windows=True),
        dict(base, name="shared-question", mask="shared_question", q_len=30, answers=[20, 25, 21], degree=2),
        dict(base, name="random-sink-softcap", mask="random", seed=3, sink=True, softcap=5.0, degree=2, T=90),
        dict(base, name="hide-tail", mask="varlen_causal", cu=[0, 40, 96], degree=3,
             env={"MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
        # QO comm (the dynamic solver): partial out/lse of rows computed on a rank that owns neither
        # their q nor their k, merged by the owner; dq and dK/dV reduced back
        dict(base, name="qo-comm", mask="varlen_causal", cu=[0, 33, 40, 96], runtime="QOCommRuntime",
             env={"MAGI_ATTENTION_QO_COMM": "1"}),
        dict(base, name="qo-comm-sink-softcap", mask="random", seed=5, sink=True, softcap=5.0, T=90,
             runtime="QOCommRuntime", env={"MAGI_ATTENTION_QO_COMM": "1"}),
        # fp16: out/dq kept in fp16 with two contributors (host + one stage), in fp32 with more;
        # errors against the float64 reference of the same fp16 inputs are fp16 roundings
        dict(base, name="fp16-two-contributors", mask="causal", degree=1, dtype="float16", tol=1e-2),
        dict(base, name="fp16-three-contributors", mask="varlen_causal", cu=[0, 33, 40, 96], degree=2,
             dtype="float16", tol=1e-2),
        dict(base, name="fp16-hide-tail", mask="causal", degree=2, dtype="float16", tol=1e-2,
             env={"MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
        # one stage under hide tail: its dK/dV reduce folds into the host's fp16 dK/dV at the wait
        dict(base, name="fp16-hide-tail-one-stage", mask="varlen_causal", cu=[0, 45, 96], degree=1,
             dtype="float16", tol=1e-2, fold_at_wait=True, env={"MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
    ]


@pytest.mark.dist
@pytest.mark.skipif(not (FFA_TESTS / "_fake_fa4.py").exists(), reason="needs magi_ffa's FA4 stand-in (source tree)")
def test_runtime_on_fa4_backend_matches_reference():
    import _dist_cases
    from magi_attention.testing import run_distributed

    reports = run_distributed(_dist_cases.run_fa4_cases, 2, str(FFA_TESTS), _cases(), env=FA4_ENV, timeout=300)
    names = [c["name"] for c in _cases()]
    tols = {c["name"]: c.get("tol", 2e-6) for c in _cases()}
    for rank, report in enumerate(reports):
        assert [n for n, _ in report] == names, f"rank {rank} ran {report}"
        for name, errs in report:
            assert errs and "max_logits" not in errs and all(e < tols[name] for e in errs.values()), (rank, name, errs)
            if name.startswith("fp16"):  # not vacuous: fp16 roundings are there, and bounded
                assert max(errs.values()) > 1e-6, (rank, name, errs)
