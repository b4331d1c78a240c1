"""Providers that record to and replay from a cassette (``flowgpt.store.cassettes``).

``RecordingProvider`` wraps the real provider: every request goes through and is kept with
its reply, labelled with the case and the step that made it. ``ReplayProvider`` answers
from a cassette with no network and no key; a request it does not have fails loudly
(``CassetteMissError``), naming the step and showing what changed in its request against
the closest recorded request of that step.
"""

from __future__ import annotations

import asyncio
import difflib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from flowgpt.accounting.prices import is_local_url
from flowgpt.engine.calls import current_call
from flowgpt.errors import BadRequestError, CassetteMissError
from flowgpt.providers.base import ChatRequest, ChatResponse, OnText, Provider
from flowgpt.store.cassettes import CaseTiming, Cassette, Interaction, Refusal, cassette_key

__all__ = [
    "JUDGE_STEP",
    "RecordingProvider",
    "ReplayProvider",
    "current_case",
    "describe_request",
    "running_case",
]

# How a judge's requests are labelled in place of a step id (no step id can look like it).
JUDGE_STEP = "(judge)"
# A diff longer than this is cut: the first changes are the ones that explain the rest.
_MAX_DIFF_LINES = 40

_CASE: ContextVar[str | None] = ContextVar("flowgpt_test_case", default=None)


def current_case() -> str | None:
    """The test case whose requests are being made now, or None."""
    return _CASE.get()


@contextmanager
def running_case(name: str) -> Iterator[None]:
    """Label the requests made inside the block as made by case ``name``."""
    token = _CASE.set(name)
    try:
        yield
    finally:
        _CASE.reset(token)


def _base_step(step: str | None) -> str | None:
    """``sections[2]`` -> ``sections``: the items of a for_each step are one step."""
    return None if step is None else step.split("[", 1)[0]


