"""Batch throughput and memory (issue 6's benchmark).

**Throughput.** ``--rows`` rows (default 1,000), each a ``--steps``-step chain (3: every
prompt quotes the previous reply), run two ways against the loopback OpenAI-compatible
server (tests/support/fake_openai.py, its own process, ``--latency-ms`` 50 per reply), in
one run:

* **raw**: a careful hand-written script: one ``openai.AsyncOpenAI`` client, a pool of
  ``--concurrency`` (50) workers taking rows one at a time (so at most 50 rows in flight)
  and an ``asyncio.Semaphore(50)`` around every ``create()``; prompts are f-strings; each
  row's result is written as a JSON line (flushed per row) the moment it is done;
* **flowgpt**: what ``flowgpt batch`` does: ``engine.run_batch(workflow, rows,
  concurrency=50)`` with one ``OpenAIProvider`` (one SDK client), each row's result
  written with ``BatchOutput.write`` (a JSON line, flushed per row).

Both sides send the same requests (model, messages, settings, max_retries, timeout) and
get the same replies; the warm-up checks that both produce the same final text. Both call
``chat.completions.create()`` (flowgpt's provider uses only the SDK's public API). Each
repeat runs the whole batch on both sides, one after the other, swapping which goes first.
``ratio`` is flowgpt / raw: the median of the per-repeat ratios, with their range;
``cpu ratio`` is the same for this process's CPU time (the client alone: the server is
another process). The ideal wall time is rows x steps x latency / concurrency (3 s); on a
small machine the client's CPU is the limit instead (the SDK alone spends about 3.5 ms of
CPU per request on a 2-core VM, so both sides take ~11 s there).

**Memory.** The peak RSS (``ru_maxrss``) of a batch of ``--mem-rows`` 1,000 and 10,000
rows, each in a fresh Python process so the peaks do not mix, through the same code path
as ``flowgpt batch``: rows read lazily with ``read_rows`` from a generated ``.jsonl``,
``run_batch``, ``BatchOutput.write``. The requests go over HTTP through the real SDK to a
fake server process with no latency that records nothing, so everything the client keeps
per request (SDK, httpx, flowgpt) is in the figure, and the server's memory is not.
(A constant-reply provider inside the process would be faster but would leave the SDK and
its connection pool out; MockProvider records every request by design.)

**Instructions** (``--mode instructions``, not part of the default run). Seconds on a
shared machine vary by 10-20% from one batch to the next even with nothing else running,
so a 5% target is hard to see in them. This mode runs ``--instr-rows`` (150) rows of each
side at once, each in its own process under valgrind's callgrind, counting only the
measured batch, and prints the client's instructions per call and their ratio: the same
on every run to a fraction of a percent, whatever the load. (Instructions are not time:
memory stalls, e.g. in the garbage collector, cost more than their count says.)

Issue 6's targets: throughput ratio <= 1.05; peak RSS at 10,000 rows within 10% of
1,000 rows. Run it from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_batch
    .venv/bin/python -m tests.benchmarks.bench_batch --mode throughput --repeat 5 -v
    .venv/bin/python -m tests.benchmarks.bench_batch --mode instructions

``--profile FILE`` runs the flowgpt side once more under cProfile (not measured), writes
the stats to FILE and prints the flowgpt functions that took longest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `flowgpt` importable from the checkout
    sys.path.insert(0, str(ROOT))

import openai  # noqa: E402  (the raw side uses the SDK directly, as a script would)

from flowgpt import Engine, parse_workflow  # noqa: E402
from flowgpt.engine.data import BatchOutput, read_rows  # noqa: E402
from flowgpt.providers.openai import OpenAIProvider  # noqa: E402
from flowgpt.spec.workflow import Workflow  # noqa: E402
from tests.benchmarks.bench_chain import (  # noqa: E402  (one request, one model: as bench_chain)
    KEY,
    KEY_ENV,
    MAX_RETRIES,
    MAX_TOKENS,
    MODEL,
    RAW_CALL,
    SYSTEM,
    TEMPERATURE,
    TIMEOUT_S,
    callgrind,
    chat,
    fake_server,
)

FIRST = "List three key facts about {}."
NEXT = "Summarise this in one sentence:\n{}"


def workflow_text(steps: int, concurrency: int) -> str:
    """The chain as a workflow; ``raw_row`` below must send exactly the same messages.

    It has its own ``pricing:`` entry, as when issues 3 and 6 were measured. Without one
    the model is priced at OpenAI's list prices through genai-prices' ``calc_price``
    (about 70 us a call), as bench_chain measures by default.
    """
    lines = [
        "version: 1",
        "name: bench-batch",
        "defaults:",
        f"  model: {MODEL}",
        f"  temperature: {TEMPERATURE}",
        f"  max_tokens: {MAX_TOKENS}",
        "provider:",
        f"  api_key_env: {KEY_ENV}",
        f"  timeout_s: {TIMEOUT_S:g}",
        f"  max_retries: {MAX_RETRIES}",
        f"  concurrency: {concurrency}",
        "pricing:",
        f"  {MODEL}: {{input: 0.15, cached_input: 0.075, output: 0.60}}",
        "inputs:",
        "  topic: {type: string}",
        "steps:",
    ]
    for k in range(steps):
        lines += [f"  - id: s{k}", f"    system: {SYSTEM}"]
        if k == 0:
            lines.append(f"    prompt: {FIRST.format('{{ inputs.topic }}')}")
        else:
            # A `|` block: Jinja drops its final newline, so it renders like NEXT.
            quoted = NEXT.format(f"{{{{ steps.s{k - 1}.output }}}}")
            lines += ["    prompt: |", *(f"      {line}" for line in quoted.split("\n"))]
    lines += ["outputs:", f'  final: "{{{{ steps.s{steps - 1}.output }}}}"']
    return "\n".join(lines) + "\n"


def topic(i: int) -> str:
    return f"the history of topic number {i} in distributed systems"


def rows(n: int) -> Iterator[dict[str, Any]]:
    return ({"topic": topic(i)} for i in range(n))


def _ok_rows(path: Path) -> int:
    """Rows written with status ok (a failed row costs less: it must not count)."""
    with open(path, encoding="utf-8") as f:
        return sum(json.loads(line)["status"] == "ok" for line in f)


# -- the two sides ------------------------------------------------------------------------


@dataclass
class Raw:
    """The hand-written script: one client, a worker pool, a semaphore per call."""

    client: openai.AsyncOpenAI
    steps: int
    concurrency: int

    async def ask(self, limit: asyncio.Semaphore, prompt: str) -> tuple[str, Any]:
        async with limit:
            completion = await chat(self.client, SYSTEM, prompt)
        return completion.choices[0].message.content or "", completion.usage

    async def row(self, limit: asyncio.Semaphore, inputs: dict[str, Any]) -> dict[str, Any]:
        text, prompt_tokens, completion_tokens = "", 0, 0
        for k in range(self.steps):
            prompt = FIRST.format(inputs["topic"]) if k == 0 else NEXT.format(text)
            text, usage = await self.ask(limit, prompt)
            if usage is not None:
                prompt_tokens += usage.prompt_tokens
                completion_tokens += usage.completion_tokens
        return {
            "outputs": {"final": text},
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }

    async def batch(self, data: Iterator[dict[str, Any]], out: TextIO) -> None:
        limit = asyncio.Semaphore(self.concurrency)
        numbered = enumerate(data, start=1)

        async def worker() -> None:
            for number, inputs in numbered:  # shared: each row is taken by one worker
                started = time.perf_counter()
                doc = await self.row(limit, inputs)
                line = {"row": number, "status": "ok", "inputs": inputs, **doc}
                line["latency_s"] = round(time.perf_counter() - started, 4)
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                out.flush()

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))


async def flowgpt_batch(
    engine: Engine, workflow: Workflow, data: Any, output: BatchOutput, concurrency: int
) -> None:
    """What `flowgpt batch` does with each row (flowgpt/cli/_batch.py's `batch`)."""
    async for result in engine.run_batch(workflow, data, concurrency=concurrency):
        output.write(result)


def make_provider(base_url: str) -> OpenAIProvider:
    return OpenAIProvider(
        base_url=base_url,
        api_key_env=KEY_ENV,
        timeout_s=TIMEOUT_S,
        max_retries=MAX_RETRIES,
        environ={KEY_ENV: KEY},
    )


# -- throughput ---------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float  # seconds
    cpu: float  # this process's CPU seconds: the client (the server is another process)


@dataclass
class Throughput:
    rows: int
    raw: list[Sample] = field(default_factory=list)
    flowgpt: list[Sample] = field(default_factory=list)

    def ratios(self, kind: str = "wall") -> list[float]:
        return [
            getattr(f, kind) / getattr(r, kind) for r, f in zip(self.raw, self.flowgpt, strict=True)
        ]

    def brief(self) -> str:
        r, f = self.raw[-1], self.flowgpt[-1]
        return (
            f"raw {r.wall:.3f}s (cpu {r.cpu:.3f}s) flowgpt {f.wall:.3f}s (cpu {f.cpu:.3f}s) "
            f"ratio {f.wall / r.wall:.3f} (cpu {f.cpu / r.cpu:.3f})"
        )


async def _timed(run: Callable[[], Awaitable[None]]) -> Sample:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await run()
    return Sample(time.perf_counter() - wall0, time.process_time() - cpu0)


@dataclass
class Batches:
    """Both sides against one server, each with its own client; each batch writes a fresh
    output file in ``tmp``."""

    tmp: Path
    raw: Raw
    engine: Engine
    provider: OpenAIProvider
    workflow: Workflow
    concurrency: int

    @classmethod
    def make(cls, base_url: str, tmp: Path, steps: int, concurrency: int) -> Batches:
        client = openai.AsyncOpenAI(
            api_key=KEY, base_url=base_url, timeout=TIMEOUT_S, max_retries=MAX_RETRIES
        )
        provider = make_provider(base_url)
        workflow = parse_workflow(workflow_text(steps, concurrency))
        raw = Raw(client, steps, concurrency)
        return cls(tmp, raw, Engine(provider=provider), provider, workflow, concurrency)

    async def run_raw(self, n: int) -> None:
        with open(self.tmp / "raw.jsonl", "w", encoding="utf-8") as out:
            await self.raw.batch(rows(n), out)

    async def run_flowgpt(self, n: int) -> None:
        out = self.tmp / "flowgpt.jsonl"
        out.unlink(missing_ok=True)  # a fresh file: nothing to resume
        with BatchOutput(out, self.workflow.spec.name) as output:
            await flowgpt_batch(self.engine, self.workflow, rows(n), output, self.concurrency)

    def _outputs(self, side: str) -> list[tuple[int, Any]]:
        with open(self.tmp / f"{side}.jsonl", encoding="utf-8") as f:
            return sorted((d["row"], d["outputs"]) for d in map(json.loads, f))

    def written(self, side: str) -> int:
        """The rows of the last batch written with status ok."""
        return _ok_rows(self.tmp / f"{side}.jsonl")

    async def warm_up(self, n: int) -> None:
        """The same final text on both sides; tokenizer, caches and connection pools
        filled."""
        await self.run_raw(2)
        await self.run_flowgpt(2)
        a, b = (self._outputs(side) for side in ("raw", "flowgpt"))
        if a != b:
            raise AssertionError(f"the two sides disagree: {a} != {b}")
        await self.run_raw(min(n, 2 * self.concurrency))
        await self.run_flowgpt(min(n, 2 * self.concurrency))

    async def close(self) -> None:
        await self.raw.client.close()
        await self.provider.aclose()


async def measure_throughput(args: argparse.Namespace, base_url: str, tmp: Path) -> Throughput:
    batches = Batches.make(base_url, tmp, args.steps, args.concurrency)
    try:
        await batches.warm_up(args.rows)
        result = Throughput(args.rows)
        sides = (lambda: batches.run_raw(args.rows), lambda: batches.run_flowgpt(args.rows))
        for r in range(args.repeat):
            for k in (0, 1) if r % 2 == 0 else (1, 0):  # swap who goes first
                sample = await _timed(sides[k])
                (result.raw, result.flowgpt)[k].append(sample)
                side = ("raw", "flowgpt")[k]
                if batches.written(side) != args.rows:
                    ok = batches.written(side)
                    raise AssertionError(f"{side}: {ok} of {args.rows} rows ok")
            if args.verbose:
                print(f"repeat {r + 1}: {result.brief()}", file=sys.stderr)
        if args.profile:
            await _profile(args, lambda: batches.run_flowgpt(args.rows))
        return result
    finally:
        await batches.close()


async def _profile(args: argparse.Namespace, run: Callable[[], Awaitable[None]]) -> None:
    """cProfile one more, unmeasured, flowgpt batch into ``args.profile``."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()  # the hook is per thread: it sees every task the loop runs
    try:
        await run()
    finally:
        profiler.disable()
    profiler.dump_stats(args.profile)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(r"flowgpt[/\\]", 30)
    print(out.getvalue(), file=sys.stderr)


# -- instructions -------------------------------------------------------------------------


@dataclass
class Instructions:
    rows: int
    calls: int
    raw: int  # instructions executed by the measured batch
    flowgpt: int


def _instructions_child(args: argparse.Namespace) -> dict[str, Any]:
    """One side's batch, inside ``operator.call`` so that callgrind counts only it."""
    import operator

    side = args.instructions_child
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    loop = asyncio.new_event_loop()
    batches = Batches.make(args.base_url, tmp, args.steps, args.concurrency)
    run = batches.run_raw if side == "raw" else batches.run_flowgpt
    try:
        loop.run_until_complete(batches.warm_up(args.rows))
        # --toggle-collect=_operator_call: the C function behind operator.call.
        operator.call(loop.run_until_complete, run(args.rows))
        return {"rows": batches.written(side)}
    finally:
        loop.run_until_complete(batches.close())
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)


