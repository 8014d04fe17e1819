#!/usr/bin/env bash
# Everything the project runs on a lent GPU machine, in one call:
#   scripts/gpu_all.sh [STEP ...]     steps: setup tests bench-ffa bench-grpcoll bench-dist bench-qo (default: all),
#                                     plus fa4-libs, fa4 and bench-fa4 (the FA4 backend, calls back to back: the
#                                     first carries .carry/fa4-libs and runs fa4-libs, the next ones carry
#                                     .carry/fa4 and run fa4 (tests, profile) or test-fa4 (tests only), unpack-fa4
#                                     (only puts FA4 in place, e.g. before `tests`), bench-fa4,
#                                     varlen-paths (FA4's varlen vs batch kernels), autograd-host (the backward's host time under autograd) and/or bench-dist-fa4 (the
#                                     runtime on the fa4 backend, >= 2 GPUs), profile-dist-fa4 and
#                                     new-mask-fa4 (a new mask every step: new_mask_cost.py's phases and host
#                                     syncs, and bench_dist --fresh-masks against the same mask every step) and
#                                     ab-new-mask (the same new-mask runs, this tree against AB_OLD, a folder from
#                                     scripts/ab_archive.sh carried with the call: order new, old, new); see
#                                     scripts/pack_fa4_wheels.sh)
# Results (logs, CSV, markdown tables) go to $OUT (or ./gpu-out); set GIT_COMMIT=<hash> in the command (the
# machine's copy of the tree may carry a stale .git, and the tables record the commit). The machine has torch/triton/cmake/pybind11
# but no registry: our packages are installed editable without dependencies; test tools travel as wheels in
# .whl/ (see README "GPU runs"). NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends are left as set).
# STEP_TIMEOUT=<seconds> bounds every step. Extra arguments per step: TEST_PKGS, TEST_ARGS, TEST_FA4_ARGS (pytest, e.g. -k replayed), PROFILE_FA4_ARGS, AUTOGRAD_HOST_ARGS, BENCH_FA4_ARGS,
# BENCH_FFA_ARGS, VARLEN_PATHS_ARGS, BENCH_GRPCOLL_ARGS, BENCH_DIST_ARGS, PROFILE_DIST_MASKS / PROFILE_DIST_ARGS, BENCH_QO_ARGS,
# NEW_MASK_SEQLENS (new-mask-fa4 and ab-new-mask, default 32768 65536), AB_OLD and AB_ARGS (ab-new-mask: the old
# sources' folder; arguments both of its scripts take, e.g. --pin-cpus).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
STEPS=${*:-"setup tests bench-ffa bench-grpcoll bench-dist bench-qo"}
# FA4 compiles each kernel variant in tens of seconds; its disk cache lets later processes on the same warm
# machine (tests, then benchmarks) load them instead
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=${FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED:-1} \
  FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=${FLASH_ATTENTION_CUTE_DSL_CACHE_DIR:-/tmp/fa4-jit-cache}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
PY=${PYTHON:-python3}
status=0
run() {  # run NAME CMD...: log to $OUT/NAME.log, keep going, remember failures
  local name=$1; shift
  echo "=== $name: $*"
  # STEP_TIMEOUT (seconds) bounds each step, so that a hung step (e.g. a rank waiting forever at a
  # device barrier for a peer that failed) leaves the later steps their time and its log behind
  if [ -n "${STEP_TIMEOUT:-}" ]; then set -- timeout --kill-after=10 "$STEP_TIMEOUT" "$@"; fi
  "$@" 2>&1 | tee "$OUT/$name.log"; local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && echo "=== $name: timed out after ${STEP_TIMEOUT}s"
  echo "=== $name: exit $rc"; [ "$rc" -eq 0 ] || status=1
}
has() { [[ " $STEPS " == *" $1 "* ]]; }

if has setup; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # The C++ solver is built here (scikit-build-core and pybind11 are on the machine); the pure-Python
  # packages are used from their source folders (their build backend, hatchling, is not on the machine).
  $PY -m pip install -q --no-build-isolation --no-deps "packages/solver" || { echo "build of magi-solver failed"; status=1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
  echo "commit ${GIT_COMMIT:-unknown} date $(date -u +%F)" | tee -a "$OUT/card.txt"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())" | tee -a "$OUT/card.txt"
