"""flowgpt's overhead over a hand-written AsyncOpenAI chain (issue 3's benchmark).

The same 3-step chain (a -> b -> c, each prompt quoting the previous reply) runs two ways
against the loopback OpenAI-compatible server (tests/support/fake_openai.py), in one run:

* **raw**: one ``openai.AsyncOpenAI`` client and three ``chat.completions.create`` calls
  per chain, prompts built with f-strings, an ``asyncio.Semaphore(concurrency)`` around
  every call, as a minimal hand-written app would do it;
* **flowgpt**: the same chain as a workflow, run by one ``Engine()`` with no provider
  given, as the docs show: the workflow's ``provider:`` names the server (``base_url``)
  and the key's variable (``api_key_env``, the key in the environment) and its
  ``concurrency``; the engine makes the provider (one SDK client) on first use and every
  run shares it and its request limiter. It adds what flowgpt is for: input validation,
  templating, token counting before each call, cost, per-step results.

Both sides send the same requests (model, messages, settings) and get the same replies;
the warm-up checks that both produce the same final text.

flowgpt's provider calls ``chat.completions.create()`` too (the SDK's public API, nothing
else), so the ratio is flowgpt's own work on top of the very calls an app makes. Two timed
modes:

* **sequential**: ``--chains-seq`` chains (default 200) one after another, no server
  latency. This shows flowgpt's CPU cost per step next to the SDK's own.
* **concurrent**: ``--chains-conc`` chains (default 500) started together with
  ``asyncio.gather``, ``--latency-ms`` (50) server latency per reply, at most
  ``--concurrency`` (50) requests in flight: the raw side's semaphore, flowgpt's
  ``provider.concurrency`` (shared by every run of the engine).

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
targets: sequential <= 1.10, concurrent <= 1.05; issue 14's, through ``Engine()``: both
<= 1.10.

**Instructions** (``--mode instructions``, not part of the default run). Seconds on a
shared machine vary by 10-20% between identical runs, so a 5% target is hard to see in
them. This mode runs each shape in turn: ``--instr-chains-seq`` (50) chains one after
another (no server latency), then ``--instr-chains-conc`` (100) chains with
``asyncio.gather`` (``--latency-ms`` server latency, ``--concurrency`` requests in flight).
For each shape, raw and flowgpt run at once, each in its own process under valgrind's
callgrind, counting only the measured chains (after a warm-up like the one above), and it
prints the client's instructions per call and their ratio: about the same on every run,
whatever the load. (Instructions are not time: memory stalls, e.g. in the garbage
collector, cost more than their count says.) It takes about 4 minutes on a 2-core VM,
about a minute of it per child process importing and warming up under callgrind.

Run it from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_chain
    .venv/bin/python -m tests.benchmarks.bench_chain --mode concurrent --repeat 9 -v
    .venv/bin/python -m tests.benchmarks.bench_chain --mode instructions

``--profile FILE`` runs flowgpt once more per mode under cProfile (this run is not
measured), writes the stats to FILE and prints the flowgpt functions that took longest.

``--breakdown`` says where a flowgpt chain's time goes inside real runs, in microseconds
per chain: after the measurement, ``--chains-seq`` more chains per side (unmeasured; the
sides alternate chain by chain, as in sequential mode) run with a clock around each part
of flowgpt's run (starting it, rendering, preflight, the provider call, pricing...) and
around the SDK's ``create()`` on both sides. cProfile slows Python code several times
over; these clocks cost about a microsecond each, and show that flowgpt's code runs
several times slower between two SDK calls than in a loop that stays in the CPU's caches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import hashlib
import inspect
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `flowgpt` importable from the checkout
    sys.path.insert(0, str(ROOT))

import openai  # noqa: E402  (the raw side uses the SDK directly, as an app would)
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam  # noqa: E402

from flowgpt import Engine, parse_workflow  # noqa: E402
from flowgpt.engine.run import Run  # noqa: E402  (--breakdown times its parts)
from flowgpt.providers.openai import OpenAIProvider  # noqa: E402
from flowgpt.spec.workflow import Workflow  # noqa: E402

MODEL = "gpt-4o-mini"
TEMPERATURE = 0.2
MAX_TOKENS = 300
MAX_RETRIES = 2
TIMEOUT_S = 60.0
SYSTEM = "You are a concise technical writer."
KEY_ENV = "FLOWGPT_BENCH_API_KEY"
KEY = "bench-not-a-real-key"
CALLS = 3  # per chain: a, b, c

# The workflow and raw_chain() below must stay the same chain: same messages, same
# settings. As a user writes it first, it has no `pricing:` section: the model is priced
# at OpenAI's list prices (genai-prices' calc_price, about 70 us a call) wherever the
# loopback server is. `--pricing workflow` adds a `pricing:` entry instead (flowgpt then
# multiplies the workflow's rates itself), which shows what calc_price costs.
WORKFLOW = f"""\
version: 1
name: bench-chain
defaults:
  model: {MODEL}
  temperature: {TEMPERATURE}
  max_tokens: {MAX_TOKENS}
