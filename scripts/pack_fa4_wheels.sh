#!/usr/bin/env bash
# Download Flash-Attention 4 and its dependencies as wheels for the GPU image (CPython 3.12, x86_64)
# and cut them into parts that each fit one device call's carry limit (64 MiB):
#   scripts/pack_fa4_wheels.sh [cu12|cu13]      -> .carry/fa4/fa4-wheels.tar.part-aa, -ab, ...
# Then carry one part per call, each run with `scripts/gpu_all.sh fa4-stage ...` (appends the parts it
# finds to /tmp/fa4-parts on the warm machine); the call holding the last part adds `fa4` to its steps.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=${1:-cu12}
DL=$(mktemp -d)
pip download -q --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --python-version 3.12 --no-deps -d "$DL" --pre "flash-attn-4==4.0.0b36" "nvidia-cutlass-dsl==4.8.1" \
  "nvidia-cutlass-dsl-libs-core==4.8.1" "nvidia-cutlass-dsl-libs-$CUDA==4.8.1" "quack-kernels>=0.5.3" \
  "apache-tvm-ffi>=0.1.11,<0.2" torch-c-dlpack-ext einops
rm -rf .carry/fa4 && mkdir -p .carry/fa4
tar cf - -C "$DL" . | split -b 60M - .carry/fa4/fa4-wheels.tar.part-
sha256sum .carry/fa4/* | tee .carry/fa4/SHA256SUMS.txt
rm -rf "$DL"
