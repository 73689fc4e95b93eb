#!/usr/bin/env bash
# The posterior round (docs/results.md "The posterior"): fmnist-cnn's grids on validation NLL
# (seed 0; the cyclical samplers with one chain), then three seeds of every method at the chosen
# values (the task's defaults once set from the grids), and fmnist-mlp's samplers retuned the same
# way. One thread per process, two processes at a time (two cores).
# Usage:
#   scripts/posterior_round.sh grid      -> RUNS/posterior/grid-METHOD-SETTINGS (every grid point)
#   scripts/posterior_round.sh seeds     -> RUNS/posterior/seeds-METHOD (3 seeds, the task's defaults)
#   scripts/posterior_round.sh mlp-seeds METHOD:KEY=V,KEY=V ...  -> RUNS/posterior/mlp-seeds-METHOD
#   scripts/posterior_round.sh collect   -> docs/results/posterior (+ grid.md, the NLL-cost plot)
# RUNS=DIR puts the runs under DIR instead of runs/.
set -euo pipefail
root=${RUNS:-runs}/posterior
N=55000  # fmnist-cnn's training images: T = 1/N is the Bayesian posterior
job() {  # TASK METHOD OUT FIRST_SEED SEEDS [KEY=VALUE ...]
  local task=$1 method=$2 out=$3 first=$4 seeds=$5; shift 5
  local sets=()
  for kv in "$@"; do sets+=(--set "$kv"); done
  python -m benchmarks run --task "$task" --preset quick --threads 1 --no-progress --methods "$method" \
    --first-seed "$first" --seeds "$seeds" --out "$out" "${sets[@]}" >"$out.log" 2>&1 || echo "FAILED: $out"
}
export -f job
parallel() { xargs -P 2 -L 1 bash -c 'job "$@"' _; }  # stdin: one job's arguments per line
mkdir -p "$root"
case "$1" in
  grid)
    {
      for lr in 0.01 0.03 0.1; do echo "fmnist-cnn sgd-momentum $root/grid-sgd-momentum-momentum_lr=$lr 0 1 momentum_lr=$lr"; done
      for lr in 0.03 0.1 0.3; do echo "fmnist-cnn ivon $root/grid-ivon-ivon_lr=$lr 0 1 ivon_lr=$lr"; done
      for t in 1 0.1; do
        T=$(python -c "print($t / $N)")
        for lr in 0.03 0.1; do
          echo "fmnist-cnn sgld-cyclical $root/grid-sgld-cyclical-lr=$lr,TN=$t 0 1 chains=1 sgld_cyclical_lr=$lr sgld_cyclical_temperature=$T"
          echo "fmnist-cnn o-cola-ud-cyclical $root/grid-o-cola-ud-cyclical-lr=$lr,TN=$t 0 1 chains=1 o_cyclical_lr=$lr o_cyclical_temperature=$T"
        done
        for lr in 0.001 0.003; do
          echo "fmnist-cnn o-cola-ud-rms-cyclical $root/grid-o-cola-ud-rms-cyclical-lr=$lr,TN=$t 0 1 chains=1 o_rms_cyclical_lr=$lr o_rms_cyclical_temperature=$T"
        done
      done
      # fmnist-mlp's samplers (quick: 10,000 training images, T = 1e-4 is its Bayesian posterior;
      # 1e-5 and the paper's lr were the earlier round's)
      for t in 1e-4 1e-5; do
        for lr in 0.0261 0.0783368199306773; do
          echo "fmnist-mlp sgld $root/mlp-grid-sgld-lr=$lr,T=$t 0 1 ud_lr=$lr temperature=$t"
          echo "fmnist-mlp c-cola-ud $root/mlp-grid-c-cola-ud-lr=$lr,T=$t 0 1 ud_lr=$lr temperature=$t"
        done
      done
    } | parallel ;;
  seeds)  # one process per method and seed, the longest first
    for m in ensemble-sgd-momentum o-cola-ud-rms-cyclical o-cola-ud-cyclical sgld-cyclical swag ivon mc-dropout laplace adamw sgd-momentum; do
      for s in 0 1 2; do echo "fmnist-cnn $m $root/seeds-$m-s$s $s 1"; done
    done | parallel ;;
  mlp-seeds)
    shift
    for spec in "$@"; do
      m=${spec%%:*}; sets=${spec#*:}
      for s in 0 1 2; do echo "fmnist-mlp $m $root/mlp-seeds-$m-s$s $s 1 ${sets//,/ }"; done
    done | parallel ;;
  collect)
    rm -rf docs/results/posterior
    python scripts/merge_results.py docs/results/posterior "$root"/seeds-*
    python scripts/nll_grid.py "$root"/grid-* >docs/results/posterior/grid.md
    python scripts/nll_grid.py "$root"/mlp-grid-* >docs/results/posterior/mlp-grid.md ;;
  *) echo "usage: $0 grid|seeds|mlp-seeds|collect" >&2; exit 2 ;;
esac