def measure_instructions(args: argparse.Namespace, base_url: str, tmp: Path) -> Instructions:
    """Both sides at once, each in its own process under callgrind (instructions do not
    depend on what else the machine runs, unlike seconds)."""
    n = args.instr_rows
    commands = {
        side: [
            *(sys.executable, "-m", "tests.benchmarks.bench_batch"),
            *("--instructions-child", side, "--base-url", base_url, "--rows", str(n)),
            *("--steps", str(args.steps), "--concurrency", str(args.concurrency)),
        ]
        for side in ("raw", "flowgpt")
    }
    results = callgrind(commands, tmp)
    for side, (_, doc) in results.items():
        if doc["rows"] != n:
            raise AssertionError(f"the {side} callgrind run did not run {n} rows ok")
    return Instructions(n, n * args.steps, results["raw"][0], results["flowgpt"][0])


# -- memory -------------------------------------------------------------------------------


def _rss_kb() -> int:
    """This process's resident set now, in KiB (Linux); 0 where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


def _peak_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


async def _memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """One batch from a data file, as `flowgpt batch` runs it; in its own process."""
    workflow = parse_workflow(workflow_text(args.steps, args.concurrency))
    provider = make_provider(args.base_url)
    engine = Engine(provider=provider)
    out = Path(args.out)
    before = _rss_kb()  # after the imports
    started = time.perf_counter()
    try:
        with BatchOutput(out, workflow.spec.name) as output:
            await flowgpt_batch(engine, workflow, read_rows(args.data), output, args.concurrency)
    finally:
        await provider.aclose()
    seconds = time.perf_counter() - started
    written = _ok_rows(out)
    return {
        "rows": written,
        "peak_kb": _peak_kb(),
        "start_kb": before,
        "seconds": seconds,
    }


@dataclass
class Memory:
    rows: int
    peak_kb: int
    start_kb: int
    seconds: float


def measure_memory(args: argparse.Namespace, base_url: str, tmp: Path) -> list[Memory]:
    results = []
    for n in args.mem_rows:
        data, out = tmp / f"rows-{n}.jsonl", tmp / f"out-{n}.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            for row in rows(n):
                f.write(json.dumps(row) + "\n")
        out.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "tests.benchmarks.bench_batch",
            *("--memory-child", "--base-url", base_url, "--data", str(data), "--out", str(out)),
            *("--steps", str(args.steps), "--concurrency", str(args.concurrency)),
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the {n}-row memory run failed:\n{done.stderr}")
        doc = json.loads(done.stdout.strip().splitlines()[-1])
        if doc["rows"] != n:
            raise AssertionError(f"the {n}-row memory run had {doc['rows']} rows ok")
        results.append(Memory(n, doc["peak_kb"], doc["start_kb"], doc["seconds"]))
        if args.verbose:
            print(f"memory {n} rows: {doc}", file=sys.stderr)
    return results


# -- the command --------------------------------------------------------------------------


def _mb(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def report(
    args: argparse.Namespace,
    throughput: Throughput | None,
    memory: list[Memory] | None,
    instructions: Instructions | None = None,
) -> str:
    lines: list[str] = []
    if instructions is not None:
        i = instructions
        header = (
            f"{'instructions':<12} {'rows':>6} {'raw /call':>10} {'flowgpt /call':>13} "
            f"{'extra /call':>11} {'ratio':>6}"
        )
        raw, flow = i.raw / i.calls, i.flowgpt / i.calls
        lines += [
            header,
            "-" * len(header),
            f"{'batch':<12} {i.rows:>6} {raw:>10,.0f} {flow:>13,.0f} {flow - raw:>11,.0f} "
            f"{i.flowgpt / i.raw:>6.3f}",
            "Instructions the client executed for the measured batch (valgrind callgrind, "
            f"both sides at once, each in its own process). raw: {RAW_CALL}.",
            "",
        ]
    if throughput is not None:
        ratios, cpu = throughput.ratios(), throughput.ratios("cpu")
        header = (
            f"{'throughput':<10} {'rows':>6} {'raw s':>7} {'flowgpt s':>9} {'ratio':>6} "
            f"{'ratio range':>13} {'cpu ratio':>9} {'cpu range':>13}"
        )
        lines += [
            header,
            "-" * len(header),
            f"{'batch':<10} {throughput.rows:>6} "
            f"{statistics.median(s.wall for s in throughput.raw):>7.3f} "
            f"{statistics.median(s.wall for s in throughput.flowgpt):>9.3f} "
            f"{statistics.median(ratios):>6.3f} "
            f"{f'{min(ratios):.3f}-{max(ratios):.3f}':>13} {statistics.median(cpu):>9.3f} "
            f"{f'{min(cpu):.3f}-{max(cpu):.3f}':>13}",
            f"raw: {RAW_CALL}. {args.steps} calls per row, "
            f"{args.latency_ms:g} ms server latency, "
            f"{args.concurrency} rows in flight; ideal "
            f"{args.rows * args.steps * args.latency_ms / 1000 / args.concurrency:.2f} s.",
            f"Seconds: medians of {args.repeat} repeats. ratio: flowgpt / raw, the median of "
            "the per-repeat ratios (range: min-max); cpu ratio: the same for this process's "
            "CPU time.",
        ]
    if memory:
        if lines:
            lines.append("")
        header = (
            f"{'memory':<10} {'rows':>6} {'peak MB':>8} {'start MB':>8} "
            f"{'seconds':>8} {'peak ratio':>10}"
        )
        lines += [header, "-" * len(header)]
        first = memory[0].peak_kb
        for m in memory:
            lines.append(
                f"{'batch':<10} {m.rows:>6} {_mb(m.peak_kb):>8} {_mb(m.start_kb):>8} "
                f"{m.seconds:>8.1f} {m.peak_kb / first:>10.3f}"
            )
        if len(memory) > 1:
            grown = (memory[-1].peak_kb - first) * 1024
            per_row = grown / max(memory[-1].rows - memory[0].rows, 1)
            lines.append(
                f"Peak RSS (ru_maxrss) of a fresh process per size; start: after the imports. "
                f"Growth {grown / 1e6:+.1f} MB, {per_row:+.0f} bytes per extra row."
            )
    lines.append(
        "Targets (issue 6): throughput ratio <= 1.05; peak RSS at the largest size within "
        "10% of the smallest (peak ratio <= 1.10)."
    )
    return "\n".join(lines)


def _row_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("give row counts like 1000,10000") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("row counts must be at least 1")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_batch",
        description="flowgpt batch vs a hand-written AsyncOpenAI script; batch memory.",
    )
    parser.add_argument("--rows", type=int, default=1000, help="rows in the throughput batch")
    parser.add_argument("--steps", type=int, default=3, help="chained calls per row")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server latency")
    parser.add_argument("--concurrency", type=int, default=50, help="rows in flight")
    parser.add_argument("--repeat", type=int, default=3, help="throughput measurements")
    parser.add_argument(
        "--mem-rows",
        type=_row_counts,
        default=[1000, 10000],
        metavar="N,M",
        help="batch sizes whose peak RSS is compared (default 1000,10000)",
    )
    parser.add_argument(
        "--mode",
        choices=("both", "throughput", "memory", "instructions"),
        default="both",
        help="what to run (both: throughput and memory; instructions: count each side's "
        "instructions under valgrind, which machine load does not change)",
    )
    parser.add_argument(
        "--instr-rows", type=int, default=150, help="rows per side in --mode instructions"
    )
    parser.add_argument("--profile", metavar="FILE", help="also cProfile flowgpt into FILE")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every repeat")
    # The memory runs call this module again, one process per size.
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--instructions-child", choices=("raw", "flowgpt"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("rows", "steps", "concurrency", "repeat", "instr_rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.latency_ms < 0:
        parser.error("--latency-ms must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(asyncio.run(_memory_child(args))))
        return 0
    if args.instructions_child:
        print(json.dumps(_instructions_child(args)))
        return 0
    os.environ.pop("OPENAI_BASE_URL", None)  # both sides get their base_url explicitly
    throughput: Throughput | None = None
    memory: list[Memory] | None = None
    instructions: Instructions | None = None
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmpdir:
        tmp = Path(tmpdir)
        if args.mode == "instructions":
            with fake_server(args.latency_ms) as base_url:
                instructions = measure_instructions(args, base_url, tmp)
        if args.mode in ("both", "throughput"):
            with fake_server(args.latency_ms) as base_url:
                throughput = asyncio.run(measure_throughput(args, base_url, tmp))
        if args.mode in ("both", "memory"):
            with fake_server(0.0) as base_url:  # records nothing: its memory stays flat
                memory = measure_memory(args, base_url, tmp)
    print(report(args, throughput, memory, instructions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
