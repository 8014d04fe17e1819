#!/usr/bin/env bash
# Fetch Flash-Attention 4 and what it needs for the GPU image (CPython 3.12, x86_64, torch cu130) and pack
# it to fit the device tool's 64 MiB carry limit, in two loads sent in two calls made back to back:
#   .carry/fa4-libs/cutlass-dsl-libs-cu13.tar.xz   the CUDA libraries of nvidia-cutlass-dsl (~92 MB as a
#                                                   wheel, ~61 MiB as tar + xz -9e), unpacked by step fa4-libs
#   .carry/fa4/*.whl                                 the rest (~7 MB), unpacked by step fa4, which then tests
# Usage: scripts/pack_fa4_wheels.sh [cu13|cu12]   (the image's torch is +cu130)
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=${1:-cu13}
DL=$(mktemp -d); trap 'rm -rf "$DL"' EXIT
pip download -q --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux2014_x86_64 --python-version 3.12 --implementation cp --no-deps -d "$DL" --pre \
  "flash-attn-4==4.0.0b36" "nvidia-cutlass-dsl==4.8.1" "nvidia-cutlass-dsl-libs-base==4.8.1" "nvidia-cutlass-dsl-libs-core==4.8.1" \
  "nvidia-cutlass-dsl-libs-$CUDA==4.8.1" "quack-kernels>=0.5.3" "apache-tvm-ffi>=0.1.11,<0.2" \
  torch-c-dlpack-ext einops
rm -rf .carry/fa4 .carry/fa4-libs && mkdir -p .carry/fa4 .carry/fa4-libs "$DL/libs"
(cd "$DL/libs" && unzip -q "$DL"/nvidia_cutlass_dsl_libs_"$CUDA"-*.whl)
tar cf - -C "$DL/libs" . | xz -9e -T0 > ".carry/fa4-libs/cutlass-dsl-libs-$CUDA.tar.xz"
rm "$DL"/nvidia_cutlass_dsl_libs_"$CUDA"-*.whl && mv "$DL"/*.whl .carry/fa4/
du -sh .carry/fa4 .carry/fa4-libs
