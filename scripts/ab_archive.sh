#!/usr/bin/env bash
# scripts/ab_archive.sh COMMIT [DIR]: the library sources of COMMIT (packages/{ffa-kernels,grpcoll,magi-attn}/src)
# in DIR (default ab_old, ignored by git), for an A/B in one device call: carry DIR with the call and give
# scripts/gpu_all.sh AB_OLD=DIR (step ab-new-mask), or point FFA_SRC / GRPCOLL_SRC / MAGI_SRC into it. The
# benchmark scripts and the C++ solver stay this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=${1:?usage: scripts/ab_archive.sh COMMIT [DIR]}
dir=${2:-ab_old}
rm -rf "$dir"
mkdir -p "$dir"
git archive "$commit" packages/ffa-kernels/src packages/grpcoll/src packages/magi-attn/src | tar -x -C "$dir"
git rev-parse --short "$commit" > "$dir/COMMIT"
echo "$dir: library sources of $(cat "$dir/COMMIT")"
