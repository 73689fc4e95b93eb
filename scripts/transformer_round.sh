#!/usr/bin/env bash
# The shakespeare-gpt round (docs/transformers.md, docs/results.md "Transformers"): per method one
# three-point lr grid on the validation play (seed 0, quick preset), then seeds 1 and 2 at the
# chosen lr. One thread per process; run two processes on two cores.
# Usage:
#   scripts/transformer_round.sh grid METHOD LR...        -> runs/transformer/grid-METHOD-LR
#   scripts/transformer_round.sh seeds METHOD=LR...       -> runs/transformer/seeds-METHOD
#   scripts/transformer_round.sh all-seeds METHOD=LR...   -> the same with seed 0 too (a method without a grid)
#   scripts/transformer_round.sh collect METHOD=LR...     -> docs/results/transformer (seed 0 from its grid point)
#   scripts/transformer_round.sh add METHOD=LR...         -> the same, merged into the existing docs/results/transformer
#   python scripts/grid_table.py runs/transformer/grid-*  (the grid's table: validation bpc per lr)
# The transformer's posterior (chains from converged MAP runs; docs/results.md), seed 0's grid of
# map-o-cola-ud-rms's sampling lr and temperature (TN: T = TN / N), then 3 seeds of the MAP, the
# chain, the 2-member ensemble and the chains from its members at the chosen point:
#   scripts/transformer_round.sh posterior-grid LR,TN...  -> RUNS/transformer-posterior/grid-map-o-cola-ud-rms-lr=LR,TN=TN
#   scripts/transformer_round.sh posterior-seeds LR,TN    -> RUNS/transformer-posterior/seeds-METHOD (METHOD's 3 seeds)
#   scripts/transformer_round.sh posterior-control LR     -> RUNS/transformer-posterior/control-map-o-cola-ud-rms (T = 0, seeds 1-2;
#                                                          seed 0 is the grid point LR,0): the schedule without the noise
#   scripts/transformer_round.sh posterior-collect LR,TN  -> docs/results/transformer-posterior (+ grid.md)
#   scripts/transformer_round.sh posterior-temperature LR,TN -> RUNS/transformer-posterior/temperature-map-o-cola-ud-rms-TN=TN
#                                                          (seeds 1-2; seed 0 is the grid point LR,TN)
#   scripts/transformer_round.sh posterior-temperature-collect LR,TN OUT -> docs/results/OUT (the 3 seeds)
# The longer run (2,000 steps: --set epochs=20, the same warm-up and cosine over the whole run), each
# method at its lr chosen on the 500-step grid, one process per method and seed:
#   scripts/transformer_round.sh long SEED METHOD=LR...    -> RUNS/transformer-long/METHOD-sSEED
#   scripts/transformer_round.sh long-collect METHOD...    -> docs/results/transformer-long
# RUNS=DIR puts the runs under DIR instead of runs/. A run whose folder holds its results.json is skipped.
set -euo pipefail
root=${RUNS:-runs}
# shellcheck source=scripts/round_lib.sh
. "$(dirname "$0")/round_lib.sh"
run() { run_method shakespeare-gpt "$@"; }  # METHOD LR OUT [more benchmark arguments]
merge_method() {  # PARTS METHOD LR: the method's grid point and seeds merged into PARTS/METHOD
  # (each method into a folder of its own first: merge_results' --methods filters the target too)
  local parts=$1 method=$2 lr=$3 sources=()
  # the tempered sampler has no grid of its own: its seed 0 runs with the seeds
  [ -d "$root/transformer/grid-$method-$lr" ] && sources+=("$root/transformer/grid-$method-$lr")
  # seeds run in one process (seeds-METHOD) or one per seed (seeds-METHOD-sN)
  for d in "$root/transformer/seeds-$method" "$root/transformer/seeds-$method"-s[0-9]; do
    [ -d "$d" ] && sources+=("$d")
  done
  python scripts/merge_results.py "$parts/$method" "${sources[@]}" --methods "$method" --mixed-hparams
}
N=4450334  # shakespeare-gpt's training characters: T = 1/N is the Bayesian posterior
posterior_run() {  # METHOD OUT LR TN [more benchmark arguments]: skipped where it has run
  local method=$1 out=$2 lr=$3 tn=$4; shift 4
  [ -f "$out/shakespeare-gpt/results.json" ] && return 0
  # precond_lr: o-cola-ud-rms's lr from its grid (0.01; the group's lr 1e-3 at the peak, 1e-4 at the cosine's floor)
  python -m benchmarks run --task shakespeare-gpt --preset quick --threads 1 --no-progress --methods "$method" \
    --set precond_lr=0.01 --set map_sample_lr="$lr" --set map_temperature="$(python3 -c "print($tn / $N)")" --out "$out" "$@"
}
grid_point() {  # LR,TN: the folder of the chain's seed-0 grid point
  echo "$root/transformer-posterior/grid-map-o-cola-ud-rms-lr=${1%%,*},TN=${1#*,}"
}
temperature_runs() {  # LR,TN: the folder of the chain's seeds 1-2 at that temperature
  echo "$root/transformer-posterior/temperature-map-o-cola-ud-rms-TN=${1#*,}"
}
# o-cola-ud-rms is the MAP, run again beside the others (a rerun of the transformer round's seed 0 on
# another day's machine differed by 0.002 bits)
POSTERIOR_METHODS=${POSTERIOR_METHODS:-"o-cola-ud-rms map-o-cola-ud-rms ensemble-o-cola-ud-rms ens-o-cola-ud-rms"}  # one or some of them: in parallel processes
mode=$1; shift
case "$mode" in
  grid)
    method=$1; shift
    for lr in "$@"; do run "$method" "$lr" "$root/transformer/grid-$method-$lr" --seeds 1; done ;;
  seeds)
    for pair in "$@"; do run "${pair%%=*}" "${pair#*=}" "$root/transformer/seeds-${pair%%=*}" --seeds 2 --first-seed 1; done ;;
  all-seeds)
    for pair in "$@"; do run "${pair%%=*}" "${pair#*=}" "$root/transformer/seeds-${pair%%=*}" --seeds 3; done ;;
  collect)
    rm -rf docs/results/transformer
    parts=$(mktemp -d)
    for pair in "$@"; do merge_method "$parts" "${pair%%=*}" "${pair#*=}"; done
    python scripts/merge_results.py docs/results/transformer "$parts"/* --mixed-hparams
    rm -rf "$parts"
    { echo "# shakespeare-gpt: the lr grids"
      echo
      echo "Validation bits per character (best epoch, seed 0, quick preset) per method and lr; each method's"
      echo "chosen lr is the lowest. Made by \`python scripts/grid_table.py runs/transformer/grid-*\`."
      echo
      python scripts/grid_table.py "$root"/transformer/grid-*; } > docs/results/transformer/grid.md ;;
  add)
    # METHOD=LR...: methods added to a round whose earlier runs are gone (their rows kept): each
    # method's grid point and seeds merged into docs/results/transformer, its grid appended to grid.md
    parts=$(mktemp -d)
    grids=()
    for pair in "$@"; do
      method=${pair%%=*}
      merge_method "$parts" "$method" "${pair#*=}"
      for d in "$root/transformer/grid-$method"-[0-9]*; do [ -d "$d" ] && grids+=("$d"); done
    done
    python scripts/merge_results.py docs/results/transformer "$parts"/* --mixed-hparams
    rm -rf "$parts"
    if [ ${#grids[@]} -gt 0 ]; then
      { echo
        echo "Methods added on $(date +%Y-%m-%d) (the same protocol; \`python scripts/grid_table.py\` on their grid folders):"
        echo
        python scripts/grid_table.py "${grids[@]}"; } >> docs/results/transformer/grid.md
    fi ;;
  long)
    seed=$1; shift
    for pair in "$@"; do
      run "${pair%%=*}" "${pair#*=}" "$root/transformer-long/${pair%%=*}-s$seed" --set epochs=20 --first-seed "$seed" --seeds 1
    done ;;
  long-collect)
    rm -rf docs/results/transformer-long
    parts=$(mktemp -d)
    for method in "$@"; do
      python scripts/merge_results.py "$parts/$method" "$root/transformer-long/$method"-s[0-9] --methods "$method" --mixed-hparams
    done
    python scripts/merge_results.py docs/results/transformer-long "$parts"/* --mixed-hparams
    rm -rf "$parts" ;;
  posterior-grid)
    for point in "$@"; do
      posterior_run map-o-cola-ud-rms "$(grid_point "$point")" "${point%%,*}" "${point#*,}" --seeds 1
    done ;;
  posterior-seeds)  # seed 0 of map-o-cola-ud-rms comes from its grid point
    for method in $POSTERIOR_METHODS; do
      first=0; [ "$method" = map-o-cola-ud-rms ] && first=1
      posterior_run "$method" "$root/transformer-posterior/seeds-$method" "${1%%,*}" "${1#*,}" --first-seed $first --seeds $((3 - first))
    done ;;
  posterior-control)
    posterior_run map-o-cola-ud-rms "$root/transformer-posterior/control-map-o-cola-ud-rms" "$1" 0 --first-seed 1 --seeds 2 ;;
  posterior-temperature)  # LR,TN: the chain's seeds 1-2 at another temperature (seed 0 is its grid point)
    posterior_run map-o-cola-ud-rms "$(temperature_runs "$1")" "${1%%,*}" "${1#*,}" --first-seed 1 --seeds 2 ;;
  posterior-temperature-collect)  # LR,TN OUT: its 3 seeds merged into docs/results/OUT
    python scripts/merge_results.py "docs/results/$2" "$(grid_point "$1")" "$(temperature_runs "$1")" \
      --methods map-o-cola-ud-rms --mixed-hparams ;;
  posterior-collect)
    rm -rf docs/results/transformer-posterior
    parts=$(mktemp -d)
    for method in $POSTERIOR_METHODS; do
      sources=("$root/transformer-posterior/seeds-$method")
      [ "$method" = map-o-cola-ud-rms ] && sources+=("$(grid_point "$1")")
      python scripts/merge_results.py "$parts/$method" "${sources[@]}" --methods "$method" --mixed-hparams
    done
    python scripts/merge_results.py docs/results/transformer-posterior "$parts"/* --mixed-hparams
    rm -rf "$parts"
    grid="$root/transformer-posterior/grid-map-o-cola-ud-rms"
    { echo "# shakespeare-gpt: the chains from MAP runs, seed 0"
      echo
      echo "The sampling lr at T = 1/N (the Bayesian posterior), on the posterior's validation NLL in nats per"
      echo "character (\`python scripts/nll_grid.py\` on the grid folders):"
      echo
      python scripts/nll_grid.py "$grid"-lr=*,TN=1 | tail -n +3
      echo
      echo "The temperature at the chosen lr ${1%%,*} (TN = T x N; TN = 0 is the control: the same schedule"
      echo "without noise, its final model's prediction). The seeds ran at TN = ${1#*,}:"
      echo
      python scripts/nll_grid.py "$grid-lr=${1%%,*}",TN=* | tail -n +3; } > docs/results/transformer-posterior/grid.md ;;
  *) echo "usage: $0 grid|seeds|all-seeds|collect|add|long|long-collect|posterior-grid|posterior-seeds|posterior-control|posterior-collect|posterior-temperature|posterior-temperature-collect ..." >&2; exit 2 ;;
esac
