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
   are counted exactly as the API bills them (:func:`flowgpt.accounting.tokens.count_tokens`). Whole
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

Together with :mod:`flowgpt.chat.history` (the request a turn sends: the history trimmed
to fit), :mod:`flowgpt.chat.recorder` (the conversation recorded as a run) and
:mod:`flowgpt.chat.setup` (a session from a workflow step).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any

from flowgpt.accounting.budget import Budget, Reservation
from flowgpt.accounting.prices import ModelPrice, cost_of, resolve_price, worst_case_cost
from flowgpt.chat.history import ChatHistory, ChatRequestPlan
from flowgpt.chat.recorder import ChatRecorder
from flowgpt.chat.setup import setup_from_workflow
from flowgpt.chat.turn import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, SETTINGS, ChatTurn
from flowgpt.errors import BudgetExceededError, FlowgptError
from flowgpt.money import sum_costs, usd_limit
from flowgpt.providers.base import ChatRequest, Message, OnText, Provider, endpoint_of
from flowgpt.providers.factory import make_provider
from flowgpt.spec.models import PriceList, PriceSpec, ProviderSpec
from flowgpt.spec.workflow import Workflow
from flowgpt.store.run_store import RunStore
from flowgpt.usage import Usage

__all__ = ["ChatSession"]


