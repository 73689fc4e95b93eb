#!/usr/bin/env bash
# The adaptive constrained methods' round (docs/benchmarks.md, "Adaptive methods"): a three-point lr
# grid on the validation split (seed 0) for every method alike, then 3 seeds at each method's best
# lr. One task per core, one thread each. Usage: scripts/adaptive_round.sh grid|seeds TASK LR...
# grid:  one run per lr, every method at that lr         -> runs/adaptive/TASK-grid-LR
# seeds: seeds 1 and 2 of METHOD at its lr (LR = METHOD=LR pairs) -> runs/adaptive/TASK-seeds-METHOD
# collect: seed 0 from the grid point at METHOD's lr and its seeds (METHOD=LR pairs)
#          -> docs/results/adaptive/METHOD/TASK (what docs/results.md and README's tables read)
# RUNS=DIR puts the runs under DIR instead of runs/ (outside the checkout they survive a fresh clone).
set -euo pipefail
root=${RUNS:-runs}
mode=$1; task=$2; shift 2
methods=${METHODS:-rmsprop,geotorch-orthogonal,o-cola-od-rms}
# the hyper-parameters the grid's lr sets (LR_KEYS="precond_lr adam_lr" on a task without rmsprop_lr)
lr_sets() { for key in ${LR_KEYS:-rmsprop_lr precond_lr adam_lr}; do printf -- "--set %s=%s " "$key" "$1"; done; }
case "$mode" in
  grid)
    for lr in "$@"; do
      python -m benchmarks run --task "$task" --preset quick --seeds 1 --threads 1 --no-progress \
        --methods "$methods" $(lr_sets "$lr") --out "$root/adaptive/$task-grid-$lr"
    done ;;
  seeds)
    for pair in "$@"; do
      method=${pair%%=*}; lr=${pair#*=}
      python -m benchmarks run --task "$task" --preset quick --seeds 2 --first-seed 1 --threads 1 --no-progress \
        --methods "$method" $(lr_sets "$lr") --out "$root/adaptive/$task-seeds-$method"
    done ;;
  collect)
    for pair in "$@"; do
      method=${pair%%=*}; lr=${pair#*=}
      rm -rf "docs/results/adaptive/$method/$task"
      python scripts/merge_results.py "docs/results/adaptive/$method" "$root/adaptive/$task-grid-$lr" \
        "$root"/adaptive/"$task"-seed*-"$method" --methods "$method"
    done ;;
esac
