#!/usr/bin/env bash
# Everything the project wants from a GPU machine, in one command of at most 10 minutes, on a bare
# machine that has Python, a CUDA build of torch and this repository (no network):
#
#   bash scripts/gpu_check.sh OUT            # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run OUT  # the same steps on the CPU at toy sizes (CI runs it)
#
# 1. installs the package without its dependencies into OUT/site, and beside it the wheels carried
#    in WHEELS (default .gpu-wheels: geotorch, pytest and its own; scripts/gpu_wheels.sh fetches
#    them on a machine with the package index), so that nothing else on the machine changes;
# 2. the CUDA tests (tests/optim/test_cuda.py, the Cayley routes, the sync-free step), where pytest
#    is there;
# 3. benchmarks.gpu_check: every set under every scheme on the device, the Cayley map by products
#    against the LU solve (what cayley="auto" should pick), the sync-free step under CUDA graph
#    capture with its replay timed;
# 4. the speed benchmark's rows 6 (every set's step), 7 (the paper's iteration against SGD-momentum
#    and AdamW), 2-3 (the ResNet's iteration against geotorch) and 12 (deep square orthogonal nets,
#    both Cayley routes);
# 5. the transformer task's iteration (scripts/transformer_cost.py) against AdamW.
# Each step has its own time limit; a failing step is recorded and the next one runs. OUT/summary.md
# lists every step's status, time and log; the exit status is 1 when any step failed.
set -uo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out=${1:?usage: scripts/gpu_check.sh [--dry-run] OUT}
cd "$(dirname "$0")/.."
repo=$PWD
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
wheels=$(cd "${WHEELS:-.gpu-wheels}" 2>/dev/null && pwd || echo "${WHEELS:-.gpu-wheels}")
device=cuda
[ $dry = 1 ] && device=cpu
summary="$out/summary.md"
{
  echo "# GPU check ($( [ $dry = 1 ] && echo 'dry run, CPU' || echo 'CUDA'))"
  echo
  echo "Started $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo
  echo "| step | status | seconds | log |"
  echo "|---|---|---|---|"
} >"$summary"
failed=0
step() {  # NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local log="$out/$name.log" start=$SECONDS status
  echo "== $name (limit ${limit}s)"
  # from OUT: the working directory comes first on sys.path, and the repository's own
  # constrained_sgld/ would hide the installed copy
  if (cd "$out" && timeout "$limit" "$@") >"$log" 2>&1; then status=ok; else status="FAILED ($?)"; failed=1; fi
  tail -n 3 "$log"
  echo "| $name | $status | $((SECONDS - start)) | $name.log |" >>"$summary"
}

# 1. the package into a folder of its own, without dependencies; carried wheels beside it
site="$out/site"
install_package() {
  rm -rf "$site" && mkdir -p "$site"
  # pip builds the wheel offline from the machine's own setuptools; where that fails (too old for
  # the project's metadata), the pure-Python package is copied, which is what the wheel holds
  "$py" -m pip install --quiet --no-deps --no-index --no-build-isolation --target "$site" "$repo" \
    || { echo "pip could not build the package here; copying constrained_sgld/ instead"; cp -r "$repo/constrained_sgld" "$site/"; }
  if compgen -G "$wheels/*.whl" >/dev/null; then
    "$py" -m pip install --quiet --no-deps --no-index --target "$site" "$wheels"/*.whl
  else
    echo "no wheels in $wheels: using what the machine has"
  fi
  "$py" -c "import torch, constrained_sgld, geotorch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('constrained_sgld from', constrained_sgld.__file__)"
  [ $dry = 1 ] || nvidia-smi || true
}
# the installed package first, then the repository (benchmarks/, tests/, scripts/)
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export site py wheels dry repo
export -f install_package
step install 60 bash -c install_package  # (timeout runs programs, not shell functions)

# 2. the CUDA tests (skipped without a GPU: the dry run checks that they collect and skip)
if "$py" -c "import pytest" 2>/dev/null; then
  # (pytest puts the repository first on sys.path: the tests import its copy of the package)
  step cuda-tests 100 "$py" -m pytest -q -p no:cacheprovider --rootdir "$repo" "$repo/tests/optim/test_cuda.py" "$repo/tests/constraints/test_cayley.py" "$repo/tests/optim/test_sync_free.py"
else
  echo "| cuda-tests | skipped: no pytest (carry its wheels in $wheels) | 0 | - |" >>"$summary"
fi

# 3. the device checks
dry_flag=()
[ $dry = 1 ] && dry_flag=(--dry-run)
for part in sets routes graph; do
  step "check-$part" 60 "$py" -m benchmarks.gpu_check "$part" --out "$out/checks" --device "$device" "${dry_flag[@]}"
done

# 4. the speed rows
preset=quick
[ $dry = 1 ] && preset=smoke
step speed 180 "$py" -m benchmarks speed --preset "$preset" --device "$device" --rows 6,7,2,12 --out "$out"

# 5. the transformer's iteration against AdamW
if [ $dry = 1 ]; then
  step transformer 60 "$py" "$repo/scripts/transformer_cost.py" --preset smoke --device "$device" --rounds 1 --iterations 1 --out "$out/transformer.json"
else
  step transformer 60 "$py" "$repo/scripts/transformer_cost.py" --preset quick --device "$device" --rounds 3 --iterations 5 --out "$out/transformer.json"
fi

echo >>"$summary"
echo "Finished $(date -u '+%H:%M UTC'); $( [ $failed = 0 ] && echo 'every step passed' || echo 'some step failed: see its log')." >>"$summary"
cat "$summary"
exit $failed
