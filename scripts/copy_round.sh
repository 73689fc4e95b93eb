#!/usr/bin/env bash
# The copy task at the papers' length and the length sweep (docs/benchmarks.md, "Copy at T = 1000").
# One process per method, one thread each, at most two at a time; every run is resumable (--resume),
# so the same command continues a killed round. Usage: scripts/copy_round.sh MODE ...
# grid  KEY METHOD LR...  : quick preset (T = 200), seed 0, one run per lr; the choice is by the
#                           validation recall           -> runs/copy/grid-METHOD-LR
# paper METHOD...         : the paper preset (T = 1000, hidden 190, 4,000 steps), seed 0
#                                                        -> runs/copy/paper-METHOD
# sweep METHOD T...       : the paper preset at length T for 1,000 steps (10 epochs of 100)
#                                                        -> runs/copy/sweep-METHOD-TT
#                           (at T = 1000 a method's paper run is the same run for its first
#                           1,000 steps: scripts/copy_sweep.py --paper reads it there)
# collect                 : merge the finished runs (those with a results.json) into
#                           docs/results/copy-paper (its grid.md stays) and
#                           docs/results/copy-sweep/T<T> (what docs/results.md and README read)
# SETS="--set key=value ..." adds overrides to every run of grid, paper and sweep (the lrs chosen).
# RUNS=DIR puts the runs under DIR instead of runs/ (a folder outside the checkout survives a fresh
# clone of the repository, so a later checkout can resume or collect them).
set -euo pipefail
root=${RUNS:-runs}
mode=$1; shift
run() { python -m benchmarks run --task copy --seeds 1 --threads 1 --no-progress --resume ${SETS:-} "$@"; }
case "$mode" in
  grid)
    key=$1; method=$2; shift 2
    for lr in "$@"; do run --preset quick --methods "$method" --set "$key=$lr" --out "$root/copy/grid-$method-$lr"; done ;;
  paper)
    for method in "$@"; do run --preset paper --methods "$method" --out "$root/copy/paper-$method"; done ;;
  sweep)
    method=$1; shift
    for t in "$@"; do run --preset paper --methods "$method" --set "T=$t" --set epochs=10 --out "$root/copy/sweep-$method-T$t"; done ;;
  collect)
    shopt -s nullglob
    finished() { for d in "$@"; do [ -f "$d/copy/results.json" ] && echo "$d"; done; true; }
    # merged into a fresh folder first, then put in place (its copy/ and report.md replaced, other
    # files such as copy-paper/grid.md kept): a refused merge leaves docs as they were
    collect_into() {
      local dest=$1; shift
      [ $# -gt 0 ] || return 0
      local tmp; tmp=$(mktemp -d); python scripts/merge_results.py --mixed-hparams "$tmp" "$@"
      mkdir -p "$dest"; rm -rf "$dest/copy" "$dest/report.md"; cp -r "$tmp"/. "$dest"/; rm -rf "$tmp"
    }
    mapfile -t papers < <(finished "$root"/copy/paper-*/)
    collect_into docs/results/copy-paper "${papers[@]}"
    for t in 100 200 500 1000; do
      mapfile -t sweeps < <(finished "$root"/copy/sweep-*-T$t/)
      collect_into "docs/results/copy-sweep/T$t" "${sweeps[@]}"
    done
    true ;;
  *) echo "usage: $0 grid|paper|sweep|collect ..." >&2; exit 2 ;;
esac
