"""The interactive loop of ``flowgpt chat``: read a line, stream the reply, print what the
turn cost; exit on ``exit``, ``quit``, ``退出``, Ctrl-D or Ctrl-C. The conversation itself
(history, trimming, budget, store) is :class:`flowgpt.chat.ChatSession`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from flowgpt.errors import (
    BudgetExceededError,
    FlowgptError,
)

if TYPE_CHECKING:
    pass

from flowgpt.chat.session import ChatSession
from flowgpt.chat.turn import EXIT_WORDS, ChatTurn
from flowgpt.cli._common import _cli_format

__all__ = ["format_turn_summary", "run_repl"]


# -- the REPL ---------------------------------------------------------------------------------


def format_turn_summary(turn: ChatTurn, session: ChatSession) -> str:
    """One line about a turn and the totals so far, e.g.
    ``turn 2: 34 → 12 tokens, $0.000021 · total 96 tokens, $0.000054``."""
    from flowgpt.money import format_usd

    line = (
        f"turn {turn.number}: {turn.usage.prompt_tokens:,} → {turn.usage.completion_tokens:,} "
        f"tokens, {format_usd(turn.cost_usd)} · total {session.usage.total_tokens:,} tokens, "
        f"{format_usd(session.cost_usd)}"
    )
    if turn.dropped:
        first, last = turn.dropped[0], turn.dropped[-1]
        which = f"turn {first}" if first == last else f"turns {first}-{last}"
        by_window = session.context_limit_kind() == "window"
        limit = "the context window" if by_window else "max_history_tokens"
        line += f" · {which} dropped to fit {limit}"
    return line


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _ending(session: ChatSession) -> str:
    from flowgpt.money import format_usd

    turns = _plural(len(session.turns), "turn")
    if session.failed_turns:
        turns += f" ({session.failed_turns} failed)"
    if not session.turns and not session.failed_turns:
        line = "chat ended: no turns"
    elif session.all_failed:
        line = f"chat ended: every turn failed ({session.failed_turns})"
    else:
        line = (
            f"chat ended: {turns}, {session.usage.total_tokens:,} tokens, "
            f"{format_usd(session.cost_usd)}"
        )
    if session.run_id is not None:
        line += f" · stored as run {session.run_id}"
    return line


class _Interrupt:
    """While a turn runs, Ctrl-C cancels it (as asyncio.run does) instead of tearing
    through the event loop; outside the main thread nothing is installed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
        self.loop, self.task = loop, task
        self.hit = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupt:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.hit = True
        self.loop.call_soon_threadsafe(self.task.cancel)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run_repl(
    session: ChatSession,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Chat on the standard streams until ``exit``, ``quit``, ``退出``, end of input
    (Ctrl-D) or Ctrl-C; returns the exit code (0, 1 after a budget stop or when every turn
    failed, 130 on Ctrl-C).

    Replies stream to stdout; a summary line per turn, errors and the ending go to
    stderr. A failed turn prints its error and the chat goes on. The prompt ``you> `` is
    shown only when stdin is a terminal. The session is finished and closed on return.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    interactive = _isatty(stdin)
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        stderr.write(
            f"chatting with {session.model} ({session.provider.name}); "
            "type exit, quit or 退出 (or Ctrl-D) to end\n"
        )
        stderr.flush()

    at_line_start = True  # of stdout: a reply ends with a newline before stderr speaks

    def write(piece: str) -> None:
        nonlocal at_line_start
        if piece:
            stdout.write(piece)
            stdout.flush()
            at_line_start = piece.endswith("\n")

    def say(line: str) -> None:
        if not at_line_start:
            write("\n")
        stderr.write(line + "\n")
        stderr.flush()

    loop = asyncio.new_event_loop()
    code, status, error = 0, "ok", None
    try:
        while True:
            try:
                line = _read_line(stdin, stdout, stderr, interactive)
            except KeyboardInterrupt:
                say("")
                code, status, error = 130, "interrupted", "interrupted"
                break
            if line is None:  # end of input
                if interactive:
                    say("")
                break
            text = line.strip()
            if not text:
                continue
            if text.lower() in EXIT_WORDS:
                break
            task = loop.create_task(session.send(text, on_text=write))
            with _Interrupt(loop, task) as interrupt:
                try:
                    turn = loop.run_until_complete(task)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(BaseException):
                            loop.run_until_complete(task)
                    interrupt.hit = True
                except BudgetExceededError as exc:
                    say(_cli_format(exc))
                    code, status, error = exc.exit_code, "failed", exc.message
                    break
                except FlowgptError as exc:
                    say(f"turn {session.turns_sent} failed: {_cli_format(exc)}")
                    continue
            if interrupt.hit:
                say("interrupted")
                code, status, error = 130, "interrupted", "interrupted"
                break
            say(format_turn_summary(turn, session))
            if turn.finish_reason == "length":
                say(
                    f"  the reply was cut off at max_tokens ({session.max_tokens}); "
                    "raise it with --max-tokens for longer replies"
                )
    except BaseException as exc:  # a bug, or Ctrl-C outside a turn: record how it ended
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        error = "interrupted" if interrupted else f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            session.finish(status, error)
            loop.run_until_complete(session.aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
    if code == 0 and session.all_failed:
        code = 1  # nothing asked was answered: not a success (stored as "failed")
    say(_ending(session))
    return code


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _read_line(stdin: TextIO, stdout: TextIO, stderr: TextIO, interactive: bool) -> str | None:
    """The next line, or None at the end of input."""
    if interactive and stdin is sys.stdin and stdout is sys.stdout and _isatty(stdout):
        try:
            return input("you> ")  # line editing when readline is available
        except EOFError:
            return None
    if interactive:
        stderr.write("you> ")
        stderr.flush()
    line = stdin.readline()
    return line if line else None
