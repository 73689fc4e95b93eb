#!/usr/bin/env bash
# The fmnist-vit round (docs/results.md, "A second attention model"): per method a three-point lr
# grid on the validation split (seed 0, quick preset; the method's lr key only: the rest of the
# model keeps adamw_lr), then seeds 1 and 2 at the chosen lr (the grid's best validation accuracy,
# scripts/grid_table.py). One thread per process; run two processes on two cores.
# Usage:
#   scripts/vit_round.sh grid METHOD LR...        -> RUNS/vit/grid-METHOD-LR (skipped where it has run)
#   scripts/vit_round.sh seeds METHOD=LR...       -> RUNS/vit/seeds-METHOD-LR (seeds 1 and 2)
#   scripts/vit_round.sh collect METHOD=LR...     -> docs/results/vit (seed 0 from its grid point) + grid.md
# RUNS=DIR puts the runs under DIR instead of runs/.
set -euo pipefail
root=${RUNS:-runs}
# shellcheck source=scripts/round_lib.sh
. "$(dirname "$0")/round_lib.sh"
run() { run_method fmnist-vit "$@"; }  # METHOD LR OUT [more benchmark arguments]
mode=$1; shift
case "$mode" in
  grid)
    method=$1; shift
    for lr in "$@"; do run "$method" "$lr" "$root/vit/grid-$method-$lr" --seeds 1; done ;;
  seeds)
    for pair in "$@"; do
      run "${pair%%=*}" "${pair#*=}" "$root/vit/seeds-${pair%%=*}-${pair#*=}" --seeds 2 --first-seed 1
    done ;;
  collect)
    rm -rf docs/results/vit
    parts=$(mktemp -d)
    grids=()
    for pair in "$@"; do
      method=${pair%%=*} lr=${pair#*=}
      python scripts/merge_results.py "$parts/$method" "$root/vit/grid-$method-$lr" "$root/vit/seeds-$method-$lr" \
        --methods "$method" --mixed-hparams
      for d in "$root/vit/grid-$method"-[0-9]*; do [ -d "$d" ] && grids+=("$d"); done
    done
    python scripts/merge_results.py docs/results/vit "$parts"/* --mixed-hparams
    rm -rf "$parts"
    { echo "# fmnist-vit: the lr grids"
      echo
      echo "Validation accuracy (best epoch, seed 0, quick preset) per method and lr; each method's chosen lr"
      echo "is the highest. Made by \`python scripts/grid_table.py runs/vit/grid-*\`."
      echo
      python scripts/grid_table.py "${grids[@]}"; } > docs/results/vit/grid.md ;;
  *) echo "usage: $0 grid|seeds|collect ..." >&2; exit 2 ;;
esac
