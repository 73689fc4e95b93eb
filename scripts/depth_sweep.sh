#!/usr/bin/env bash
# The init claims at depth (docs/benchmarks.md, "Initialisation at depth"): binary surrogates at
# depths 5-40 from the near-binary and the centred init (Stamatescu et al. 2019), and input-convex
# nets without skip connections at depths 2-16 from icnn_ and the default init (Hoedt & Klambauer
# 2023). One process, one thread, resumable; the quick preset at each task's default settings but
# the depth and the init (and EPOCHS=N, for longer training).
# Usage: scripts/depth_sweep.sh binary [DEPTH...]   -> RUNS/depth/binary-fmnist-d<DEPTH>-<INIT>
#        scripts/depth_sweep.sh icnn [DEPTH...]     -> RUNS/depth/fmnist-icnn-d<DEPTH>-<INIT>
# RUNS=DIR puts the runs under DIR instead of runs/ (outside the checkout they survive a fresh clone).
set -euo pipefail
root=${RUNS:-runs}
case "$1" in
  binary)
    shift
    depths=("$@"); [ ${#depths[@]} -gt 0 ] || depths=(5 10 20 40)
    for depth in "${depths[@]}"; do
      for init in near_binary centred; do
        python -m benchmarks run --task binary-fmnist --preset quick --seeds 3 --threads 1 --no-progress --resume \
          --methods "${METHODS:-b-cola-ud,adam-clip}" --set depth="$depth" --set init="$init" \
          --out "$root/depth/binary-fmnist-d$depth-$init"
      done
    done ;;
  icnn)
    shift
    depths=("$@"); [ ${#depths[@]} -gt 0 ] || depths=(2 4 8 16)
    for depth in "${depths[@]}"; do
      for init in icnn default; do
        python -m benchmarks run --task fmnist-icnn --preset quick --seeds 3 --threads 1 --no-progress --resume \
          --methods "${METHODS:-n-cola-od,n-cola-ud,sgd-clamp}" --set depth="$depth" --set init="$init" --set skip=False \
          ${EPOCHS:+--set epochs="$EPOCHS"} --out "$root/depth/fmnist-icnn-d$depth-$init"
      done
    done ;;
  *) echo "usage: $0 binary|icnn [DEPTH...]" >&2; exit 2 ;;
esac
