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
# one resumable process per depth and init: sweep TASK "INIT..." METHODS "EXTRA SETTINGS" DEPTH...
sweep() {
  local task=$1 inits=$2 methods=$3 extra=$4; shift 4
  for depth in "$@"; do
    for init in $inits; do
      python -m benchmarks run --task "$task" --preset quick --seeds 3 --threads 1 --no-progress --resume \
        --methods "${METHODS:-$methods}" --set depth="$depth" --set init="$init" $extra \
        ${EPOCHS:+--set epochs="$EPOCHS"} --out "$root/depth/$task-d$depth-$init"
    done
  done
}
kind=${1:-}; shift || true
depths=("$@")
case "$kind" in
  binary)
    [ ${#depths[@]} -gt 0 ] || depths=(5 10 20 40)
    sweep binary-fmnist "near_binary centred" b-cola-ud,adam-clip "" "${depths[@]}" ;;
  icnn)
    [ ${#depths[@]} -gt 0 ] || depths=(2 4 8 16)
    sweep fmnist-icnn "icnn default" n-cola-od,n-cola-ud,sgd-clamp "--set skip=False" "${depths[@]}" ;;
  *) echo "usage: $0 binary|icnn [DEPTH...]" >&2; exit 2 ;;
esac
