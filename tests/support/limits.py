"""Run a function in a forked child under ``resource`` limits, so that a test of an attack
(a memory or time bomb) cannot take the test machine down when a limit regresses.

    outcome = in_child(lambda: templating.render(bomb, context), memory_mb=512, cpu_s=20)
    outcome.error            # the exception's text ("" when it returned)
    outcome.seconds          # wall time of the call
    outcome.grown_mb         # how much the child's resident memory grew during the call
    outcome.killed           # the child died (RLIMIT_AS's MemoryError is caught; CPU kills)

The child inherits the test process (a fork: nothing is imported again), so the memory
limit is set relative to what the child already maps.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["ChildOutcome", "in_child"]


@dataclass
class ChildOutcome:
    error: str = ""
    error_type: str = ""
    seconds: float = 0.0
    grown_mb: float = 0.0
    killed: bool = False
    value: Any = None


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _child(conn: Connection, fn: Callable[[], Any], memory_mb: int, cpu_s: int) -> None:
    mapped = _status_kb("VmSize") * 1024
    limit = mapped + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    before = _status_kb("VmRSS")
    outcome = ChildOutcome()
    started = time.monotonic()
    try:
        value = fn()
        outcome.value = value if isinstance(value, (str, int, float, bool, type(None))) else None
    except BaseException as exc:  # everything is reported to the parent
        outcome.error = str(exc) or traceback.format_exc(limit=3)
        outcome.error_type = type(exc).__name__
    outcome.seconds = time.monotonic() - started
    outcome.grown_mb = (_status_kb("VmHWM") - before) / 1024
    conn.send(outcome)
    conn.close()


def in_child(
    fn: Callable[[], Any], *, memory_mb: int = 512, cpu_s: int = 20, timeout_s: float = 60
) -> ChildOutcome:
    """Call ``fn`` in a forked child allowed ``memory_mb`` more address space than it
    starts with and ``cpu_s`` seconds of CPU; report what happened."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, fn, memory_mb, cpu_s), daemon=True)
    process.start()
    send.close()
    try:
        if receive.poll(timeout_s):
            outcome: ChildOutcome = receive.recv()
        else:
            outcome = ChildOutcome(error="no answer in time", killed=True)
    except EOFError:
        outcome = ChildOutcome(error="the child died", killed=True)
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
    if process.exitcode not in (0, None):
        outcome.killed = True
    return outcome