class ChatSession:
    """A conversation with one model: streamed turns, trimmed history, running totals.

    ``provider``: any :class:`~flowgpt.providers.base.Provider`; None means OpenAI with
    the key from ``OPENAI_API_KEY`` (and ``OPENAI_BASE_URL``), closed by :meth:`aclose`.
    ``price_base_url``: where requests go, for pricing, when the provider cannot say (a
    non-OpenAI URL makes OpenAI models unpriced). ``settings``: other request settings
    (``top_p``, ``seed``, ``stop``, ``presence_penalty``, ``frequency_penalty``).
    ``pricing``: per-model price overrides (a workflow's ``pricing:``), which also give
    ``context_window``; ``prices``: which list prices apply (a workflow's
    ``provider.prices``: "openai", "pricing" or "none"). ``max_cost_usd`` /
    ``max_total_tokens``: limits for the whole conversation. ``store``: record the
    conversation as a run named ``name``.
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
        prices: PriceList = "openai",
        store: RunStore | None = None,
        name: str = "chat",
        run_id: str | None = None,
        workflow: Workflow | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        unknown = set(settings or {}) - set(SETTINGS)
        if unknown:
            raise ValueError(
                f"unknown chat setting(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(SETTINGS)}"
            )
        if max_tokens is not None and max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if max_history_tokens is not None and max_history_tokens < 1:
            raise ValueError("max_history_tokens must be >= 1")
        self._owns_provider = provider is None
        if provider is None:
            provider = make_provider(ProviderSpec())  # OpenAI, configured by the environment
        self.provider: Provider = provider
        self.pricing: dict[str, PriceSpec] = dict(pricing or {})
        override = self.pricing.get(model)
        self._history = ChatHistory(
            model=model,
            system=system,
            pinned=pinned,
            max_tokens=max_tokens,
            temperature=temperature,
            settings=settings or {},
            max_history_tokens=max_history_tokens,
            window_override=override.context_window if override else None,
        )
        limit = usd_limit(max_cost_usd)
        self.budget = Budget(limit, max_total_tokens)
        # Prices follow where requests really go, as in a run: OPENAI_BASE_URL pointing at
        # a local server makes "gpt-4o" unpriced, not billed at OpenAI's rate.
        self.price_base_url = provider.resolved_base_url() or price_base_url
        self.prices: PriceList = prices
        self._recorder = (
            None
            if store is None
            else ChatRecorder(
                store,
                name=name,
                run_id=run_id,
                workflow=workflow,
                inputs=inputs,
                provider=provider.name,
                endpoint=endpoint_of(provider.resolved_base_url()),
            )
        )
        self.name = name  # of the run the chat is recorded as
        self.turns: list[ChatTurn] = []
        self.failed_turns = 0
        self.last_error: str | None = None  # the message of the last failed turn
        self._finished = False
        self._busy = False
        self._number = 0

    # -- what the session holds ------------------------------------------------------------
    @property
    def model(self) -> str:
        return self._history.model

    @property
    def system(self) -> str | None:
        return self._history.system

    @property
    def pinned(self) -> list[Message]:
        return self._history.pinned

    @property
    def max_tokens(self) -> int | None:
        return self._history.max_tokens

    @property
    def temperature(self) -> float | None:
        return self._history.temperature

    @property
    def settings(self) -> dict[str, Any]:
        """The other request settings sent with every turn (``top_p``, ``seed``, ...)."""
        return dict(self._history.settings)

    @property
    def max_history_tokens(self) -> int | None:
        return self._history.max_history_tokens

    @property
    def turns_sent(self) -> int:
        """Turns sent so far, failed ones included (the last turn's number)."""
        return self._number

    @property
    def run_id(self) -> str | None:
        """The id of the stored run; None until the first turn is recorded (or no store)."""
        recorder = self._recorder
        return recorder.run_id if recorder is not None and recorder.started else None

    @property
    def history(self) -> list[Message]:
        """The turns the next request will start from (oldest dropped ones left out)."""
        return self._history.messages

    @property
    def all_failed(self) -> bool:
        """True when turns were sent and every one of them failed: such a chat ends as
        "failed", never "ok"."""
        return self.failed_turns > 0 and not self.turns

    @property
    def usage(self) -> Usage:
        return Usage.total([turn.usage for turn in self.turns])

    @property
    def cost_usd(self) -> Decimal | None:
        """Dollars so far; None ("unpriced") when any turn is unpriced."""
        return sum_costs(t.cost_usd for t in self.turns)

    def context_limit(self) -> int | None:
        """Most prompt tokens a request may have: the context window minus max_tokens,
        or max_history_tokens when smaller; None when the window is unknown and no
        max_history_tokens is set (then nothing is trimmed)."""
        return self._history.limit()[0]

    def context_limit_kind(self) -> str:
        """What sets :meth:`context_limit`: "window" (the model's context window minus
        max_tokens), "history" (max_history_tokens) or "" (nothing: no trimming)."""
        return self._history.limit()[1]

    # -- one turn --------------------------------------------------------------------------
    def _price(self) -> ModelPrice | None:
        return resolve_price(
            self.model, base_url=self.price_base_url, overrides=self.pricing, prices=self.prices
        )

    def _reserve(self, number: int, plan: ChatRequestPlan) -> Reservation | None:
        if not self.budget.active:
            return None
        request = plan.request
        max_tokens = request.max_tokens
        if max_tokens is None:
            window = self._history.window()
            if window is None:
                raise BudgetExceededError(
                    f"turn {number}: without max_tokens the worst case of a reply from "
                    f"{request.model} is unknown, so the limit cannot be enforced",
                    hint="set max_tokens",
                    code="chat_max_tokens",
                    step=f"turn-{number}",
                )
            max_tokens = max(window - plan.prompt_tokens, 0)
        return self.budget.reserve(
            f"turn-{number}",
            request.model,
            plan.prompt_tokens + max_tokens,
            worst_case_cost(plan.prompt_tokens, max_tokens, self._price()),
        )

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
        plan: ChatRequestPlan | None = None
        reservation: Reservation | None = None
        try:
            plan = self._history.plan(number, user)
            reservation = self._reserve(number, plan)
            response = await self.provider.complete(plan.request, on_text=on_text)
        except FlowgptError as exc:
            if reservation is not None:
                self.budget.settle(reservation, 0, Decimal(0))  # a failed call is not billed
            self.failed_turns += 1
            self.last_error = exc.message
            if self._recorder is not None:
                sent = plan.request.messages if plan is not None else [*self._history.fixed(), user]
                self._recorder.record_failure(
                    number, self.model, sent, exc.message, time.perf_counter() - started
                )
            raise
        except BaseException:
            # Cancelled (Ctrl-C) mid-reply: no result to keep, as for a run's steps.
            if reservation is not None:
                self.budget.settle(reservation, 0, Decimal(0))
            raise
        finally:
            self._busy = False
        latency = time.perf_counter() - started
        request: ChatRequest = plan.request
        cost = cost_of(
            response.usage,
            request.model,
            base_url=self.price_base_url,
            overrides=self.pricing,
            prices=self.prices,
        )
        if reservation is not None:
            self.budget.settle(reservation, response.usage.total_tokens, cost)
        self._history.keep(plan, number, user, response.text)
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
            dropped=plan.dropped,
            retries=response.retries,
        )
        self.turns.append(turn)
        if self._recorder is not None:
            self._recorder.record(turn, self._price())
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
        session that stored nothing do nothing. No turn can be sent afterwards.

        A chat whose every turn failed ends "failed" (with the last turn's error), even
        when it was closed normally: nothing it was asked was answered."""
        if self._finished:
            return
        self._finished = True
        if status == "ok" and self.all_failed:
            failed = self.failed_turns
            status = "failed"
            error = (
                f"{'the only turn' if failed == 1 else f'all {failed} turns'} failed; "
                f"the last: {self.last_error}"
            )
        if self._recorder is not None:
            self._recorder.finish(
                status,
                error,
                turns=len(self.turns),
                usage=self.usage,
                cost_usd=self.cost_usd,
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
        uses other steps' outputs cannot be rendered and is refused. ``provider``: None
        makes one from the workflow's ``provider:``, which the session closes.
        """
        setup = setup_from_workflow(
            workflow,
            step,
            provider=provider,
            inputs=inputs,
            inputs_from_cli=inputs_from_cli,
            model=model,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            max_cost_usd=max_cost_usd,
        )
        session = cls(
            setup.provider,
            model=setup.model,
            system=setup.system,
            pinned=setup.pinned,
            max_tokens=setup.max_tokens,
            temperature=setup.temperature,
            settings=setup.settings,
            max_history_tokens=max_history_tokens,
            max_cost_usd=setup.max_cost_usd,
            max_total_tokens=setup.max_total_tokens,
            pricing=setup.pricing,
            price_base_url=setup.price_base_url,
            prices=setup.prices,
            store=store,
            name=setup.name,
            workflow=setup.workflow,
            inputs=setup.inputs,
        )
        session._owns_provider = setup.owns_provider
        return session