class RecordingProvider:
    """Sends every request to ``inner`` and keeps it with its reply.

    A request made again (two cases that begin alike) is answered with the reply already
    recorded instead of a second call, so the recording is exactly what a replay will
    answer, and it is not paid twice.
    """

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.model_is_label = inner.model_is_label
        self.interactions: list[Interaction] = []
        self._replies: dict[str, asyncio.Future[ChatResponse]] = {}

    def resolved_base_url(self) -> str | None:
        return self.inner.resolved_base_url()

    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse:
        key = cassette_key(request)
        earlier = self._replies.get(key)
        if earlier is not None:
            response = await asyncio.shield(earlier)  # a refusal raises here too
            if on_text is not None:
                on_text(response.text)
            return response
        pending: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        self._replies[key] = pending
        try:
            response = await self.inner.complete(request, on_text=on_text)
        except BadRequestError as exc:
            # A refusal is an answer: the run asks again differently, and so will a replay.
            self.interactions.append(
                Interaction(
                    request,
                    Refusal(exc.message, exc.status),
                    step=_current_step(),
                    case=current_case(),
                )
            )
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning if unused
            raise
        except BaseException as exc:
            # A failed call is not recorded: a later identical request tries again.
            del self._replies[key]
            if isinstance(exc, Exception):
                pending.set_exception(exc)
                pending.exception()  # retrieved: no "never retrieved" warning if unused
            else:
                pending.cancel()
            raise
        pending.set_result(response)
        self.interactions.append(
            Interaction(request, response, step=_current_step(), case=current_case())
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def cassette(
        self,
        *,
        case_order: Sequence[str] = (),
        step_order: Sequence[str] = (),
        timings: Mapping[str, CaseTiming] | None = None,
    ) -> Cassette:
        """What was recorded, in a stable order (by case, then step, then request), so
        recording the same thing twice writes the same file."""
        cases = {name: i for i, name in enumerate(case_order)}
        steps = {name: i for i, name in enumerate(step_order)}

        def order(x: Interaction) -> tuple[int, int, int, int, str]:
            base = _base_step(x.step)
            step_rank = steps.get(base, len(steps)) if base is not None else len(steps) + 1
            item = x.step.split("[", 1)[1].rstrip("]") if x.step and "[" in x.step else ""
            return (
                cases.get(x.case or "", len(cases)),
                step_rank,
                int(item) if item.isdigit() else -1,
                len(x.request.messages),  # a repair comes after the attempt it repairs
                describe_request(x.request),
            )

        return Cassette(
            interactions=sorted(self.interactions, key=order),
            provider=self.inner.name,
            endpoint=self.inner.resolved_base_url(),
            timings=dict(timings or {}),
        )


class ReplayProvider:
    """Answers from a cassette: no network, no key. ``record_hint`` is what to run to
    record the cassette again (said when a request is not found)."""

    def __init__(
        self, cassette: Cassette, *, source: str = "the cassette", record_hint: str = ""
    ) -> None:
        self.cassette = cassette
        self.source = source
        self.record_hint = record_hint
        self.name = "cassette"
        # A local model answers for the model the request names: show the one recorded.
        self.model_is_label = is_local_url(cassette.endpoint)
        self.used: set[str] = set()  # keys of the recorded requests that were asked for

    def resolved_base_url(self) -> str | None:
        # Prices follow where the recording's requests went, so a replay costs what the
        # recording did (None: the mock, priced as the workflow's provider would be).
        return self.cassette.endpoint

    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse:
        found = self.cassette.find(request)
        if found is None:
            raise self.miss(request)
        self.used.add(found.key)
        response = found.response
        if isinstance(response, Refusal):
            raise BadRequestError(response.message, status=response.status)
        if on_text is not None:
            on_text(response.text)
        return response

    async def aclose(self) -> None:
        return None

    def miss(self, request: ChatRequest) -> CassetteMissError:
        """The error for a request that is not in the cassette, with what changed."""
        step, case = _current_step(), current_case()
        if step is None:
            who = "a request"
        elif step == JUDGE_STEP:
            who = "the judge's request"
        else:
            who = f"step `{step}`: the request"
        prefix = f"case `{case}`, " if case and step is not None else ""
        prefix = f"case `{case}`: " if case and step is None else prefix
        hint = (
            f"if the change is intended, record again: {self.record_hint}"
            if self.record_hint
            else "if the change is intended, record the cassette again"
        )
        closest = self.closest(request, step)
        if closest is None:
            what = f"step `{_base_step(step)}`" if step and step != JUDGE_STEP else "it"
            return CassetteMissError(
                f"{prefix}{who} is not in {self.source}: nothing was recorded for {what} "
                "(new since the recording?)",
                step=step,
                hint=hint,
            )
        by = f" (closest: recorded by case `{closest.case}`)" if closest.case != case else ""
        return CassetteMissError(
            f"{prefix}{who} is not in {self.source}",
            step=step,
            changes=f"  what changed since it was recorded{by}:\n"
            + request_diff(closest.request, request),
            hint=hint,
        )

    def closest(self, request: ChatRequest, step: str | None) -> Interaction | None:
        """The recorded request of the same step (any case) most like ``request``."""
        base = _base_step(step)
        same = [x for x in self.cassette.interactions if _base_step(x.step) == base]
        if not same:
            return None
        case = current_case()
        text = describe_request(request)

        def likeness(x: Interaction) -> tuple[float, bool]:
            ratio = difflib.SequenceMatcher(None, describe_request(x.request), text).ratio()
            return (ratio, x.case == case)

        return max(same, key=likeness)


def describe_request(request: ChatRequest) -> str:
    """A request as text, for people to read and diff: the model and settings, then each
    message under its role."""
    lines = [f"model: {request.model}"]
    for key, value in request.params().items():
        if isinstance(value, dict):
            # One line per value, so a change inside a schema shows as one changed line.
            text = json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)
            lines += [f"{key}:", *(f"  {line}" for line in text.splitlines())]
        else:
            shown = value if isinstance(value, (int, float)) else json.dumps(value)
            lines.append(f"{key}: {shown}")
    for message in request.messages:
        name = f" ({message['name']})" if "name" in message else ""
        lines.append(f"[{message['role']}{name}]")
        lines.extend(message["content"].splitlines() or [""])
    return "\n".join(lines)


def request_diff(recorded: ChatRequest, now: ChatRequest) -> str:
    """A unified diff from the recorded request to this one, indented for a message."""
    diff = list(
        difflib.unified_diff(
            describe_request(recorded).splitlines(),
            describe_request(now).splitlines(),
            "recorded",
            "now",
            n=2,
            lineterm="",
        )
    )
    if len(diff) > _MAX_DIFF_LINES:
        more = len(diff) - _MAX_DIFF_LINES
        diff = [*diff[:_MAX_DIFF_LINES], f"... {more} more line{'s' * (more != 1)} of changes"]
    return "\n".join(f"    {line}" for line in diff)


def _current_step() -> str | None:
    call = current_call()
    return call.step if call is not None else None