else
  [ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# FA4 unpacked by an earlier call of this warm machine: on the path for every step (a tests-only call
# would otherwise skip the fa4 cases)
[ -d /tmp/site/nvidia_cutlass_dsl/dsl_packages ] && export PYTHONPATH=/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH
unpack_fa4_libs() {  # the tar.xz of FA4's CUDA libraries, from its parts (first call's, then this call's);
  # a marker says it completed: an extraction cut short (part 1 missing on a machine that was not the
  # one of step fa4-libs) leaves a folder without the libraries, which must not pass for them
  if ! ls /tmp/fa4-libs-parts/*.part-* >/dev/null 2>&1; then
    echo "FA4 libraries' first part missing on this machine: run step fa4-libs first"; status=1; return
  fi
  mkdir -p /tmp/site && cat /tmp/fa4-libs-parts/*.part-* "$@" | $PY -c \
    "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall(sys.argv[1])" /tmp/site \
    && touch /tmp/site/.fa4-libs-unpacked && echo "FA4 libraries unpacked" \
    || { rm -rf /tmp/site/nvidia_cutlass_dsl; status=1; }
}
if has fa4-libs; then  # FA4 arrives in two calls: the first keeps its CUDA libraries' first part on the warm machine
  mkdir -p /tmp/fa4-libs-parts && cp .carry/fa4-libs/*.part-* /tmp/fa4-libs-parts/ && echo "FA4 libraries, part 1 kept" || status=1
fi
if has unpack-fa4 || has fa4 || has test-fa4 || has profile-fa4 || has autograd-host || has bench-fa4 || has varlen-paths || has bench-dist-fa4 || has profile-dist-fa4 || has new-mask-fa4 || has ab-new-mask; then  # then the rest; a wheel is a zip of site-packages: unpacking installs it
  if [ ! -f /tmp/site/.fa4-libs-unpacked ] && ls .carry/fa4/*.part-* >/dev/null 2>&1; then
    unpack_fa4_libs .carry/fa4/*.part-*
  fi
  for w in .carry/fa4/*.whl; do $PY -m zipfile -e "$w" /tmp/site || status=1; done
  # nvidia-cutlass-dsl puts its modules on sys.path through a .pth file, which PYTHONPATH does not read
  export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
  [ -f /tmp/site/.fa4-libs-unpacked ] || { echo "FA4 libraries missing: run step fa4-libs first"; status=1; }
fi
# FFA_SRC / GRPCOLL_SRC / MAGI_SRC let a run use another copy of the kernels / collectives / runtime, for an
# A/B in the same loan: e.g. `git archive <old> packages/ffa-kernels/src packages/grpcoll/src
# packages/magi-attn/src | tar -x -C ab_old` (an untracked folder travels with the tree; keep it out of
# commits), then a second run of the step with FFA_SRC=$PWD/ab_old/packages/ffa-kernels/src and so on.
SRC_PATHS=${FFA_SRC:-$PWD/packages/ffa-kernels/src}:${GRPCOLL_SRC:-$PWD/packages/grpcoll/src}:${MAGI_SRC:-$PWD/packages/magi-attn/src}:$PWD/packages/extensions/src
export PYTHONPATH=$SRC_PATHS${PYTHONPATH:+:$PYTHONPATH}
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")

# TEST_ARGS / TEST_FA4_ARGS are read as shell words, so quotes group: TEST_ARGS="-k 'not fa4'"
eval "test_args=(${TEST_ARGS:-})" && eval "test_fa4_args=(${TEST_FA4_ARGS:-})" || exit 2
if has tests; then  # TEST_PKGS picks packages (default: all three with GPU tests); TEST_ARGS adds pytest
  # arguments (e.g. -s, which shows the runtime suite's per-case progress; allow ~4 min for that suite on a
  # fresh machine with FA4, whose kernels compile per case)
  for pkg in ${TEST_PKGS:-ffa-kernels grpcoll magi-attn}; do
    run "test-$pkg" $PY -m pytest -q -m gpu -p no:cacheprovider "${test_args[@]}" "packages/$pkg/tests"
  done
fi
if has fa4 || has test-fa4; then
  run smoke-fa4 $PY scripts/fa4_smoke.py
  run test-fa4 $PY -m pytest -q -m gpu -p no:cacheprovider packages/ffa-kernels/tests/test_gpu_fa4.py "${test_fa4_args[@]}"
fi
if has fa4 || has profile-fa4; then
  run profile-fa4 $PY packages/ffa-kernels/benchmarks/profile_fa4.py ${PROFILE_FA4_ARGS:-}
fi
if has autograd-host; then  # the fa4 backward's host time under torch's autograd engine, split (issue #7)
  run autograd-host $PY packages/ffa-kernels/benchmarks/autograd_host.py ${AUTOGRAD_HOST_ARGS:-}
fi
if has bench-fa4; then
  run bench-fa4 $PY packages/ffa-kernels/benchmarks/bench_ffa.py --totals 16384 --heads 16/16 \
    --impls ffa_fa4,ffa_triton,fa4,sdpa_cudnn,flex ${BENCH_FA4_ARGS:-} --out "$OUT/bench_fa4"
fi
if has varlen-paths; then  # FA4's varlen vs batch kernels on the same work (issue #7's varlen target)
  run varlen-paths $PY packages/ffa-kernels/benchmarks/varlen_paths.py ${VARLEN_PATHS_ARGS:-} --out "$OUT/varlen_paths"
fi
if has bench-ffa; then
  run bench-ffa $PY packages/ffa-kernels/benchmarks/bench_ffa.py ${BENCH_FFA_ARGS:-} --out "$OUT/bench_ffa"
fi
if has bench-grpcoll && [ "$NGPU" -ge 2 ]; then
  run bench-grpcoll $PY packages/grpcoll/benchmarks/bench_grpcoll.py ${BENCH_GRPCOLL_ARGS:-} --out "$OUT/bench_grpcoll"
fi
if has bench-dist && [ "$NGPU" -ge 2 ]; then
  run bench-dist $PY -m torch.distributed.run --standalone --nproc-per-node "$NGPU" \
    packages/magi-attn/benchmarks/bench_dist.py ${BENCH_DIST_ARGS:-} --out "$OUT/bench_dist"
fi
if has bench-dist-fa4 && [ "$NGPU" -ge 2 ]; then  # the runtime and its FFA baselines on the fa4 backend
  MAGI_ATTENTION_FA4_BACKEND=1 run bench-dist-fa4 $PY -m torch.distributed.run --standalone \
    --nproc-per-node "$NGPU" packages/magi-attn/benchmarks/bench_dist.py ${BENCH_DIST_ARGS:-} --out "$OUT/bench_dist_fa4"
fi
if has profile-dist-fa4 && [ "$NGPU" -ge 2 ]; then  # where one calc_attn's time goes, per mask (PROFILE_DIST_MASKS)
  for m in ${PROFILE_DIST_MASKS:-causal varlen_causal}; do
    MAGI_ATTENTION_FA4_BACKEND=1 run "profile-dist-fa4-$m" $PY -m torch.distributed.run --standalone \
      --nproc-per-node 2 packages/magi-attn/benchmarks/profile_dist.py --mask "$m" ${PROFILE_DIST_ARGS:-}
  done
fi
new_mask_cost() {  # new_mask_cost NAME T [ARG...]: new_mask_cost.py's phases at T, fa4 and native collectives
  local name=$1 T=$2; shift 2
  MAGI_ATTENTION_FA4_BACKEND=1 MAGI_ATTENTION_NATIVE_GRPCOLL=1 run "$name" $PY -m torch.distributed.run \
    --standalone --nproc-per-node 2 packages/magi-attn/benchmarks/new_mask_cost.py --seqlen "$T" --cprofile 0 "$@"
}
varlen_layers() {  # varlen_layers NAME OUT [ARG...]: bench_dist's 4-layer varlen causal runs, fa4 and native collectives
  local name=$1 out=$2; shift 2
  MAGI_ATTENTION_FA4_BACKEND=1 MAGI_ATTENTION_NATIVE_GRPCOLL=1 run "$name" $PY -m torch.distributed.run \
    --standalone --nproc-per-node 2 packages/magi-attn/benchmarks/bench_dist.py --layers 4 --masks varlen_causal \
    --seqlens ${NEW_MASK_SEQLENS:-32768 65536} --methods magi ffa_single --dispatch-alg cost_aware "$@" --out "$out"
}
if has new-mask-fa4 && [ "$NGPU" -ge 2 ]; then  # varlen training's new mask per step (tuning.md "A new mask every step")
  for T in ${NEW_MASK_SEQLENS:-32768 65536}; do
    new_mask_cost "new-mask-cost-$T" "$T"
  done
  for fresh in "" --fresh-masks; do
    varlen_layers "bench-dist-fa4${fresh:+-fresh}" "$OUT/bench_dist_fa4${fresh:+_fresh}" $fresh
  done
fi
if has ab-new-mask && [ "$NGPU" -ge 2 ]; then  # new-mask-fa4's runs, this tree against AB_OLD's library sources
  if [ -d "${AB_OLD:-}/packages" ]; then
    AB=$(cd "$AB_OLD" && pwd)
    OLD_PATHS=$AB/packages/ffa-kernels/src:$AB/packages/grpcoll/src:$AB/packages/magi-attn/src
    OLD_NAME="$(cat "$AB/COMMIT" 2>/dev/null || echo "$AB_OLD") (library sources; benchmarks of ${GIT_COMMIT:-this tree})"
    echo "ab-new-mask: new = this tree (${GIT_COMMIT:-unknown}), old = $OLD_NAME"
    for T in ${NEW_MASK_SEQLENS:-32768 65536}; do
      for v in new old; do  # old: its sources first on the path, so they shadow this tree's
        PYTHONPATH=$([ $v = old ] && echo "$OLD_PATHS:")$PYTHONPATH new_mask_cost "ab-new-mask-cost-$T-$v" "$T" ${AB_ARGS:-}
      done
    done
    for v in new old new2; do  # run order new, old, new: the spread of the two new runs is the noise
      PYTHONPATH=$([ $v = old ] && echo "$OLD_PATHS:")$PYTHONPATH \
        GIT_COMMIT=$([ $v = old ] && echo "$OLD_NAME" || echo "${GIT_COMMIT:-unknown}") \
        varlen_layers "ab-fresh-$v" "$OUT/ab_fresh_$v" --fresh-masks ${AB_ARGS:-}
    done
  else
    echo "ab-new-mask: AB_OLD must name a folder made by scripts/ab_archive.sh, carried with the call"; status=1
  fi
fi
if has bench-qo && [ "$NGPU" -ge 2 ]; then
  run bench-qo $PY -m torch.distributed.run --standalone --nproc-per-node 2 \
    packages/magi-attn/benchmarks/bench_qo_comm.py ${BENCH_QO_ARGS:-} --out "$OUT/bench_qo"
fi
exit $status