provider:
  base_url: "BASE_URL"
  api_key_env: {KEY_ENV}
  timeout_s: {TIMEOUT_S:g}
  max_retries: {MAX_RETRIES}
  concurrency: CONCURRENCY
PRICINGinputs:
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


PRICES = {
    "openai": "",
    "workflow": f"pricing:\n  {MODEL}: {{input: 0.15, cached_input: 0.075, output: 0.60}}\n",
}


def workflow(base_url: str, concurrency: int = 50, pricing: str = "openai") -> Workflow:
    """The chain as a workflow whose ``provider:`` sends to ``base_url``; ``pricing``:
    "openai" (no ``pricing:`` section, OpenAI's list prices) or "workflow" (its own)."""
    text = WORKFLOW.replace("BASE_URL", base_url).replace("CONCURRENCY", str(concurrency))
    return parse_workflow(text.replace("PRICING", PRICES[pricing]))


def topic(i: int) -> str:
    return f"the history of topic number {i} in distributed systems"


# -- the two sides ------------------------------------------------------------------------


# How the raw side calls the SDK, as the tables name it.
RAW_CALL = "client.chat.completions.create()"


async def chat(client: openai.AsyncOpenAI, system: str, prompt: str) -> ChatCompletion:
    """One request, hand-written: ``chat.completions.create()``, as an app calls it."""
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": system},
        {"role": "user", "content": prompt},
    ]
    return await client.chat.completions.create(
        model=MODEL, messages=messages, temperature=TEMPERATURE, max_tokens=MAX_TOKENS
    )


async def _ask(client: openai.AsyncOpenAI, limit: asyncio.Semaphore, prompt: str) -> str:
    async with limit:  # at most `concurrency` requests in flight, as flowgpt's limiter
        completion = await chat(client, SYSTEM, prompt)
    return completion.choices[0].message.content or ""


async def raw_chain(client: openai.AsyncOpenAI, limit: asyncio.Semaphore, i: int) -> str:
    # Jinja drops a template's final newline, so the workflow's `prompt: |` blocks render
    # exactly like these f-strings.
    facts = await _ask(client, limit, f"List three key facts about {topic(i)}.")
    summary = await _ask(client, limit, f"Summarise these facts in one sentence:\n{facts}")
    return await _ask(client, limit, f"Write a headline for this summary:\n{summary}")


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
    engine: Engine

    async def aclose(self) -> None:
        await self.client.close()
        await self.engine.aclose()


def make_sides(base_url: str, concurrency: int = 50, pricing: str = "openai") -> Sides:
    os.environ[KEY_ENV] = KEY  # flowgpt reads the key from the environment, as users do
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url=base_url, timeout=TIMEOUT_S, max_retries=MAX_RETRIES
    )
    limit = asyncio.Semaphore(concurrency)
    chain = workflow(base_url, concurrency, pricing)
    engine = Engine()  # no provider: the workflow's `provider:` says where requests go
    return Sides(
        raw=lambda i: raw_chain(client, limit, i),
        flowgpt=lambda i: flowgpt_chain(engine, chain, i),
        client=client,
        engine=engine,
    )


# -- the two modes ------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float  # seconds
    cpu: float  # this process's CPU seconds: the client (the server is another process)


async def run_sequential(chain: Chain, n: int) -> list[str]:
    return [await chain(i) for i in range(n)]


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


async def gather_chains(chain: Chain, n: int) -> list[str]:
    # Every chain at once; each side holds its requests to `concurrency` in flight itself
    # (the raw side with its semaphore around each call, flowgpt with the engine's shared
    # limiter), as an app would write it.
    return await asyncio.gather(*(chain(i) for i in range(n)))


