"""What tracing costs on the chain benchmark (issue 18's target: at most 10 % more).

bench_chain.py's 3-step chain, run by two engines against the same loopback
OpenAI-compatible server (tests/support/fake_openai.py, its own process), in one run:

* **off**: ``Engine(tracing=False)``, what every run is without the
  variable (no OpenTelemetry at all);
* **on**: ``Engine(tracing=True)`` with ``OTEL_EXPORTER_OTLP_ENDPOINT``
  pointing at a loopback OTLP/HTTP receiver (tests/support/otlp_receiver.py, its own
  process): flowgpt's own SDK providers, the BatchSpanProcessor and the real OTLP/HTTP
  exporter, as a user gets them. Each chain makes 7 spans (the run, 3 steps, 3 requests)
  and 6 metric points; the exporter's thread works in this process, so its CPU is counted.

Modes as in bench_chain: **sequential** (``--chains-seq`` chains, no server latency, the two
sides alternating chain by chain) and **concurrent** (``--chains-conc`` chains with
``asyncio.gather``, ``--latency-ms`` server latency, ``--concurrency`` requests in flight,
held by the engine's limiter, the sides taking turns batch by batch). ``ratio`` is on /
off, the median of ``--repeat`` per-repeat ratios, with their range; ``cpu ratio`` the
same for this process's CPU time.
At the end it checks that the receiver got every span. ``--sample RATIO`` traces only
that share of the runs (the SDK's ``parentbased_traceidratio`` sampler), as a busy
production service would.

Run it from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_tracing
    .venv/bin/python -m tests.benchmarks.bench_tracing --mode sequential --repeat 9 -v
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `flowgpt` importable from the checkout
    sys.path.insert(0, str(ROOT))

from flowgpt import Engine  # noqa: E402
from flowgpt.spec.workflow import Workflow  # noqa: E402
from tests.benchmarks.bench_chain import (  # noqa: E402
    KEY,
    KEY_ENV,
    Chain,
    Sample,
    fake_server,
    run_concurrent,
    sequential_pair,
    topic,
)
from tests.benchmarks.bench_chain import workflow as chain_workflow  # noqa: E402

SPANS_PER_CHAIN = 7  # invoke_workflow, 3 steps, 3 chat requests


@dataclass
class Side:
    engine: Engine
    workflow: Workflow  # its `provider:` sends to this side's server
    chains: int = 0  # run so far (the receiver should have SPANS_PER_CHAIN of each)

    def chain(self) -> Chain:
        async def one(i: int) -> str:
            self.chains += 1
            result = await self.engine.run(self.workflow, {"topic": topic(i)})
            headline: str = result.outputs["headline"]
            return headline

        return one


def make_side(base_url: str, tracing: bool, concurrency: int) -> Side:
    # As a user writes it (bench_chain does the same): no provider given, the workflow's
    # `provider:` says where requests go, the key is in the environment.
    os.environ[KEY_ENV] = KEY
    return Side(Engine(tracing=tracing), chain_workflow(base_url, concurrency))


@dataclass
class Row:
    mode: str
    chains: int
    off: list[Sample] = field(default_factory=list)
    on: list[Sample] = field(default_factory=list)

    def ratios(self, kind: str = "wall") -> list[float]:
        return [getattr(n, kind) / getattr(f, kind) for f, n in zip(self.off, self.on, strict=True)]

    def brief(self) -> str:
        f, n = self.off[-1], self.on[-1]
        return f"{self.mode} off {f.wall:.3f}s on {n.wall:.3f}s ratio {n.wall / f.wall:.3f}"


async def measure(args: argparse.Namespace, urls: dict[str, str]) -> tuple[list[Row], int]:
    sides = {
        mode: (make_side(url, False, args.concurrency), make_side(url, True, args.concurrency))
        for mode, url in urls.items()
    }
    rows = {"sequential": Row("sequential", args.chains_seq)}
    rows["concurrent"] = Row("concurrent", args.chains_conc)
    width = args.concurrency
    try:
        for mode, (off, on) in sides.items():  # warm-up: same output, pools filled
            for i in range(2):
                a, b = await off.chain()(i), await on.chain()(i)
                if a != b:
                    raise AssertionError(f"the two sides disagree on chain {i}: {a!r} != {b!r}")
            if mode == "sequential":
                await sequential_pair(off.chain(), on.chain(), min(args.chains_seq, 20))
            else:
                for side in (off, on):
                    await run_concurrent(side.chain(), min(args.chains_conc, 2 * width))
        for r in range(args.repeat):
            if "sequential" in sides:
                off, on = sides["sequential"]
                row = rows["sequential"]
                a, b = await sequential_pair(off.chain(), on.chain(), args.chains_seq)
                row.off.append(a)
                row.on.append(b)
            if "concurrent" in sides:
                off, on = sides["concurrent"]
                row = rows["concurrent"]
                for k in (0, 1) if r % 2 == 0 else (1, 0):  # swap who goes first
                    side = (off, on)[k]
                    sample = await run_concurrent(side.chain(), args.chains_conc)
                    (row.off, row.on)[k].append(sample)
            if args.verbose:
                done = "; ".join(rows[m].brief() for m in sides)
                print(f"repeat {r + 1}: {done}", file=sys.stderr)
        traced = sum(on.chains for _, on in sides.values())
        return [rows[m] for m in sides], traced
    finally:
        for off, on in sides.values():
            on.engine.tracing.flush()
            await off.engine.aclose()
            await on.engine.aclose()


def start_receiver() -> str:
    """tests/support/otlp_receiver.py in its own process, until this process exits: the
    SDK sends its last metrics when it shuts down at exit, and the receiver, stopped by an
    exit handler registered before the SDK's (they run in reverse), is still there."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.otlp_receiver", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )

    def stop() -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    atexit.register(stop)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        raise RuntimeError(f"the OTLP receiver did not start (it printed {url!r})")
    return url


