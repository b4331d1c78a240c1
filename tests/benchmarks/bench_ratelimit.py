"""A batch against an account's rate limit (issue 14's benchmark).

``--rows`` (300) one-step rows against the loopback OpenAI-compatible server
(tests/support/fake_openai.py, its own process) emulating an account limit of ``--tpm``
(120,000) tokens and ``--rpm`` (3,000) requests per minute per model, enforced over
``--window-s`` (1 s) windows the way OpenAI's limiter words and signals it: a 429 at once
("... on tokens per min (TPM): Limit 120000, Used ..., Requested .... Please try again in
...") with ``x-ratelimit-*`` headers and no ``retry-after``; every reply carries
``x-ratelimit-limit/remaining/reset-*``. Replies take ``--latency-ms`` (300); at most
``--concurrency`` (50) requests are in flight. A request counts max(max_tokens,
characters / 4) tokens (OpenAI's estimate); each row's has ``max_tokens`` ``--max-tokens``
(100), so the batch needs 300 x 100 = 30,000 tokens: TPM is the limit that binds.

The clients, each against a fresh server (a fresh account):

* **raw, 2 retries**: ``openai.AsyncOpenAI`` (the SDK's default ``max_retries=2``), an
  ``asyncio.Semaphore(concurrency)`` around every ``create()``, all rows gathered: what a
  script does. A row whose retries run out fails.
* **raw, 10 retries**: the same with ``max_retries=10``.
* **flowgpt batch**: the ``flowgpt batch`` command (in this process, its modules imported
  beforehand, so a fresh process's import time is not counted), no flags: the
  workflow's ``provider:`` names the server, the key's variable and ``concurrency``.
  flowgpt learns the limits from the headers.
* **flowgpt batch --rpm/--tpm**: the same, with ``--rpm`` and ``--tpm`` at the account's
  limits.

For each: the wall time over ``ideal``, rows that ended ok, and the 429s the server sent.
``ideal`` is the least time the account allows: a client that spends the first window's
worth at once and then exactly the limit's rate, and waits for the last reply:
max(tokens past the first window / tokens per second, requests past the first window /
requests per second, rows x latency / concurrency) + latency.

Issue 14's targets: flowgpt with no flags: every row ok, wall <= 1.15 x ideal, 429s <= 10 %
of rows; with ``--rpm/--tpm`` at the account's limits: every row ok, wall <= 1.10 x ideal,
429s <= 2 % of rows. Run it from the repository root (about a minute and a half)::

    .venv/bin/python -m tests.benchmarks.bench_ratelimit
    .venv/bin/python -m tests.benchmarks.bench_ratelimit --clients flowgpt,flowgpt-limits -v
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `flowgpt` importable from the checkout
    sys.path.insert(0, str(ROOT))

import openai  # noqa: E402  (the raw side uses the SDK directly, as a script would)

from tests.support.fake_openai import _request_tokens  # noqa: E402  (the server's count)

MODEL = "gpt-4o-mini"
KEY_ENV = "FLOWGPT_BENCH_API_KEY"
KEY = "bench-not-a-real-key"
TIMEOUT_S = 60.0
CLIENTS = ("raw-2", "raw-10", "flowgpt", "flowgpt-limits")
LABELS = {
    "raw-2": "raw AsyncOpenAI, SDK's 2 retries",
    "raw-10": "raw AsyncOpenAI, 10 retries",
    "flowgpt": "flowgpt batch (no flags)",
    "flowgpt-limits": "flowgpt batch --rpm/--tpm at the limits",
}


PROMPT = "Write one short sentence about topic number {} of the history of distributed systems."


def prompt(i: int) -> str:
    return PROMPT.format(i)


def workflow_text(base_url: str, max_tokens: int, concurrency: int) -> str:
    """The one-step workflow; the raw clients send the same request."""
    step_prompt = PROMPT.format("{{ inputs.topic }}")
    return f"""\
version: 1
name: bench-ratelimit
defaults: {{model: {MODEL}, max_tokens: {max_tokens}}}
provider: {{base_url: "{base_url}", api_key_env: {KEY_ENV}, concurrency: {concurrency}}}
pricing:
  {MODEL}: {{input: 0.15, output: 0.60}}
inputs:
  topic: {{type: integer}}
steps:
  - id: answer
    prompt: "{step_prompt}"