async def run_concurrent(chain: Chain, n: int) -> Sample:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await gather_chains(chain, n)
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
    sides = {mode: make_sides(url, args.concurrency, args.pricing) for mode, url in urls.items()}
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
                await run_concurrent(chain, min(n_conc, 2 * width))

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
                    sample = await run_concurrent((s.raw, s.flowgpt)[k], n_conc)
                    (row.raw, row.flowgpt)[k].append(sample)
            if args.verbose:
                done = "; ".join(rows[m].brief() for m in sides)
                print(f"repeat {r + 1}: {done}", file=sys.stderr)

        if args.profile:
            await _profile(args, sides)
        if args.breakdown and "sequential" in sides:
            print(await breakdown(sides["sequential"], args.chains_seq), file=sys.stderr)
        return [rows[m] for m in sides]
    finally:
        for s in sides.values():
            await s.aclose()


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
            await run_concurrent(sides["concurrent"].flowgpt, args.chains_conc)
    finally:
        profiler.disable()
    profiler.dump_stats(args.profile)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(r"flowgpt[/\\]", 30)
    print(out.getvalue(), file=sys.stderr)


# -- where the time goes (--breakdown) ----------------------------------------------------

# The parts of a flowgpt run that --breakdown times: (class, method, label).
PARTS: tuple[tuple[type, str, str], ...] = (
    (Engine, "run", "flowgpt: Engine.run, the whole chain"),
    (Engine, "start", "  Engine.start: inputs, provider, the run set up"),
    (Run, "messages_for", "  rendering the messages (Jinja's sandbox)"),
    (Run, "request_for", "  building the requests"),
    (Run, "preflight", "  preflight: prompt tokens counted, budget"),
    (OpenAIProvider, "complete", "  provider.complete()"),
    (Run, "cost", "  pricing each reply (cost_of)"),
    (Run, "price_note", "  the price note (where prices came from)"),
    (Run, "compute_outputs", "  the workflow's outputs"),
)
_SIDE: contextvars.ContextVar[str] = contextvars.ContextVar("bench_side", default="raw")


@contextlib.contextmanager
def _clocks(spent: dict[str, int]) -> Iterator[None]:
    """A clock around each part in PARTS and around the SDK's create() (per side, told
    apart by the task's context); nanoseconds are added to ``spent``."""
    from openai.resources.chat.completions import AsyncCompletions

    def clocked(label: str, func: Any) -> Any:
        if inspect.iscoroutinefunction(func):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter_ns()
                try:
                    return await func(*args, **kwargs)
                finally:
                    spent[label] = spent.get(label, 0) + time.perf_counter_ns() - started

            return timed_async

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return func(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0) + time.perf_counter_ns() - started

        return timed

    create = AsyncCompletions.create

    async def sdk_create(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter_ns()
        try:
            return await create(self, *args, **kwargs)
        finally:
            label = f"{_SIDE.get()}: the SDK's create() calls"
            spent[label] = spent.get(label, 0) + time.perf_counter_ns() - started

    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in PARTS]
    try:
        for owner, name, label in PARTS:
            setattr(owner, name, clocked(label, owner.__dict__[name]))
        AsyncCompletions.create = sdk_create  # type: ignore[method-assign]
        yield
    finally:
        AsyncCompletions.create = create  # type: ignore[method-assign]
        for owner, name, original in originals:
            setattr(owner, name, original)


async def breakdown(sides: Sides, n: int) -> str:
    """``n`` more chains per side, unmeasured, with clocks on (see ``--breakdown``);
    returns the table of microseconds per chain."""
    spent: dict[str, int] = {}
    raw_chain = "raw: the whole chain"

    async def flowgpt(i: int) -> str:
        _SIDE.set("flowgpt")  # in this chain's own task: the raw side's stays "raw"
        return await sides.flowgpt(i)

    with _clocks(spent):
        for i in range(n):
            started = time.perf_counter_ns()
            await sides.raw(i)
            spent[raw_chain] = spent.get(raw_chain, 0) + time.perf_counter_ns() - started
            await asyncio.ensure_future(flowgpt(i))  # Engine.run's clock times this side

    def us(label: str) -> float:
        return spent.get(label, 0) / n / 1000

    rows = [(label, us(label)) for label in (raw_chain, "raw: the SDK's create() calls")]
    for _, name, label in PARTS:
        rows.append((label, us(label)))
        if name == "complete":
            rows.append(("    the SDK's create() calls", us("flowgpt: the SDK's create() calls")))
    width = max(len(label) for label, _ in rows)
    lines = [f"{'where a chain spends its time':<{width}} {'us/chain':>9}", "-" * (width + 10)]
    lines += [f"{label:<{width}} {value:>9.1f}" for label, value in rows]
    extra = us(PARTS[0][2]) - us(raw_chain)
    lines.append(
        f"flowgpt - raw: {extra:.1f} us per chain ({CALLS} calls; {n} chains per side, "
        "sides alternating; clocks cost about 1 us each)"
    )
    return "\n".join(lines)


