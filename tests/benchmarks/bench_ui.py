"""How fast `flowgpt ui` starts: from starting the process to the runs page answered.

Measures, as fresh processes taking turns round by round (so noise from other work on the
machine spreads evenly), ``flowgpt --help`` (the baseline: the command line itself) and
``flowgpt ui --port 0``: the time until its first answer of ``/`` over a store, then
stops it. Prints the median of each and the ratio to the baseline. The target: the runs
page answers well under a second (the issue's "started in well under a second").

Run it from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_ui
    .venv/bin/python -m tests.benchmarks.bench_ui --runs 21 --store runs.sqlite3

Without ``--store`` a store with a few ``--mock`` runs and a batch is made in a temporary
folder. A first, unmeasured round compiles byte-code and templates, as a user's first
start does.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _flowgpt() -> list[str]:
    script = Path(sys.executable).with_name("flowgpt")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flowgpt"]


def time_help() -> float:
    start = time.perf_counter()
    subprocess.run([*_flowgpt(), "--help"], cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def time_ui(store: Path) -> float:
    """Seconds from starting `flowgpt ui` to the runs page read whole."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*_flowgpt(), "ui", "--port", "0", "--store", str(store)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[2]
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
        return time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=11, help="Rounds (11).")
    parser.add_argument("--store", type=Path, help="The run store (default: a made-up one).")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            from tests.support.ui_runs import fill_store

            store = fill_store(Path(tmp)).path
        time_help(), time_ui(store)  # warm-up
        times: dict[str, list[float]] = {"flowgpt-help": [], "flowgpt-ui": []}
        for _ in range(args.runs):
            times["flowgpt-help"].append(time_help())
            times["flowgpt-ui"].append(time_ui(store))
    base = statistics.median(times["flowgpt-help"])
    print(f"{'command':14} {'median s':>9} {'x --help':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:14} {median:9.3f} {median / base:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