"""


@dataclass
class Outcome:
    client: str
    wall: float
    ok: int
    served: int
    rate_limited: int
    note: str = ""


# -- the server ---------------------------------------------------------------------------


@contextlib.contextmanager
def limited_server(args: argparse.Namespace, counts: dict[str, int]) -> Iterator[str]:
    """tests/support/fake_openai.py with the account limit, in its own process; yields its
    base URL and, when it has stopped, fills ``counts`` (served, rate_limited)."""
    command = [sys.executable, "-m", "tests.support.fake_openai", "--port", "0"]
    command += ["--latency-ms", f"{args.latency_ms:g}", "--rpm", f"{args.rpm:g}"]
    command += ["--tpm", f"{args.tpm:g}", "--limit-window-s", f"{args.window_s:g}"]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        for name, pattern in (("served", r"served (\d+)"), ("rate_limited", r"limited (\d+)")):
            found = re.search(pattern, err or "")
            counts[name] = int(found.group(1)) if found else -1


# -- the clients --------------------------------------------------------------------------


async def raw_batch(base_url: str, args: argparse.Namespace, retries: int) -> int:
    """A script's batch: one client, a semaphore per call, every row gathered. Returns the
    rows that ended ok."""
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url=base_url, timeout=TIMEOUT_S, max_retries=retries
    )
    limit = asyncio.Semaphore(args.concurrency)

    async def row(i: int) -> bool:
        async with limit:
            try:
                await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": prompt(i)}],
                    max_tokens=args.max_tokens,
                )
            except openai.RateLimitError:
                return False
        return True

    try:
        return sum(await asyncio.gather(*(row(i) for i in range(args.rows))))
    finally:
        await client.close()


def warm_up() -> None:
    """Import what ``flowgpt batch`` imports on its way (the raw side's SDK is imported
    already): the import time of a fresh process is not what this benchmark measures."""
    import flowgpt.cli._batch
    import flowgpt.cli._progress
    import flowgpt.engine.data
    import flowgpt.engine.engine
    import flowgpt.providers.openai
    import flowgpt.spec.loader  # noqa: F401


def flowgpt_batch(base_url: str, args: argparse.Namespace, tmp: Path, flags: list[str]) -> str:
    """``flowgpt batch`` in this process; returns what it printed on stderr."""
    from flowgpt.cli import main as cli

    workflow = tmp / "workflow.yaml"
    workflow.write_text(workflow_text(base_url, args.max_tokens, args.concurrency))
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps({"topic": i}) + "\n" for i in range(args.rows)))
    out = tmp / "out.jsonl"
    out.unlink(missing_ok=True)
    stderr = io.StringIO()
    command = ["batch", str(workflow), "--data", str(data), "--out", str(out), *flags]
    with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
        cli.main(command, prog_name="flowgpt", standalone_mode=False)
    return stderr.getvalue()


def ok_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(json.loads(line)["status"] == "ok" for line in f)


def run_client(client: str, args: argparse.Namespace, tmp: Path) -> Outcome:
    counts: dict[str, int] = {}
    note = ""
    with limited_server(args, counts) as base_url:
        started = time.perf_counter()
        if client.startswith("raw-"):
            ok = asyncio.run(raw_batch(base_url, args, int(client.split("-")[1])))
            wall = time.perf_counter() - started
        else:
            flags = []
            if client == "flowgpt-limits":
                flags = ["--rpm", f"{args.rpm:g}", "--tpm", f"{args.tpm:g}"]
            printed = flowgpt_batch(base_url, args, tmp, flags)
            wall = time.perf_counter() - started
            ok = ok_rows(tmp / "out.jsonl")
            note = next(
                (line for line in printed.splitlines() if line.startswith(f"{args.rows} rows")),
                printed.strip().splitlines()[-1] if printed.strip() else "",
            )
    return Outcome(client, wall, ok, counts["served"], counts["rate_limited"], note)


# -- the command --------------------------------------------------------------------------


def ideal_s(args: argparse.Namespace) -> float:
    """The least time the account allows (see the module's doc)."""
    latency = args.latency_ms / 1000
    tokens = sum(
        _request_tokens(
            {"messages": [{"role": "user", "content": prompt(i)}], "max_tokens": args.max_tokens}
        )
        for i in range(args.rows)
    )
    bounds = [args.rows * latency / args.concurrency]
    for total, per_minute in ((tokens, args.tpm), (args.rows, args.rpm)):
        rate = per_minute / 60
        window = max(1.0, rate * args.window_s)
        bounds.append(max(0.0, total - window) / rate + latency)
    return max(bounds)


def table(outcomes: Sequence[Outcome], args: argparse.Namespace) -> str:
    ideal = ideal_s(args)
    header = f"{'client':<42} {'wall s':>7} {'wall/ideal':>10} {'rows ok':>9} {'429s':>6}"
    lines = [header, "-" * len(header)]
    for o in outcomes:
        ok = f"{o.ok}/{args.rows}"
        lines.append(
            f"{LABELS[o.client]:<42} {o.wall:>7.2f} {o.wall / ideal:>10.2f} {ok:>9} "
            f"{o.rate_limited:>6}"
        )
    lines += [
        f"{args.rows} one-step rows, max_tokens {args.max_tokens}; account limit "
        f"TPM {args.tpm:,.0f} / RPM {args.rpm:,.0f} per model over {args.window_s:g} s "
        f"windows; {args.latency_ms:g} ms latency; concurrency {args.concurrency}. "
        f"ideal: {ideal:.2f} s. 429s: as the server counted them.",
        "Targets (issue 14): flowgpt no flags: every row ok, wall/ideal <= 1.15, 429s <= 10 % "
        "of rows; with --rpm/--tpm: every row ok, wall/ideal <= 1.10, 429s <= 2 % of rows.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_ratelimit",
        description="Clients of a batch against an emulated account rate limit.",
    )
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--rpm", type=float, default=3000, help="the account's requests/min")
    parser.add_argument("--tpm", type=float, default=120_000, help="the account's tokens/min")
    parser.add_argument("--window-s", type=float, default=1.0, help="the limits' window")
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help=f"which clients, comma-separated (of {', '.join(CLIENTS)})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print flowgpt's summary")
    args = parser.parse_args(argv)
    args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = set(args.clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    for name in ("rows", "rpm", "tpm", "concurrency", "max_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.window_s <= 0 or args.latency_ms < 0 or not math.isfinite(args.window_s):
        parser.error("--window-s must be > 0 and --latency-ms >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ[KEY_ENV] = KEY
    os.environ.pop("OPENAI_BASE_URL", None)
    outcomes = []
    warm_up()
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        for client in args.clients:
            outcome = run_client(client, args, Path(tmp))
            outcomes.append(outcome)
            if args.verbose:
                print(
                    f"{client}: {outcome.wall:.2f} s, {outcome.ok} ok, "
                    f"{outcome.served} served, {outcome.rate_limited} rate-limited"
                    + (f"; flowgpt said: {outcome.note}" if outcome.note else ""),
                    file=sys.stderr,
                )
    print(table(outcomes, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
