"""Two GPUs over NCCL, bf16, realistic sizes: dispatch -> calc_attn -> undispatch.

Forward and backward of causal, varlen causal, sliding window and block causal masks (16k tokens,
GQA 8/2, d 128), each tensor checked on every rank with the FFA criterion (see _gpu_cases), on the
Triton kernels and, when Flash-Attention 4 is importable, on the fa4 backend; through the a2av and,
where it can run, the native group collectives; with hidden tails, whole-call CUDA graphs and a new
mask every step (whose step must make no host sync). All cases share one 2-rank spawn. Skips unless
at least two CUDA devices are visible.
"""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.dist,
    pytest.mark.skipif(torch.cuda.device_count() < 2,
                       reason=f"needs >= 2 CUDA devices, found {torch.cuda.device_count()}"),
]

_BASE = dict(T=16384, hq=8, hk=2, d=128, chunk=512)
CASES = [
    dict(_BASE, name="causal", mask="causal", degree=2),
    dict(_BASE, name="varlen_causal", mask="varlen_causal", seed=5, degree=1),
    dict(_BASE, name="sliding_window", mask="sliding_window", window=2048, degree=3),
    dict(_BASE, name="block_causal", mask="block_causal", block=2048, degree="dynamic"),
    dict(_BASE, name="native_grpcoll_causal", mask="varlen_causal", seed=6, degree=2,
         env={"MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    # the fa4 kernel backend (skipped without FA4): out/dq in bf16 with two contributors
    # (degree 1), fp32 with three (degree 2); dK/dV reduced into the host's, or (hide tail) apart
    dict(_BASE, name="fa4_causal", mask="causal", degree=1, env={"MAGI_ATTENTION_FA4_BACKEND": "1"}),
    dict(_BASE, name="fa4_varlen_causal", mask="varlen_causal", seed=7, degree=2,
         env={"MAGI_ATTENTION_FA4_BACKEND": "1"}),
    dict(_BASE, name="fa4_native_grpcoll_hide_tail", mask="causal", degree=2,
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1",
              "MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
    # the cost-aware dispatch turns the sequential split (rotated_sequential): one rank's host stage
    # is two pieces of the sequence, run as FA4 varlen documents with one sliding window
    dict(_BASE, name="fa4_sliding_window_turned", mask="sliding_window", window=2048, degree=1,
         dispatch="cost_aware", env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    # one remote stage under hide tail (a2av): its dK/dV reduce folds into the host's at the wait
    dict(_BASE, name="fa4_hide_tail_one_stage", mask="varlen_causal", seed=9, degree=1,
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
    # the same through native grpcoll, whose reduce then folds at the wait itself (FOLD_AT_WAIT)
    dict(_BASE, name="fa4_native_hide_tail_fold_at_wait", mask="varlen_causal", seed=10, degree=1,
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1",
              "MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"},
         switches={"magi_grpcoll.impl.native:FOLD_AT_WAIT": True}),
    # the same with that reduce's pushes through the copy engines
    dict(_BASE, name="fa4_native_hide_tail_copy_engine_reduce", mask="varlen_causal", seed=10, degree=1,
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1",
              "MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"},
         switches={"magi_grpcoll.impl.native:FOLD_AT_WAIT": True,
                   "magi_grpcoll.impl.native:COPY_ENGINE_REDUCE_PUSHES": True}),
    # whole calls from CUDA graphs, as MAGI_ATTENTION_CUDA_GRAPHS=auto (the default) turns them on:
    # captured once a repetition's tensors come back at the addresses of an earlier one
    # (the second repetition at the earliest), replayed after
    dict(_BASE, name="fa4_native_cuda_graphs", mask="varlen_causal", seed=11, degree=2, repeat=6,
         graph_replays=2,
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    # the same with a kept tail (hide tail): its receive buffer made outside the graphs, written by the
    # forward's graph and read by the backward's; one remote stage (its reduce folds at the wait) and two
    dict(_BASE, name="fa4_native_hide_tail_cuda_graphs", mask="varlen_causal", seed=13, degree=1, repeat=6,
         graph_replays=2, env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1",
                               "MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
    dict(_BASE, name="fa4_native_hide_tail_two_stages_cuda_graphs", mask="causal", degree=2, repeat=6,
         graph_replays=2, env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1",
                               "MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
    # the same through the Triton kernels (passed on 2 x H200 with MAGI_ATTENTION_CUDA_GRAPHS=1, before
    # auto took the Triton kernels in)
    dict(_BASE, name="native_cuda_graphs", mask="varlen_causal", seed=12, degree=2, repeat=6, graph_replays=2,
         env={"MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    # a new mask every step, as varlen training packs its documents: each step checked, and the
    # last one pinned down: no host sync at all (the native binding exchanges nothing, see group_lists)
    dict(_BASE, name="native_fresh_masks", mask="varlen_causal", seed=20, degree=2, fresh_masks=2,
         env={"MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    dict(_BASE, name="fa4_native_fresh_masks", mask="varlen_causal", seed=30, degree=2, fresh_masks=2,
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    # the same with every key prefetched (api.prefetch_flex_key: built on a thread, on this rank's device),
    # masks of its own (a key the case above made is found cached: nothing would be built)
    dict(_BASE, name="fa4_native_fresh_masks_prefetch", mask="varlen_causal", seed=35, degree=2, fresh_masks=2,
         prefetch=True, env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    # the same through the default a2av collectives (added in stop 35, not yet run on a GPU)
    dict(_BASE, name="fa4_a2av_fresh_masks", mask="varlen_causal", seed=40, degree=2, fresh_masks=2,
         env={"MAGI_ATTENTION_FA4_BACKEND": "1"}),
    # the backward's host stage in two calls, the block no reduce touches after the remote stage, while
    # the native reduce folds into the other rows (runtime/host_split.py): split on both ranks (one
    # rank's late call adds into dq rows the remote stage wrote), through FA4 and through Triton
    # (off by default; both passed on 2 x H200 at d487591, where it was on)
    dict(_BASE, name="fa4_native_host_split", mask="varlen_causal", seed=53, degree=1, dispatch="cost_aware",
         host_split=2, switches={"magi_attention.runtime.dist_attn:SPLIT_HOST_BACKWARD": True},
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    dict(_BASE, name="native_host_split", mask="varlen_causal", seed=53, degree=1, dispatch="cost_aware",
         host_split=2, switches={"magi_attention.runtime.dist_attn:SPLIT_HOST_BACKWARD": True},
         env={"MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    # QO comm (the dynamic solver's plan: q, out and lse travel too) on the fa4 backend, a2av and native
    # collectives (its partial out/lse merged by the owner through grpcoll's lse reduce)
    dict(_BASE, name="fa4_qo_comm", mask="varlen_causal", seed=61, degree=1, runtime="QOCommRuntime",
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_QO_COMM": "1"}),
    dict(_BASE, name="fa4_native_qo_comm", mask="varlen_causal", seed=62, degree=1,
         runtime="QOCommRuntime",
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_QO_COMM": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1"}),
    # the same repetitions without them (the yardstick of the cases above)
    dict(_BASE, name="fa4_native_repeated", mask="varlen_causal", seed=11, degree=2, repeat=6,
         env={"MAGI_ATTENTION_FA4_BACKEND": "1", "MAGI_ATTENTION_NATIVE_GRPCOLL": "1",
              "MAGI_ATTENTION_CUDA_GRAPHS": "0"}),
]
ENV = {"MAGI_ATTENTION_KERNEL_BACKEND": "triton"}


@pytest.fixture(scope="module")
def gpu_results(request):
    """Every case the session selected (``-k``), in one 2-rank spawn."""
    import _gpu_cases
    from magi_attention.testing import run_distributed

    selected = {item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    cases = [c for c in CASES if c["name"] in selected]
    return run_distributed(_gpu_cases.run_gpu_cases, 2, cases, backend="nccl", env=ENV,
                           timeout=900)


@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_gpu_dist_bf16_triton(name, gpu_results):
    outcomes = [r[name] for r in gpu_results]
    for rank, (status, payload) in enumerate(outcomes):
        if status == "skip":
            pytest.skip(payload)
        assert status == "ok", f"rank {rank}:\n{payload}"
        assert set(payload) == {"out", "lse", "dq", "dk", "dv"}
        for tensor, (err, lowp_err) in payload.items():
            print(f"{name} rank {rank} {tensor}: err {err:.3e} (bf16 dense ref {lowp_err:.3e})")
