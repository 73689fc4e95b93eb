#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh installs beside the package on a GPU machine without network:
# geotorch (the package's one dependency besides torch and numpy, which the machine has) and
# pytest with its own. Run it where the package index is reachable; the wheels go to .gpu-wheels/
# (git-ignored), which the device tool carries (carry: [".gpu-wheels"]).
# PYTHON_VERSION: the GPU machine's Python (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${PYTHON_VERSION:-3.12}
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" -d .gpu-wheels \
  geotorch pytest pluggy iniconfig packaging
ls .gpu-wheels
