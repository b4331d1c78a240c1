"""flowgpt's overhead over a hand-written AsyncOpenAI chain (issue 3's benchmark).

The same 3-step chain (a -> b -> c, each prompt quoting the previous reply) runs two ways
against the loopback OpenAI-compatible server (tests/support/fake_openai.py), in one run:

* **raw**: one ``openai.AsyncOpenAI`` client and three ``chat.completions.create`` calls
  per chain, prompts built with f-strings, as a minimal hand-written app would do it;
* **flowgpt**: the same chain as a workflow, run by one ``Engine`` with one
  ``OpenAIProvider`` (so one reused SDK client). It adds what flowgpt is for: input
  validation, templating, token counting before each call, cost, per-step results.

Both sides send the same requests (model, messages, settings) and get the same replies;
the warm-up checks that both produce the same final text. Two modes:

* **sequential**: ``--chains-seq`` chains (default 200) one after another, no server
  latency. This shows flowgpt's CPU cost per step next to the SDK's own.
* **concurrent**: ``--chains-conc`` chains (default 500) started together with
  ``asyncio.gather``, ``--latency-ms`` (50) server latency per reply, at most
  ``--concurrency`` (50) chains in flight.

Each mode has its own server process (``python -m tests.support.fake_openai``), so the
server's CPU does not compete with the measured client for the GIL. Both sides are warmed
up first (imports, tokenizer, connection pools). Each mode is then measured ``--repeat``
times. Machines running other work are noisy over seconds, so the two sides take turns:

* sequential: raw and flowgpt alternate **chain by chain**, and the time of each side is
  summed. Each side still runs its own chains strictly one after another;
* concurrent: a whole batch of raw, then a whole batch of flowgpt, swapping which goes
  first on each repeat.

``ratio`` is flowgpt / raw: the median of the per-repeat ratios, with their range.
``cpu ratio`` is the same for this process's CPU time (the client alone). Issue 3's
targets: sequential <= 1.10, concurrent <= 1.05.

Run it from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_chain
    .venv/bin/python -m tests.benchmarks.bench_chain --mode concurrent --repeat 9 -v

``--profile FILE`` runs flowgpt once more per mode under cProfile (this run is not
measured), writes the stats to FILE and prints the flowgpt functions that took longest.
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

# The workflow and raw_chain() below must stay the same chain: same messages, same
# settings. The prices are an override so that flowgpt's cost path runs: the loopback
# base_url is not OpenAI's, so the model would otherwise be "unpriced" and skip it.
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
class Sides:
    """Both sides against one server; each has its own client and connection pool."""

    raw: Chain
    flowgpt: Chain
    client: openai.AsyncOpenAI
    provider: OpenAIProvider


def make_sides(base_url: str, workflow: Workflow) -> Sides:
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
    return Sides(
        raw=lambda i: raw_chain(client, i),
        flowgpt=lambda i: flowgpt_chain(engine, workflow, i),
        client=client,
        provider=provider,
    )


# -- the two modes ------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float  # seconds
    cpu: float  # this process's CPU seconds: the client (the server is another process)


async def run_sequential(chain: Chain, n: int) -> None:
    for i in range(n):
        await chain(i)


async def sequential_pair(raw: Chain, flow: Chain, n: int) -> tuple[Sample, Sample]:
    """``n`` chains on each side, one at a time, the sides alternating chain by chain
    (and which goes first). Returns each side's summed time."""
    wall, cpu = [0.0, 0.0], [0.0, 0.0]
    for i in range(n):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await (raw, flow)[k](i)
            wall[k] += time.perf_counter() - wall0
            cpu[k] += time.process_time() - cpu0
    return Sample(wall[0], cpu[0]), Sample(wall[1], cpu[1])


async def run_concurrent(chain: Chain, n: int, concurrency: int) -> Sample:
    # Fairness: flowgpt's `provider.concurrency` bounds the requests of ONE run (each run
    # has its own semaphore), so 500 concurrent engine.run() calls would have up to 500
    # requests in flight. Both sides therefore get the same outer limit: at most
    # `concurrency` chains in flight, and since a chain's calls are sequential, at most
    # `concurrency` requests in flight, on both sides. A per-call semaphore on the raw
    # side would be a looser schedule than flowgpt can express across runs today.
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with limit:
            return await chain(i)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return Sample(time.perf_counter() - wall0, time.process_time() - cpu0)


# -- the measurement ----------------------------------------------------------------------


@dataclass
class Row:
    mode: str
    chains: int
    raw: list[Sample] = field(default_factory=list)
    flowgpt: list[Sample] = field(default_factory=list)

    def ratios(self, kind: str = "wall") -> list[float]:
        return [
            getattr(f, kind) / getattr(r, kind) for r, f in zip(self.raw, self.flowgpt, strict=True)
        ]

    def ratio(self, kind: str = "wall") -> float:
        """The median of the per-repeat flowgpt / raw ratios (each pair ran together)."""
        return statistics.median(self.ratios(kind))

    @staticmethod
    def median(samples: Sequence[Sample]) -> float:
        return statistics.median(s.wall for s in samples)

    def brief(self) -> str:
        r, f = self.raw[-1], self.flowgpt[-1]
        return (
            f"{self.mode} raw {r.wall:.3f}s flowgpt {f.wall:.3f}s ratio {f.wall / r.wall:.3f} "
            f"(cpu {f.cpu / r.cpu:.3f})"
        )