def table(
    rows: Sequence[Row], args: argparse.Namespace, received: int, expected: int | None
) -> str:
    header = (
        f"{'mode':<11} {'chains':>6} {'off s':>7} {'on s':>7} {'ratio':>6} "
        f"{'ratio range':>13} {'cpu ratio':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        ratios = row.ratios()
        lines.append(
            f"{row.mode:<11} {row.chains:>6} "
            f"{statistics.median(s.wall for s in row.off):>7.3f} "
            f"{statistics.median(s.wall for s in row.on):>7.3f} "
            f"{statistics.median(ratios):>6.3f} "
            f"{f'{min(ratios):.3f}-{max(ratios):.3f}':>13} "
            f"{statistics.median(row.ratios('cpu')):>9.3f}"
        )
    lines += [
        "off: tracing=False. on: tracing=True, OTLP/HTTP to a loopback receiver (another "
        f"process); {SPANS_PER_CHAIN} spans per chain. sequential: no server latency, the "
        f"sides alternate chain by chain. concurrent: {args.latency_ms:g} ms server latency, "
        f"{args.concurrency} chains in flight.",
        f"Seconds: medians of {args.repeat} repeats. ratio: on / off, the median of the "
        "per-repeat ratios; cpu ratio: the same for this process's CPU time (the exporter's "
        "thread included).",
        f"Spans received: {received} of {expected}."
        if expected is not None
        else f"Spans received: {received} (runs sampled at {args.sample:g}).",
        "Target (issue 18): ratio <= 1.10.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_tracing",
        description="flowgpt's chain with tracing on (OTLP to a loopback receiver) vs off.",
    )
    parser.add_argument("--chains-seq", type=int, default=200, help="sequential chains")
    parser.add_argument("--chains-conc", type=int, default=500, help="concurrent chains")
    parser.add_argument(
        "--latency-ms", type=float, default=50.0, help="server latency in concurrent mode"
    )
    parser.add_argument("--concurrency", type=int, default=50, help="chains in flight")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per mode")
    parser.add_argument(
        "--mode", choices=("both", "sequential", "concurrent"), default="both", help="what to run"
    )
    parser.add_argument(
        "--sample",
        type=float,
        default=1.0,
        metavar="RATIO",
        help="trace this share of runs (OTEL_TRACES_SAMPLER=parentbased_traceidratio); "
        "default 1: every run, the SDK's default",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every repeat")
    args = parser.parse_args(argv)
    if not 0 <= args.sample <= 1:
        parser.error("--sample must be between 0 and 1")
    for name in ("chains_seq", "chains_conc", "concurrency", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.pop("OPENAI_BASE_URL", None)
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]  # the SDK's defaults, but for the endpoint
    latency = {"sequential": 0.0, "concurrent": args.latency_ms}
    modes = ["sequential", "concurrent"] if args.mode == "both" else [args.mode]
    receiver = start_receiver()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver
    if args.sample < 1:
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = f"{args.sample:g}"
    with contextlib.ExitStack() as stack:
        urls = {mode: stack.enter_context(fake_server(latency[mode])) for mode in modes}
        rows, traced = asyncio.run(measure(args, urls))
        with urllib.request.urlopen(f"{receiver}/spans", timeout=10) as reply:
            received = int(reply.read())
    expected = traced * SPANS_PER_CHAIN if args.sample == 1 else None
    print(table(rows, args, received, expected))
    return 0


if __name__ == "__main__":
    sys.exit(main())
