"""Chat: a conversation with a model, replies streamed, the history trimmed to fit.

The library half of ``flowgpt chat``::

    import asyncio
    from flowgpt import ChatSession, MockProvider

    async def main() -> None:
        async with ChatSession(MockProvider(), system="You are terse.") as chat:
            turn = await chat.send("Hi!", on_text=lambda piece: print(piece, end=""))
            print(turn.usage, turn.cost_usd)        # this turn; chat.usage, chat.cost_usd: all

    asyncio.run(main())

One turn (:meth:`ChatSession.send`):

1. The request is the system prompt, the pinned messages (a workflow step's few-shot
   ``messages:``), the turns kept so far (user + assistant) and the new user message.
2. It must fit: at most the model's context window minus ``max_tokens`` (room for the
   reply), and at most ``max_history_tokens`` when that is set (the smaller wins). Tokens
   are counted exactly as the API bills them (:func:`flowgpt.tokens.count_tokens`). Whole
   turns are dropped, oldest first, until it fits; the system prompt, the pinned messages
   and the new message are always sent, and when even they do not fit the turn fails
   with :class:`~flowgpt.errors.ContextWindowError` before anything is sent. A dropped
   turn stays dropped.
3. With a cost or token limit, the turn's worst case (prompt uncached, every allowed
   reply token used) is reserved first, exactly as a run's budget does; a turn that could
   break the limit is not sent (:class:`~flowgpt.errors.BudgetExceededError`).
4. The reply streams through ``on_text``; usage and cost are the API's own numbers.
5. With a run store, every turn is recorded the moment it ends (``turn-1``, ``turn-2``,
   ...; a failed turn too, with its error), so ``flowgpt runs list/show`` show the chat.

A failed turn (an API error, a context window or budget refusal) raises a
:class:`~flowgpt.errors.FlowgptError`; its user message is not kept, and the next
:meth:`~ChatSession.send` goes on with the history as it was.

:func:`run_repl` is the interactive loop of ``flowgpt chat`` (standard streams only; the
command line itself lives in ``flowgpt.cli``).

Together with :mod:`flowgpt.chat.history` (the request a turn sends: the history trimmed
to fit), :mod:`flowgpt.chat.recorder` (the conversation recorded as a run) and
:mod:`flowgpt.chat.setup` (a session from a workflow step).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

from flowgpt.accounting.budget import Budget, Reservation
from flowgpt.chat.history import _ChatHistory, _Kept
from flowgpt.chat.recorder import _ChatRecorder
from flowgpt.errors import BudgetExceededError, FlowgptError
from flowgpt.money import sum_costs
from flowgpt.providers.base import ChatRequest, Message, OnText, Provider
from flowgpt.usage import Usage

if TYPE_CHECKING:
    from flowgpt.accounting.prices import ModelPrice
    from flowgpt.spec.models import PriceSpec
    from flowgpt.spec.workflow import Workflow
    from flowgpt.store.run_store import RunStore

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODEL",
    "EXIT_WORDS",
    "ChatSession",
    "ChatTurn",
]

DEFAULT_MODEL = "gpt-4o-mini"
# Replies are bounded by default: it reserves room for the reply when trimming, and gives
# every turn a known worst case, so cost limits work.
DEFAULT_MAX_TOKENS = 1000
# Typed alone on a line, these end the REPL (ASCII ones in any case).
EXIT_WORDS = frozenset({"exit", "quit", "退出"})

# ChatRequest settings a session may pass besides model, temperature and max_tokens.
_SETTINGS = ("top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True)
class ChatTurn:
    """One answered turn of a chat."""

    number: int  # 1, 2, ...; a failed turn uses up its number too
    user: str
    text: str  # the reply
    usage: Usage
    cost_usd: Decimal | None  # None: the model is unpriced
    latency_s: float
    model: str
    messages: list[Message] = field(default_factory=list)  # the request, as sent
    finish_reason: str | None = None
    # the numbers of earlier turns dropped from the history to make this one fit
    dropped: tuple[int, ...] = ()
    retries: int = 0  # transport retries the provider took


class ChatSession(_ChatHistory, _ChatRecorder):
    """A conversation with one model: streamed turns, trimmed history, running totals.

    ``provider``: any :class:`~flowgpt.providers.base.Provider`; None means OpenAI with
    the key from ``OPENAI_API_KEY`` (and ``OPENAI_BASE_URL``), closed by :meth:`aclose`.
    ``price_base_url``: where requests go, for pricing, when the provider cannot say (a
    non-OpenAI URL makes OpenAI models unpriced). ``settings``: other request settings
    (``top_p``, ``seed``, ``stop``, ``presence_penalty``, ``frequency_penalty``).
    ``pricing``: per-model price overrides (a workflow's ``pricing:``), which also give
    ``context_window``. ``max_cost_usd`` / ``max_total_tokens``: limits for the whole
    conversation. ``store``: record the conversation as a run named ``name``.
    """

    def __init__(
        self,
        provider: Provider | None = None,
        *,
        model: str = DEFAULT_MODEL,
        system: str | None = None,
        pinned: Sequence[Message] = (),
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        temperature: float | None = None,
        settings: Mapping[str, Any] | None = None,
        max_history_tokens: int | None = None,
        max_cost_usd: Decimal | float | str | None = None,
        max_total_tokens: int | None = None,
        pricing: Mapping[str, PriceSpec] | None = None,
        price_base_url: str | None = None,
        store: RunStore | None = None,
        name: str = "chat",
        run_id: str | None = None,
        workflow: Workflow | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        unknown = set(settings or {}) - set(_SETTINGS)
        if unknown:
            raise ValueError(
                f"unknown chat setting(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(_SETTINGS)}"
            )
        if max_tokens is not None and max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if max_history_tokens is not None and max_history_tokens < 1:
            raise ValueError("max_history_tokens must be >= 1")
        self._owns_provider = provider is None
        if provider is None:
            from flowgpt.providers.openai import OpenAIProvider

            provider = OpenAIProvider()
        self.provider: Provider = provider
        self._model = model
        self.system = system
        self.pinned: list[Message] = [Message(**m) for m in pinned]
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.settings: dict[str, Any] = {k: v for k, v in (settings or {}).items() if v is not None}
        self.max_history_tokens = max_history_tokens
        self.pricing: dict[str, PriceSpec] = dict(pricing or {})
        limit = None if max_cost_usd is None else Decimal(str(max_cost_usd))
        self.budget = Budget(limit, max_total_tokens)
        # Prices follow where requests really go, as in a run: OPENAI_BASE_URL pointing at
        # a local server makes "gpt-4o" unpriced, not billed at OpenAI's rate.
        resolver = getattr(provider, "resolved_base_url", None)
        self.price_base_url: str | None = resolver() if callable(resolver) else price_base_url
        self.store = store
        self.name = name
        self.workflow = workflow
        self.inputs: dict[str, Any] = dict(inputs or {})
        self.turns: list[ChatTurn] = []
        self.failed_turns = 0
        self._run_id = run_id
        self._run_started = False
        self._finished = False
        self._busy = False
        self._number = 0
        self._kept: list[_Kept] = []
        self._first_kept = 0

    # -- what the session holds ------------------------------------------------------------
    @property
    def model(self) -> str:
        return self._model

    @property
    def run_id(self) -> str | None:
        """The id of the stored run; None until the first turn is recorded (or no store)."""
        return self._run_id if self._run_started else None

    @property
    def history(self) -> list[Message]:
        """The turns the next request will start from (oldest dropped ones left out)."""
        out: list[Message] = []
        for kept in self._kept[self._first_kept :]:
            out += [kept.user, kept.assistant]
        return out

    @property
    def usage(self) -> Usage:
        total = Usage()
        for turn in self.turns:
            total = total + turn.usage
        return total

    @property
    def cost_usd(self) -> Decimal | None:
        """Dollars so far; None ("unpriced") when any turn is unpriced."""
        return sum_costs([t.cost_usd for t in self.turns])

    def context_limit(self) -> int | None:
        """Most prompt tokens a request may have: the context window minus max_tokens,
        or max_history_tokens when smaller; None when the window is unknown and no
        max_history_tokens is set (then nothing is trimmed)."""
        return self._limit()[0]

    # -- one turn --------------------------------------------------------------------------
    def _reserve(self, number: int, request: ChatRequest, prompt_tokens: int) -> Reservation | None:
        if not self.budget.active:
            return None
        from flowgpt.accounting.prices import worst_case_cost

        max_tokens = request.max_tokens
        if max_tokens is None:
            window = self._window()
            if window is None:
                raise BudgetExceededError(
                    f"turn {number}: without max_tokens the worst case of a reply from "
                    f"{request.model} is unknown, so the limit cannot be enforced",
                    hint="set max_tokens (--max-tokens)",
                    step=f"turn-{number}",
                )
            max_tokens = max(window - prompt_tokens, 0)
        return self.budget.reserve(
            f"turn-{number}",
            request.model,
            prompt_tokens + max_tokens,
            worst_case_cost(prompt_tokens, max_tokens, self._price()),
        )

    def _price(self) -> ModelPrice | None:
        from flowgpt.accounting.prices import resolve_price

        return resolve_price(self._model, base_url=self.price_base_url, overrides=self.pricing)

    async def send(self, text: str, *, on_text: OnText | None = None) -> ChatTurn:
        """Send one user message and return the answered turn.

        ``on_text`` is called with each piece of the reply as it streams in. Raises a
        FlowgptError when the turn fails; the history is then unchanged.
        """
        if self._finished:
            raise RuntimeError("this chat session is closed")
        if self._busy:
            raise RuntimeError("one turn at a time: await the previous send() first")
        self._busy = True
        self._number += 1
        number = self._number
        user = Message(role="user", content=text)
        started = time.perf_counter()
        request: ChatRequest | None = None
        reservation: Reservation | None = None
        try:
            request, first_kept, prompt_tokens = self._build(number, user)
            reservation = self._reserve(number, request, prompt_tokens)
            response = await self.provider.complete(request, on_text=on_text)
        except FlowgptError as exc:
            if reservation is not None:
                self.budget.settle(reservation, 0, Decimal(0))  # a failed call is not billed
            self.failed_turns += 1
            sent = request.messages if request is not None else [*self._fixed(), user]
            self._record_failure(number, sent, exc, time.perf_counter() - started)
            raise
        except BaseException:
            # Cancelled (Ctrl-C) mid-reply: no result to keep, as for a run's steps.
            if reservation is not None:
                self.budget.settle(reservation, 0, Decimal(0))
            raise
        finally:
            self._busy = False
        latency = time.perf_counter() - started
        from flowgpt.accounting.prices import cost_of

        cost = cost_of(
            response.usage, request.model, base_url=self.price_base_url, overrides=self.pricing
        )
        if reservation is not None:
            self.budget.settle(reservation, response.usage.total_tokens, cost)
        assistant = Message(role="assistant", content=response.text)
        dropped = tuple(t.number for t in self.turns[self._first_kept : first_kept])
        self._first_kept = first_kept
        self._kept.append(_Kept(user, assistant, self._tokens(user) + self._tokens(assistant)))
        turn = ChatTurn(
            number=number,
            user=text,
            text=response.text,
            usage=response.usage,
            cost_usd=cost,
            latency_s=latency,
            model=request.model,
            messages=list(request.messages),
            finish_reason=response.finish_reason,
            dropped=dropped,
            retries=response.retries,
        )
        self.turns.append(turn)
        self._record(turn)
        return turn

    async def stream(self, text: str) -> AsyncIterator[str]:
        """``send`` as an async iterator of the reply's pieces::

            async for piece in chat.stream("Hi!"):
                print(piece, end="", flush=True)
            chat.turns[-1].usage                    # the finished turn

        A failed turn raises from the loop, after any pieces already given.
        """
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        task = asyncio.ensure_future(self.send(text, on_text=queue.put_nowait))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (piece := await queue.get()) is not None:
                yield piece
            task.result()  # raises the turn's error, if any
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- the run store ---------------------------------------------------------------------
    def finish(self, status: str = "ok", error: str | None = None) -> None:
        """Record how the chat ended ("ok", "failed" or "interrupted"); later calls and a
        session that stored nothing do nothing. No turn can be sent afterwards."""
        if self._finished:
            return
        self._finished = True
        if self.store is None or not self._run_started or self._run_id is None:
            return
        self.store.finish_run(
            self._run_id,
            status=status,
            error=error,
            outputs={"turns": len(self.turns)},
            cost_usd=self.cost_usd,
            usage=self.usage,
            # time spent waiting for replies, not the time the chat was open
            latency_s=sum(t.latency_s for t in self.turns),
        )

    async def aclose(self) -> None:
        """Finish the session (status "ok" unless :meth:`finish` said otherwise) and close
        the provider if the session made it."""
        self.finish()
        if self._owns_provider:
            await self.provider.aclose()

    async def __aenter__(self) -> ChatSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.finish("ok")
        elif isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
            self.finish("interrupted", "interrupted")
        else:
            message = exc.message if isinstance(exc, FlowgptError) else str(exc)
            self.finish("failed", message)
        await self.aclose()

    # -- from a workflow step --------------------------------------------------------------
    @classmethod
    def from_workflow(
        cls,
        workflow: Workflow | str,
        step: str | None = None,
        *,
        provider: Provider | None = None,
        inputs: Mapping[str, Any] | None = None,
        inputs_from_cli: bool = False,
        model: str | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        max_history_tokens: int | None = None,
        max_cost_usd: Decimal | float | str | None = None,
        store: RunStore | None = None,
    ) -> ChatSession:
        """A session with the model, system prompt, few-shot ``messages``, settings,
        provider, pricing and budget of one step of a workflow (arguments override them).

        ``step`` may be left out when the workflow has one step. The system prompt is
        rendered with ``inputs`` (defaults applied; ``inputs_from_cli`` converts strings
        by the declared types); only the inputs it uses are needed. The step's ``prompt``
        and ``output`` are not used: the user types the messages. A system prompt that
        uses other steps' outputs cannot be rendered and is refused.
        """
        from flowgpt.chat.setup import session_from_workflow

        return session_from_workflow(
            cls,
            workflow,
            step,
            provider=provider,
            inputs=inputs,
            inputs_from_cli=inputs_from_cli,
            model=model,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            max_history_tokens=max_history_tokens,
            max_cost_usd=max_cost_usd,
            store=store,
        )