async def _same_output(sides: Sides) -> None:
    for i in range(2):
        a, b = await sides.raw(i), await sides.flowgpt(i)
        if a != b:
            raise AssertionError(f"the two sides disagree on chain {i}: {a!r} != {b!r}")


async def measure(args: argparse.Namespace, urls: dict[str, str]) -> list[Row]:
    workflow = parse_workflow(WORKFLOW)
    sides = {mode: make_sides(url, workflow) for mode, url in urls.items()}
    n_seq, n_conc, width = args.chains_seq, args.chains_conc, args.concurrency
    try:
        # Warm-up: same output on both sides, tokenizer loaded, connection pools filled.
        for s in sides.values():
            await _same_output(s)
        if "sequential" in sides:
            s = sides["sequential"]
            await sequential_pair(s.raw, s.flowgpt, min(n_seq, 20))
        if "concurrent" in sides:
            s = sides["concurrent"]
            for chain in (s.raw, s.flowgpt):
                await run_concurrent(chain, min(n_conc, 2 * width), width)

        rows = {"sequential": Row("sequential", n_seq), "concurrent": Row("concurrent", n_conc)}
        for r in range(args.repeat):
            if "sequential" in sides:
                s, row = sides["sequential"], rows["sequential"]
                raw_sample, flow_sample = await sequential_pair(s.raw, s.flowgpt, n_seq)
                row.raw.append(raw_sample)
                row.flowgpt.append(flow_sample)
            if "concurrent" in sides:
                s, row = sides["concurrent"], rows["concurrent"]
                for k in (0, 1) if r % 2 == 0 else (1, 0):  # swap who goes first
                    sample = await run_concurrent((s.raw, s.flowgpt)[k], n_conc, width)
                    (row.raw, row.flowgpt)[k].append(sample)
            if args.verbose:
                done = "; ".join(rows[m].brief() for m in sides)
                print(f"repeat {r + 1}: {done}", file=sys.stderr)

        if args.profile:
            await _profile(args, sides)
        return [rows[m] for m in sides]
    finally:
        for s in sides.values():
            await s.client.close()
            await s.provider.aclose()


async def _profile(args: argparse.Namespace, sides: dict[str, Sides]) -> None:
    """cProfile one more, unmeasured, flowgpt run per mode into ``args.profile``.

    Profiling slows Python code several times over, so the file shows where the time
    goes rather than how much there is.
    """
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()  # the hook is per thread: it sees every task the loop runs
    try:
        if "sequential" in sides:
            await run_sequential(sides["sequential"].flowgpt, args.chains_seq)
        if "concurrent" in sides:
            await run_concurrent(sides["concurrent"].flowgpt, args.chains_conc, args.concurrency)
    finally:
        profiler.disable()
    profiler.dump_stats(args.profile)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(r"flowgpt[/\\]", 30)
    print(out.getvalue(), file=sys.stderr)


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
            raise RuntimeError(f"the fake server did not start (it printed {base_url!r})")
        yield base_url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the command --------------------------------------------------------------------------


def table(rows: Sequence[Row], args: argparse.Namespace) -> str:
    header = (
        f"{'mode':<11} {'chains':>6} {'raw s':>7} {'flowgpt s':>9} {'ratio':>6} "
        f"{'ratio range':>13} {'cpu ratio':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        ratios = row.ratios()
        spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
        lines.append(
            f"{row.mode:<11} {row.chains:>6} {Row.median(row.raw):>7.3f} "
            f"{Row.median(row.flowgpt):>9.3f} {row.ratio():>6.3f} {spread:>13} "
            f"{row.ratio('cpu'):>9.3f}"
        )
    lines += [
        f"3 calls per chain. sequential: no server latency, the sides alternate chain by "
        f"chain. concurrent: {args.latency_ms:g} ms server latency, {args.concurrency} chains "
        "in flight.",
        f"Seconds: medians of {args.repeat} repeats. ratio: flowgpt / raw, the median of the "
        "per-repeat ratios; cpu ratio: the same for this process's CPU time.",
        "Targets (issue 3): sequential <= 1.10, concurrent <= 1.05.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_chain",
        description="flowgpt vs raw AsyncOpenAI on a 3-step chain against a loopback server.",
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
    parser.add_argument("--profile", metavar="FILE", help="also cProfile flowgpt into FILE")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every repeat")
    args = parser.parse_args(argv)
    for name in ("chains_seq", "chains_conc", "concurrency", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.latency_ms < 0:
        parser.error("--latency-ms must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.pop("OPENAI_BASE_URL", None)  # both sides get their base_url explicitly
    latency = {"sequential": 0.0, "concurrent": args.latency_ms}
    modes = ["sequential", "concurrent"] if args.mode == "both" else [args.mode]
    with contextlib.ExitStack() as stack:
        urls = {mode: stack.enter_context(fake_server(latency[mode])) for mode in modes}
        rows = asyncio.run(measure(args, urls))
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
