#!/usr/bin/env bash
# The posterior round (docs/results.md "The posterior"): fmnist-cnn's grids on validation NLL
# (seed 0; the cyclical samplers with one chain), then three seeds of every method at the chosen
# values (the task's defaults once set from the grids), and fmnist-mlp's samplers retuned the same
# way. One thread per process, two processes at a time (two cores).
# Usage (modes may be queued together: grid -- seeds sgd-momentum ...):
#   scripts/posterior_round.sh grid      -> RUNS/posterior/grid-METHOD-SETTINGS (every grid point not run yet)
#   scripts/posterior_round.sh seeds METHOD[:KEY=V,...] ...  -> RUNS/posterior/seeds-METHOD-sS (3 seeds)
#   scripts/posterior_round.sh mlp-seeds METHOD:KEY=V,KEY=V ...  -> RUNS/posterior/mlp-seeds-METHOD-sS
#   scripts/posterior_round.sh collect   -> docs/results/posterior (+ grid.md, the NLL-cost plot)
#   scripts/posterior_round.sh ens-grid  -> the ensemble-started chains' grids (the sampling lr at T = 1/N)
#   scripts/posterior_round.sh ens-control -> ens-sgld at T = 0 (the last epoch's lr drop alone), 3 seeds
#   (then: seeds ens-sgld ens-o-cola-ud, and add with the chosen grid points)
#   scripts/posterior_round.sh add [DIR...] -> seeds-* (and DIR...) merged into docs/results/posterior, whose earlier rows stay; grid-* into grid.md
#   scripts/posterior_round.sh long SEED METHOD[:KEY=V,...] ... -> RUNS/posterior-long/seeds-METHOD-sSEED
#     (a METHOD with KEY=V: RUNS/posterior-long/METHOD-KEY=V,...-sSEED): the 3x budget, 18 epochs per
#     member or chain, the ensemble-started chains sampling the last 3 (the 6-epoch round's 1/6); every
#     other value the 6-epoch round's choice
#   scripts/posterior_round.sh long-control SEED -> RUNS/posterior-long/control-ens-sgld-T0-sSEED: ens-sgld's
#     T = 0 control, branched (scripts/branch_checkpoint.py) from RUNS/posterior-long/branch/ens-sgld-seedSEED.pt,
#     the chain's last checkpoint before it sampled, kept while it ran (the same computation as a fresh run)
#   scripts/posterior_round.sh long-collect -> RUNS/posterior-long/seeds-* into docs/results/posterior-long
# JOBS=1 runs one process at a time (default 2).
# RUNS=DIR puts the runs under DIR instead of runs/.
set -euo pipefail
root=${RUNS:-runs}/posterior
N=55000  # fmnist-cnn's training images: T = 1/N is the Bayesian posterior
job() {  # TASK METHOD OUT FIRST_SEED SEEDS [KEY=VALUE ...]
  local task=$1 method=$2 out=$3 first=$4 seeds=$5; shift 5
  [ -f "$out/$task/results.json" ] && return 0  # done already (a grid extended: only its new points run)
  local sets=()
  for kv in "$@"; do sets+=(--set "$kv"); done
  python -m benchmarks run --task "$task" --preset quick --threads 1 --no-progress --methods "$method" \
    --first-seed "$first" --seeds "$seeds" --out "$out" "${sets[@]}" ${RESUME:+--resume} >"$out.log" 2>&1 || echo "FAILED: $out"
}
export -f job
# stdin: one job's arguments per line (trailing blanks stripped: xargs -L joins such a line to the next)
parallel() { sed 's/[[:space:]]*$//' | xargs -P "${JOBS:-2}" -L 1 bash -c 'job "$@"' _; }
mkdir -p "$root"
jobs() {  # the job lines of one mode
case "$1" in
  grid)
    {
      for lr in 0.01 0.03 0.1; do echo "fmnist-cnn sgd-momentum $root/grid-sgd-momentum-momentum_lr=$lr 0 1 momentum_lr=$lr"; done
      # each grid extended where its best point was at an edge (the lr; T = 0.1/N and 1/N differ by
      # at most 0.006 in NLL everywhere)
      for lr in 0.03 0.1 0.3 1.0 3.0; do echo "fmnist-cnn ivon $root/grid-ivon-ivon_lr=$lr 0 1 ivon_lr=$lr"; done
      for t in 1 0.1; do
        T=$(python -c "print($t / $N)")
        for lr in 0.01 0.03 0.1; do
          echo "fmnist-cnn sgld-cyclical $root/grid-sgld-cyclical-lr=$lr,TN=$t 0 1 chains=1 sgld_cyclical_lr=$lr sgld_cyclical_temperature=$T"
        done
        for lr in 0.03 0.1 0.3; do
          echo "fmnist-cnn o-cola-ud-cyclical $root/grid-o-cola-ud-cyclical-lr=$lr,TN=$t 0 1 chains=1 o_cyclical_lr=$lr o_cyclical_temperature=$T"
        done
        for lr in 0.001 0.003 0.01 0.03; do
          echo "fmnist-cnn o-cola-ud-rms-cyclical $root/grid-o-cola-ud-rms-cyclical-lr=$lr,TN=$t 0 1 chains=1 o_rms_cyclical_lr=$lr o_rms_cyclical_temperature=$T"
        done
      done
      # fmnist-mlp's samplers (quick: 10,000 training images, T = 1e-4 is its Bayesian posterior;
      # 1e-5 and the paper's lr were the earlier round's)
      # (extended: the colder T = 1e-6 and 1e-7, and c-cola-ud's 3x lr)
      for t in 1e-4 1e-5 1e-6 1e-7; do
        for lr in 0.0261 0.0783368199306773; do
          echo "fmnist-mlp sgld $root/mlp-grid-sgld-lr=$lr,T=$t 0 1 ud_lr=$lr temperature=$t"
          echo "fmnist-mlp c-cola-ud $root/mlp-grid-c-cola-ud-lr=$lr,T=$t 0 1 ud_lr=$lr temperature=$t"
        done
      done
      echo "fmnist-mlp c-cola-ud $root/mlp-grid-c-cola-ud-lr=0.235,T=1e-5 0 1 ud_lr=0.235 temperature=1e-5"
    } ;;
  ens-grid)  # ensemble-started chains: the sampling stage's lr at T = 1/N (no temperature grid)
    T=$(python -c "print(1 / $N)")
    for lr in 0.003 0.01 0.03; do
      echo "fmnist-cnn ens-sgld $root/grid-ens-sgld-lr=$lr,TN=1 0 1 ens_sample_lr=$lr ens_temperature=$T"
    done
    for lr in 0.0003 0.001 0.003 0.01 0.03; do  # extended down: its best point was at the low edge
      echo "fmnist-cnn ens-o-cola-ud $root/grid-ens-o-cola-ud-lr=$lr,TN=1 0 1 ens_o_sample_lr=$lr ens_o_temperature=$T"
    done ;;
  ens-control)  # ens-sgld's last epoch at T = 0: the lr drop without the noise, 3 seeds
    for s in 0 1 2; do echo "fmnist-cnn ens-sgld $root/control-ens-sgld-T0-s$s $s 1 ens_temperature=0.0"; done ;;
  seeds)  # METHOD[:KEY=V,KEY=V] ...: one process per method and seed (list the longest first)
    shift
    for spec in "$@"; do
      m=${spec%%:*}; sets=""
      [ "$spec" != "$m" ] && sets=${spec#*:}
      for s in 0 1 2; do echo "fmnist-cnn $m $root/seeds-$m-s$s $s 1 ${sets//,/ }"; done
    done ;;
  mlp-seeds)
    shift
    for spec in "$@"; do
      m=${spec%%:*}; sets=${spec#*:}
      for s in 0 1 2; do echo "fmnist-mlp $m $root/mlp-seeds-$m-s$s $s 1 ${sets//,/ }"; done
    done ;;
  long)  # SEED METHOD[:KEY=V,...] ...: the 3x budget (one seed, so that a queue can order by seed)
    shift; local seed=$1; shift
    mkdir -p "${RUNS:-runs}/posterior-long"
    for spec in "$@"; do
      m=${spec%%:*}; sets=""; name=seeds-$m
      [ "$spec" != "$m" ] && sets=${spec#*:} && name=$m-$sets
      echo "fmnist-cnn $m ${RUNS:-runs}/posterior-long/$name-s$seed $seed 1 epochs=18 sample_epochs=3 ${sets//,/ }"
    done ;;
  long-control)  # SEED: branched from the chain's checkpoint, then resumed (RESUME, set below)
    local seed=$2 out=${RUNS:-runs}/posterior-long/control-ens-sgld-T0-s$2
    python scripts/branch_checkpoint.py "${RUNS:-runs}/posterior-long/branch/ens-sgld-seed$seed.pt" \
      "$out/fmnist-cnn/checkpoints/ens-sgld-seed$seed.pt" --set ens_temperature=0.0 >&2
    echo "fmnist-cnn ens-sgld $out $seed 1 epochs=18 sample_epochs=3 ens_temperature=0.0" ;;
  long-collect)
    rm -rf docs/results/posterior-long/fmnist-cnn
    python scripts/merge_results.py docs/results/posterior-long "${RUNS:-runs}"/posterior-long/seeds-* ;;
  collect)
    rm -rf docs/results/posterior/fmnist-cnn
    python scripts/merge_results.py docs/results/posterior "$root"/seeds-*
    # the grids' tables: the points run on this machine added to (or replacing) the table's rows
    for grid in grid mlp-grid; do
      table=docs/results/posterior/$grid.md
      compgen -G "$root/$grid-*/" >/dev/null || continue
      previous=(); [ -f "$table" ] && previous=(--previous "$table")
      python scripts/nll_grid.py "${previous[@]}" "$root/$grid"-* >"$table.new" && mv "$table.new" "$table"
    done
    # fmnist-mlp's retuned samplers replace their rows (same method and seed) in the uncertainty
    # round; each run keeps the --set values it ran with
    if compgen -G "$root/mlp-seeds-*/" >/dev/null; then
      python scripts/merge_results.py docs/results/uncertainty "$root"/mlp-seeds-* --mixed-hparams
    fi ;;
  add)  # new methods' seeds (and DIR...: the chosen grid points, their seed 0) into the round whose
    # earlier runs are gone (their rows kept), their grid points into grid.md
    shift
    python scripts/merge_results.py docs/results/posterior "$root"/seeds-* "$@" --mixed-hparams
    table=docs/results/posterior/grid.md
    python scripts/nll_grid.py --previous "$table" "$root"/grid-* >"$table.new" && mv "$table.new" "$table" ;;
  *) echo "usage: $0 grid|ens-grid|ens-control|seeds|mlp-seeds|collect|add|long|long-control|long-collect" >&2; exit 2 ;;
esac
}
[ "$1" = long-control ] && export RESUME=1
# several modes in one queue, two processes at a time: MODE ARGS [-- MODE ARGS ...]
if [ "$1" = collect ] || [ "$1" = add ] || [ "$1" = long-collect ]; then jobs "$@"; exit; fi
{
  args=()
  for a in "$@" --; do
    if [ "$a" = -- ]; then jobs "${args[@]}"; args=(); else args+=("$a"); fi
  done
} | parallel
