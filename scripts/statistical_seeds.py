"""Rerun the statistical test suite under many seeds and count the runs that failed.

    python scripts/statistical_seeds.py [--seeds 20] [--first 1] [--jobs 2] [-k EXPRESSION]

Each run is ``pytest tests/statistical`` with ``CSGLD_STAT_SEED`` set (CI uses seed 0). With the
suite's 4.5-standard-error tolerances a correct sampler fails a given check with probability
below 1e-5, so every run should pass: the script prints the number of failed runs (expected 0)
and exits non-zero if there was any. Not run by CI (about 90 s per seed on 2 cores). ``-k`` passes
pytest's keyword expression, to rerun the cases a change touched (e.g. ``-k "orthogonal or stiefel"``).
"""

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(seed: int, keyword=None):
    env = dict(os.environ, CSGLD_STAT_SEED=str(seed), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/statistical"] + (["-k", keyword] if keyword else []),
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    return seed, proc.returncode, last, failed, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("-k", dest="keyword", help="pytest's -k expression: only the matching cases")
    args = parser.parse_args()
    seeds = range(args.first, args.first + args.seeds)
    bad = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for seed, rc, last, failed, secs in pool.map(lambda seed: run(seed, args.keyword), seeds):
            bad += rc != 0
            print(f"seed {seed:3d}: {'ok  ' if rc == 0 else 'FAIL'} {last} ({secs:.0f} s)", flush=True)
            for line in failed:
                print("    " + line, flush=True)
    print(f"{bad} of {len(seeds)} runs failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