# -- instructions -------------------------------------------------------------------------

SHAPES = ("sequential", "concurrent")


@dataclass
class Instructions:
    shape: str
    chains: int
    raw: int  # instructions executed by the measured chains
    flowgpt: int

    @property
    def calls(self) -> int:
        return self.chains * CALLS


def _instr_chains(args: argparse.Namespace, shape: str) -> int:
    n: int = args.instr_chains_conc if shape == "concurrent" else args.instr_chains_seq
    return n


def _instructions_child(args: argparse.Namespace) -> dict[str, Any]:
    """One side's chains of one shape, inside ``operator.call`` so that callgrind counts
    only them."""
    import operator

    side, shape = args.instructions_child, args.instructions_shape
    n, width = _instr_chains(args, shape), args.concurrency
    loop = asyncio.new_event_loop()
    sides = make_sides(args.base_url, width, args.pricing)
    chain = sides.raw if side == "raw" else sides.flowgpt

    def run(k: int) -> Awaitable[list[str]]:
        if shape == "concurrent":
            return gather_chains(chain, k)
        return run_sequential(chain, k)

    try:
        # Warm-up, as in measure(): same output on both sides, tokenizer loaded,
        # connection pool filled.
        loop.run_until_complete(_same_output(sides))
        loop.run_until_complete(run(min(n, 2 * width if shape == "concurrent" else 20)))
        if sys.version_info < (3, 11):  # checked by the parent; operator.call is 3.11+
            raise SystemExit("operator.call needs Python 3.11+")
        # --toggle-collect=_operator_call: the C function behind operator.call.
        headlines = operator.call(loop.run_until_complete, run(n))
        text = json.dumps(headlines, ensure_ascii=False).encode()
        return {
            "chains": sum(bool(h) for h in headlines),  # a headline per chain
            "digest": hashlib.sha256(text).hexdigest(),  # the same on both sides
        }
    finally:
        loop.run_until_complete(sides.aclose())
        loop.close()


def callgrind(commands: dict[str, list[str]], tmp: Path) -> dict[str, tuple[int, Any]]:
    """Runs the commands at once, each in its own process under callgrind, counting only
    what runs inside ``operator.call``. Returns, per name, the instructions counted and
    the JSON document on the command's last stdout line."""
    valgrind = shutil.which("valgrind")
    if valgrind is None or sys.version_info < (3, 11):
        raise SystemExit("--mode instructions needs valgrind and Python 3.11+ (operator.call)")
    procs = {}
    for name, command in commands.items():
        valgrind_args = [
            valgrind,
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=_operator_call",
            f"--callgrind-out-file={tmp / f'callgrind.{name}'}",
        ]
        procs[name] = subprocess.Popen(
            [*valgrind_args, *command],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"the {name} callgrind run failed:\n{err[-3000:]}")
            doc = json.loads(out.strip().splitlines()[-1])
            text = (tmp / f"callgrind.{name}").read_text(encoding="utf-8", errors="replace")
            found = re.search(r"^(?:totals|summary):\s*(\d+)", text, re.MULTILINE)
            count = int(found.group(1)) if found else 0
            if not count:
                raise RuntimeError(f"callgrind counted nothing for {name} (no _operator_call?)")
            results[name] = (count, doc)
    finally:  # one failed (or Ctrl-C): do not leave the others running for minutes
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def measure_instructions(
    args: argparse.Namespace, shape: str, base_url: str, tmp: Path
) -> Instructions:
    """Both sides of one shape at once, each in its own process under callgrind
    (instructions do not depend on what else the machine runs, unlike seconds)."""
    n = _instr_chains(args, shape)
    commands = {
        side: [
            *(sys.executable, "-m", "tests.benchmarks.bench_chain"),
            *("--instructions-child", side, "--instructions-shape", shape),
            *("--base-url", base_url, "--concurrency", str(args.concurrency)),
            *("--pricing", args.pricing),
            *("--instr-chains-seq", str(args.instr_chains_seq)),
            *("--instr-chains-conc", str(args.instr_chains_conc)),
        ]
        for side in ("raw", "flowgpt")
    }
    started = time.perf_counter()
    results = callgrind(commands, tmp)
    for side, (_, doc) in results.items():
        if doc["chains"] != n:
            raise AssertionError(f"the {side} {shape} run made {doc['chains']} of {n} headlines")
    (raw, raw_doc), (flow, flow_doc) = results["raw"], results["flowgpt"]
    if raw_doc["digest"] != flow_doc["digest"]:
        raise AssertionError(f"the two sides wrote different headlines in the {shape} run")
    if args.verbose:
        seconds = time.perf_counter() - started
        print(
            f"instructions {shape}: raw {raw:,} flowgpt {flow:,} ({seconds:.0f} s)", file=sys.stderr
        )
    return Instructions(shape, n, raw, flow)


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
        f"raw: {RAW_CALL}. 3 calls per chain. sequential: no server "
        "latency, the sides alternate chain by "
        f"chain. concurrent: {args.latency_ms:g} ms server latency, all chains at once, "
        f"{args.concurrency} requests in flight. Prices: "
        + (
            "OpenAI's list prices (no pricing: section; genai-prices' calc_price)."
            if args.pricing == "openai"
            else "the workflow's pricing: entry."
        ),
        f"Seconds: medians of {args.repeat} repeats. ratio: flowgpt / raw, the median of the "
        "per-repeat ratios; cpu ratio: the same for this process's CPU time.",
        "Targets: sequential <= 1.10 (issues 3, 14), concurrent <= 1.05 (issue 3; issue 14 "
        "through Engine() with no provider: <= 1.10).",
    ]
    return "\n".join(lines)


