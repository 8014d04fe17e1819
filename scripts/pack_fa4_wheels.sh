#!/usr/bin/env bash
# Fetch Flash-Attention 4 and what it needs for the GPU image (CPython 3.12, x86_64, torch cu130) and pack
# it to fit the device tool's 64 MiB carry limit (working tree included), in two loads sent in two calls
# made back to back. The CUDA libraries of nvidia-cutlass-dsl (~92 MB as a wheel, ~61 MiB as tar + xz -9e)
# are split in two parts, one per call:
#   .carry/fa4-libs/cutlass-dsl-libs-cu13.tar.xz.part-aa   ~29 MiB, kept on the machine by step fa4-libs
#   .carry/fa4/cutlass-dsl-libs-cu13.tar.xz.part-ab        the rest, joined to the first and unpacked by
#   .carry/fa4/*.whl                                        step fa4, with the other wheels (~10 MB)
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
tar cf - -C "$DL/libs" . | xz -9e -T0 > "$DL/cutlass-dsl-libs-$CUDA.tar.xz"
split -b 30000000 -a 2 "$DL/cutlass-dsl-libs-$CUDA.tar.xz" "$DL/cutlass-dsl-libs-$CUDA.tar.xz.part-"
mv "$DL/cutlass-dsl-libs-$CUDA.tar.xz.part-aa" .carry/fa4-libs/ && mv "$DL"/cutlass-dsl-libs-"$CUDA".tar.xz.part-a[b-z] .carry/fa4/
rm "$DL"/nvidia_cutlass_dsl_libs_"$CUDA"-*.whl && mv "$DL"/*.whl .carry/fa4/
du -sh .carry/fa4 .carry/fa4-libs
