"""flowgpt's overhead over a hand-written AsyncOpenAI chain (issue 3's benchmark).

The same 3-step chain (a -> b -> c, each prompt quoting the previous reply) runs two ways
against the loopback OpenAI-compatible server (tests/support/fake_openai.py), in one run:

* **raw**: one ``openai.AsyncOpenAI`` client and three ``chat.completions.create`` calls
  per chain, prompts built with f-strings, as a minimal hand-written app would do it;
* **flowgpt**: the same chain as a workflow, run by one ``Engine`` with one
  ``OpenAIProvider`` (so one reused SDK client), which adds what flowgpt is for: input
  validation, templating, exact token counting before each call, cost, per-step results.

Both sides send identical requests (same model, messages and settings; checked on the
warm-up chains) and get identical replies. Two modes:

* **sequential**: ``--chains-seq`` chains (default 200) one after another, no server
  latency: measures flowgpt's CPU cost per step against the SDK's own.
* **concurrent**: ``--chains-conc`` chains (default 500), ``--latency-ms`` (50) server
  latency per reply, ``--concurrency`` (50) chains in flight.

The server runs as separate processes (one per mode), so its CPU does not compete with
the measured client for the GIL. Each measurement is repeated ``--repeat`` times,
interleaving raw and flowgpt (alternating which goes first), after a warm-up of both
sides (imports, tokenizer load, connection pools). The table shows the median and the
best run of each side, and flowgpt / raw ratios of both. Issue 3's targets: <= 1.10
sequential, <= 1.05 concurrent.

Run from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_chain
    .venv/bin/python -m tests.benchmarks.bench_chain --chains-seq 20 --chains-conc 50 --repeat 1

``--profile FILE`` also writes a cProfile of extra flowgpt-only sequential and concurrent
runs (not part of the measurements); read it with ``python -m pstats FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `flowgpt` importable from the checkout
    sys.path.insert(0, str(ROOT))

import openai  # noqa: E402  (the raw side uses the SDK directly, as an app would)

from flowgpt import Engine, parse_workflow  # noqa: E402
from flowgpt.providers.openai import OpenAIProvider  # noqa: E402
from flowgpt.workflow import Workflow  # noqa: E402

MODEL = "gpt-4o-mini"
TEMPERATURE = 0.2
MAX_TOKENS = 300
MAX_RETRIES = 2
TIMEOUT_S = 60.0
SYSTEM = "You are a concise technical writer."
KEY_ENV = "FLOWGPT_BENCH_API_KEY"
KEY = "bench-not-a-real-key"

# The workflow and the raw chain below must stay the same chain: same messages, same
# settings. Prices are given as an override so flowgpt's cost path runs (the loopback
# base_url is not OpenAI's, so the model would otherwise be "unpriced" and skip it).
WORKFLOW = f"""\
version: 1
name: bench-chain
defaults:
  model: {MODEL}
  temperature: {TEMPERATURE}
  max_tokens: {MAX_TOKENS}
provider:
  api_key_env: {KEY_ENV}
  timeout_s: {TIMEOUT_S:g}
  max_retries: {MAX_RETRIES}
  concurrency: 50
pricing:
  {MODEL}: {{input: 0.15, cached_input: 0.075, output: 0.60}}
inputs:
  topic: {{type: string}}
steps:
  - id: a
    system: {SYSTEM}
    prompt: List three key facts about {{{{ inputs.topic }}}}.
  - id: b
    system: {SYSTEM}
    prompt: |
      Summarise these facts in one sentence:
      {{{{ steps.a.output }}}}
  - id: c
    system: {SYSTEM}
    prompt: |
      Write a headline for this summary:
      {{{{ steps.b.output }}}}
outputs:
  headline: "{{{{ steps.c.output }}}}"