def instructions_table(counts: Sequence[Instructions], args: argparse.Namespace) -> str:
    header = (
        f"{'instructions':<12} {'chains':>6} {'raw /call':>10} {'flowgpt /call':>13} "
        f"{'extra /call':>11} {'ratio':>6}"
    )
    lines = [header, "-" * len(header)]
    for i in counts:
        raw, flow = i.raw / i.calls, i.flowgpt / i.calls
        lines.append(
            f"{i.shape:<12} {i.chains:>6} {raw:>10,.0f} {flow:>13,.0f} {flow - raw:>11,.0f} "
            f"{i.flowgpt / i.raw:>6.3f}"
        )
    lines += [
        f"Instructions the client executed for the measured chains, per call ({CALLS} calls "
        "per chain; valgrind callgrind, client only: the server is another process; both "
        "sides at once, each in its own process).",
        f"raw: {RAW_CALL}. sequential: no server latency. concurrent: "
        f"{args.latency_ms:g} ms server latency, {args.concurrency} requests in flight. "
        "ratio: flowgpt / raw.",
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
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per mode")
    parser.add_argument(
        "--mode",
        choices=("both", "sequential", "concurrent", "instructions"),
        default="both",
        help="what to run (both: sequential and concurrent; instructions: count each side's "
        "instructions under valgrind, which machine load does not change)",
    )
    parser.add_argument(
        "--instr-chains-seq",
        type=int,
        default=50,
        help="sequential chains per side in --mode instructions",
    )
    parser.add_argument(
        "--instr-chains-conc",
        type=int,
        default=100,
        help="concurrent chains per side in --mode instructions",
    )
    parser.add_argument(
        "--pricing",
        choices=tuple(PRICES),
        default="openai",
        help="how the workflow prices its model: openai (no pricing: section, OpenAI's list "
        "prices through genai-prices, as a user writes it first; the default) or workflow "
        "(its own pricing: entry)",
    )
    parser.add_argument("--profile", metavar="FILE", help="also cProfile flowgpt into FILE")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="then time each part of flowgpt's run inside real sequential runs (us per chain)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every repeat")
    # --mode instructions calls this module again, one process per side under callgrind.
    parser.add_argument("--instructions-child", choices=("raw", "flowgpt"), help=argparse.SUPPRESS)
    parser.add_argument("--instructions-shape", choices=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = ("chains_seq", "chains_conc", "concurrency", "repeat")
    for name in (*names, "instr_chains_seq", "instr_chains_conc"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.latency_ms < 0:
        parser.error("--latency-ms must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.instructions_child:
        print(json.dumps(_instructions_child(args)))
        return 0
    os.environ.pop("OPENAI_BASE_URL", None)  # both sides get their base_url explicitly
    latency = {"sequential": 0.0, "concurrent": args.latency_ms}
    if args.mode == "instructions":
        counts = []
        with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
            for shape in SHAPES:  # one after the other: each pair has both cores
                with fake_server(latency[shape]) as base_url:
                    counts.append(measure_instructions(args, shape, base_url, Path(tmp)))
        print(instructions_table(counts, args))
        return 0
    modes = ["sequential", "concurrent"] if args.mode == "both" else [args.mode]
    with contextlib.ExitStack() as stack:
        urls = {mode: stack.enter_context(fake_server(latency[mode])) for mode in modes}
        rows = asyncio.run(measure(args, urls))
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
