"""Whole-process start-up times of the commands that must feel instant (issue 13).

Runs ``python -c pass`` (the floor), ``flowgpt --help``, ``flowgpt validate`` of an example,
``flowgpt schema`` and ``flowgpt estimate`` as fresh processes, taking turns round by round
so that noise from other work on the machine spreads evenly over all of them, and prints
the median wall time of each, with the median minus the floor. The targets (whole process,
median, compiled bytecode): ``--help`` <= 0.25 s, ``validate`` <= 0.5 s, ``estimate``
<= 0.8 s.

Run it from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_startup
    .venv/bin/python -m tests.benchmarks.bench_startup --runs 21 --workflow workflows/translate.yaml

Byte-code: an installed flowgpt has compiled ``.pyc`` files. If this environment forbids
writing them (``PYTHONDONTWRITEBYTECODE``), every run compiles flowgpt's modules again,
which is not what a user sees; ``--pyc`` (the default) then keeps them under a private
``PYTHONPYCACHEPREFIX`` in the temp folder, leaving the checkout untouched. ``--no-pyc``
measures the compile-every-time case.

A first, unmeasured run of each command fills the price cache and seeds tiktoken's cache,
as a user's first command does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _flowgpt() -> list[str]:
    script = Path(sys.executable).with_name("flowgpt")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flowgpt"]


def _time(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=11, help="Runs of each command (11).")
    parser.add_argument("--workflow", default="workflows/article.yaml")
    parser.add_argument("--pyc", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)

    env = dict(os.environ)
    if args.pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "flowgpt-bench-pyc")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    flowgpt = _flowgpt()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "flowgpt --help": [*flowgpt, "--help"],
        "flowgpt validate": [*flowgpt, "validate", args.workflow],
        "flowgpt schema": [*flowgpt, "schema"],
        # Tokens counted (tiktoken's encoder built), prices looked up, no call.
        "flowgpt estimate": [*flowgpt, "estimate", args.workflow, "-i", "topic=green tea"],
    }
    for cmd in commands.values():  # warm-up: byte-code, caches, the OS's file cache
        _time(cmd, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            times[name].append(_time(cmd, env))
    floor = statistics.median(times["python -c pass"])
    print(f"{'command':<18} {'median s':>9} {'- floor':>8} {'min s':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<18} {median:9.3f} {median - floor:8.3f} {min(values):7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