"""


def topic(i: int) -> str:
    return f"the history of topic number {i} in distributed systems"


# -- the two sides ------------------------------------------------------------------------


async def _ask(client: openai.AsyncOpenAI, prompt: str) -> str:
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        temperature=TEMPERATURE,
        max_tokens=MAX_TOKENS,
    )
    return completion.choices[0].message.content or ""


async def raw_chain(client: openai.AsyncOpenAI, i: int) -> str:
    # Jinja drops a template's final newline, so the workflow's `prompt: |` blocks render
    # exactly like these f-strings.
    facts = await _ask(client, f"List three key facts about {topic(i)}.")
    summary = await _ask(client, f"Summarise these facts in one sentence:\n{facts}")
    return await _ask(client, f"Write a headline for this summary:\n{summary}")


async def flowgpt_chain(engine: Engine, workflow: Workflow, i: int) -> str:
    result = await engine.run(workflow, {"topic": topic(i)})
    headline: str = result.outputs["headline"]
    return headline


Chain = Callable[[int], Awaitable[str]]


@dataclass
class Side:
    name: str
    chain: Chain


@dataclass
class Sample:
    wall: float  # seconds
    cpu: float  # this process's CPU seconds (the client; the server is another process)


async def run_sequential(chain: Chain, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await chain(i)
    return time.perf_counter() - started


async def run_sequential_pair(raw: Chain, flow: Chain, n: int) -> tuple[Sample, Sample]:
    """``n`` chains one after another on each side, interleaved chain by chain.

    Each side still runs its chains strictly one at a time; alternating them every chain
    (and which side goes first) means load from other processes, which comes and goes
    over seconds, falls on both sides alike. Returns the summed time of each side.
    """
    wall, cpu = [0.0, 0.0], [0.0, 0.0]
    for i in range(n):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            c0, w0 = time.process_time(), time.perf_counter()
            await (raw, flow)[k](i)
            wall[k] += time.perf_counter() - w0
            cpu[k] += time.process_time() - c0
    return Sample(wall[0], cpu[0]), Sample(wall[1], cpu[1])


async def run_concurrent(chain: Chain, n: int, concurrency: int) -> float:
    # Fairness: flowgpt's `provider.concurrency` bounds the requests of ONE run (each run
    # has its own semaphore), so 500 concurrent engine.run() calls would otherwise have up
    # to 500 requests in flight. Both sides therefore get the same outer limit: at most
    # `concurrency` chains in flight. A chain's steps are sequential, so that is also at
    # most `concurrency` requests in flight, on both sides. (A per-call semaphore on the
    # raw side would be a different, looser schedule than flowgpt can express today.)
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with limit:
            return await chain(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - started


# -- the servers --------------------------------------------------------------------------


@contextlib.contextmanager
def fake_server(latency_ms: float) -> Iterator[str]:
    """tests/support/fake_openai.py in its own process; yields its base URL."""
    command = [sys.executable, "-m", "tests.support.fake_openai", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--latency-ms", f"{latency_ms:g}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"the fake server did not start (printed {base_url!r})")
        yield base_url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the measurement ----------------------------------------------------------------------


@dataclass
class Row:
    mode: str
    chains: int
    raw: list[Sample] = field(default_factory=list)
    flowgpt: list[Sample] = field(default_factory=list)

    def ratio(self, kind: str = "wall") -> float:
        """The median of the per-repeat flowgpt / raw ratios.

        Pairing the two sides of one repeat (run back to back) cancels most of the noise
        that other load on the machine adds; the median drops outlier repeats.
        """
        pairs = [
            getattr(f, kind) / getattr(r, kind) for r, f in zip(self.raw, self.flowgpt, strict=True)
        ]
        return statistics.median(pairs) if pairs else float("nan")

    @staticmethod
    def median(samples: Sequence[Sample]) -> float:
        return statistics.median(s.wall for s in samples)


async def timed(run: Awaitable[float]) -> Sample:
    cpu = time.process_time()
    wall = await run
    return Sample(wall, time.process_time() - cpu)


def _sides(base_url: str, workflow: Workflow) -> tuple[Side, Side, openai.AsyncOpenAI]:
    # Same settings on both sides; each gets its own client (its own connection pool).
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url=base_url, timeout=TIMEOUT_S, max_retries=MAX_RETRIES
    )
    provider = OpenAIProvider(
        base_url=base_url,
        api_key_env=KEY_ENV,
        timeout_s=TIMEOUT_S,
        max_retries=MAX_RETRIES,
        environ={KEY_ENV: KEY},
    )
    engine = Engine(provider=provider)
    raw = Side("raw", lambda i: raw_chain(client, i))
    flow = Side("flowgpt", lambda i: flowgpt_chain(engine, workflow, i))
    return raw, flow, client


async def _check_same(raw: Side, flow: Side) -> None:
    for i in range(2):
        a, b = await raw.chain(i), await flow.chain(i)
        if a != b:
            raise AssertionError(f"the two sides disagree on chain {i}: {a!r} != {b!r}")


async def measure(args: argparse.Namespace, seq_url: str, conc_url: str) -> list[Row]:
    workflow = parse_workflow(WORKFLOW)
    seq = _sides(seq_url, workflow)
    conc = _sides(conc_url, workflow)
    n_seq, n_conc, width = args.chains_seq, args.chains_conc, args.concurrency

    # Warm-up: same output on both sides, tokenizer loaded, connection pools filled.
    await _check_same(seq[0], seq[1])
    await _check_same(conc[0], conc[1])
    for side in seq[:2]:
        await run_sequential(side.chain, min(n_seq, 20))
    for side in conc[:2]:
        await run_concurrent(side.chain, min(n_conc, 2 * width), width)

    rows = [Row("sequential", n_seq), Row("concurrent", n_conc)]
    for r in range(args.repeat):
        order = (0, 1) if r % 2 == 0 else (1, 0)  # alternate which side goes first
        raw_sample, flow_sample = await run_sequential_pair(seq[0].chain, seq[1].chain, n_seq)
        rows[0].raw.append(raw_sample)
        rows[0].flowgpt.append(flow_sample)
        for k in order:
            sample = await timed(run_concurrent(conc[k].chain, n_conc, width))
            (rows[1].raw, rows[1].flowgpt)[k].append(sample)
        if args.verbose:
            print(f"repeat {r + 1}: " + "; ".join(_brief(row) for row in rows), file=sys.stderr)

    if args.profile:
        await _profile(args, seq[1], conc[1])
    for side in (seq, conc):
        await side[2].close()
    return rows


async def _profile(args: argparse.Namespace, seq: Side, conc: Side) -> None:
    """cProfile extra flowgpt runs (never the measured ones) into ``args.profile``.

    Profiling slows Python code several times over, so the file shows where the time
    goes, not how much there is. The flowgpt functions that took the most are printed.
    """
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()  # the hook is per thread: it sees every task the loop runs
    try:
        await run_sequential(seq.chain, args.chains_seq)
        await run_concurrent(conc.chain, args.chains_conc, args.concurrency)
    finally:
        profiler.disable()
    profiler.dump_stats(args.profile)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(r"flowgpt[/\\]", 30)
    print(out.getvalue(), file=sys.stderr)


def _brief(row: Row) -> str:
    r, f = row.raw[-1], row.flowgpt[-1]
    return f"{row.mode} raw {r.wall:.3f}s flowgpt {f.wall:.3f}s ratio {f.wall / r.wall:.3f}"


def table(rows: Sequence[Row], args: argparse.Namespace) -> str:
    header = (
        f"{'mode':<11} {'chains':>6} {'raw s':>7} {'flowgpt s':>9} {'ratio':>6} {'cpu ratio':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.mode:<11} {row.chains:>6} {Row.median(row.raw):>7.3f} "
            f"{Row.median(row.flowgpt):>9.3f} {row.ratio():>6.3f} {row.ratio('cpu'):>9.3f}"
        )
    lines.append(
        f"3 calls per chain; sequential: no server latency; concurrent: {args.latency_ms:g} ms "
        f"server latency, {args.concurrency} chains in flight. Seconds are medians of "
        f"{args.repeat} interleaved repeats; ratio = flowgpt / raw, the median of the "
        "per-repeat ratios (cpu ratio: the same for this process's CPU time). "
        "Targets: sequential <= 1.10, concurrent <= 1.05."
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_chain",
        description="flowgpt vs raw AsyncOpenAI on a 3-step chain against a loopback server.",
    )
    parser.add_argument("--chains-seq", type=int, default=200, help="sequential chains")
    parser.add_argument("--chains-conc", type=int, default=500, help="concurrent chains")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="concurrent mode")
    parser.add_argument("--concurrency", type=int, default=50, help="chains in flight")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved measurements")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of flowgpt runs")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each repeat")
    args = parser.parse_args(argv)
    for name in ("chains_seq", "chains_conc", "concurrency", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.pop("OPENAI_BASE_URL", None)  # both sides get base_url explicitly
    with fake_server(0) as seq_url, fake_server(args.latency_ms) as conc_url:
        rows = asyncio.run(measure(args, seq_url, conc_url))
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
