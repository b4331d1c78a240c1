"""Every error flowgpt raises, split by who must act.

    FlowgptError                     base class; ``exit_code`` and ``hint`` live here
    ├── SpecError          (exit 2)  the workflow file or the command line is wrong;
    │   │                            carries one Diagnostic per mistake found
    │   ├── InputError               a run's inputs do not match the declared ``inputs:``
    │   └── TemplateError            a template failed to render (names the step and the name)
    └── RunError           (exit 1)  the workflow is fine but the run could not finish
        ├── ProviderError            the model API failed; ``status`` and ``retryable``
        │   ├── AuthenticationError      401/403: wrong or missing key (names the env variable)
        │   ├── ModelNotFoundError       404: the model does not exist for this key
        │   ├── BadRequestError          400: the API refused the request (its own message)
        │   ├── RateLimitError           429: still rate limited at the wait cap
        │   ├── QuotaExceededError       429 insufficient_quota: retrying cannot help
        │   ├── ServerError              5xx after the retries were spent
        │   ├── ConnectionError          timeouts, resets, refused connections
        │   └── MalformedResponseError   the reply could not be read
        ├── OutputValidationError    the reply failed validation and the retries are spent
        ├── BudgetExceededError      the next call could break the run's budget
        ├── ContextWindowError       the prompt plus max_tokens cannot fit the model's window
        ├── CassetteMissError        a replayed request is not in the cassette (it changed)
        └── InterruptedRunError      Ctrl-C; finished steps are stored

Messages never contain an API key: ``redact`` is applied to every message built here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "API_KEY_RE",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "CassetteMissError",
    "ConnectionError",
    "ContextWindowError",
    "Diagnostic",
    "FlowgptError",
    "InputError",
    "InterruptedRunError",
    "MalformedResponseError",
    "ModelNotFoundError",
    "OutputValidationError",
    "ProviderError",
    "QuotaExceededError",
    "RateLimitError",
    "RunError",
    "ServerError",
    "SpecError",
    "TemplateError",
    "redact",
]

# An OpenAI key (sk-..., sk-proj-..., sk-svcacct-...): what redact removes, and what the
# workflow checks (flowgpt.spec) refuse in a file.
API_KEY_RE = re.compile(r"sk-[A-Za-z0-9_\-]{16,}")
# Keys and bearer tokens.
_KEY_RE = re.compile(rf"({API_KEY_RE.pattern}|Bearer\s+[A-Za-z0-9_\-\.]{{16,}})")
# The user:password@ of a URL (scheme://user:password@host).
_URL_CREDENTIALS_RE = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]*@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace anything that looks like an API key, and a URL's password, with a marker;
    ``secrets`` (the keys in use, whatever their shape) too."""
    for secret in secrets:
        text = text.replace(secret, "[redacted key]")
    text = _KEY_RE.sub("[redacted key]", text)
    if "@" in text:
        text = _URL_CREDENTIALS_RE.sub("[redacted]@", text)
    return text


@dataclass(frozen=True)
class Diagnostic:
    """One mistake found in a workflow: where it is, what is wrong, what to do."""

    message: str
    file: str | None = None
    line: int | None = None
    col: int | None = None
    hint: str | None = None
    severity: Literal["error", "warning"] = "error"
    code: str = "spec"

    def location(self) -> str:
        if self.file is None and self.line is None:
            return ""  # not about a place in a file (a command-line or run-time problem)
        parts = [self.file or "<workflow>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)

    def format(self) -> str:
        where = self.location()
        head = f"{where + ': ' if where else ''}{self.severity}: {redact(self.message)}"
        if self.hint:
            head += f"\n  {redact(self.hint)}"
        return head

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "code": self.code,
            "message": redact(self.message),
            "hint": redact(self.hint) if self.hint else None,
        }


class FlowgptError(Exception):
    """Base class of every flowgpt error."""

    exit_code: int = 1
    # The partial RunResult, when the error ended a run (set by the engine).
    result: Any = None
    # What kind of problem it is, for programs (the command line adds its own options to
    # the hint by it: the library's hints name no command-line flags).
    code: str | None = None

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        self.message = redact(message)
        self.hint = redact(hint) if hint else None
        if code is not None:
            self.code = code
        super().__init__(self.message)

    def format(self) -> str:
        return f"{self.message}\n  {self.hint}" if self.hint else self.message


class SpecError(FlowgptError):
    """The workflow or the command line is wrong; fix the file and try again."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        diagnostics: list[Diagnostic] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, code=code)
        self.diagnostics: list[Diagnostic] = diagnostics or [
            Diagnostic(message=message, hint=hint, code=code or "spec")
        ]

    def format(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)


class InputError(SpecError):
    """The inputs given to a run do not match the workflow's ``inputs:``."""


class TemplateError(SpecError):
    """A template could not be rendered at run time."""

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        hint: str | None = None,
        diagnostics: list[Diagnostic] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, diagnostics=diagnostics)
        self.step = step


class RunError(FlowgptError):
    """The run could not finish; what was spent so far is reported. ``step``: the step it
    happened at, when one did."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        step: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, code=code)
        self.step = step


class ProviderError(RunError):
    """The model API failed."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        retries: int = 0,
        code: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, code=code)
        self.status = status
        self.retries = retries


class AuthenticationError(ProviderError):
    """401/403: the key is missing, wrong, or lacks permission."""


class ModelNotFoundError(ProviderError):
    """404: the model does not exist or this key cannot use it."""


class BadRequestError(ProviderError):
    """400/422: the API refused the request."""


class RateLimitError(ProviderError):
    """429: still rate limited when the wait cap (provider.max_rate_limit_wait_s) was reached."""

    retryable = True


class QuotaExceededError(ProviderError):
    """429 insufficient_quota: the account is out of credit; retrying cannot help."""


class ServerError(ProviderError):
    """5xx: the API failed on its side, after the retries were spent."""

    retryable = True


class ConnectionError(ProviderError):
    """The API could not be reached or did not answer in time."""

    retryable = True


class MalformedResponseError(ProviderError):
    """The API answered with something that is not a valid Chat Completions reply."""

    retryable = True


class OutputValidationError(RunError):
    """A step's reply failed validation on every attempt."""

    def __init__(
        self,
        message: str,
        *,
        step: str,
        failures: list[str],
        last_output: str,
        attempts: int,
        hint: str | None = None,
        usage: Any = None,
        cost_usd: Any = None,
    ) -> None:
        super().__init__(message, hint=hint, step=step)
        self.failures = failures
        self.last_output = last_output
        self.attempts = attempts
        self.usage = usage
        self.cost_usd = cost_usd

    def format(self) -> str:
        last = self.last_output if len(self.last_output) <= 600 else self.last_output[:600] + "…"
        failures = "\n".join(f"  - {f}" for f in self.failures)
        shown = "\n".join(f"    {line}" for line in redact(last).splitlines())
        text = f"{self.message}\n{failures}\n  last output:\n{shown}"
        return f"{text}\n  {self.hint}" if self.hint else text


class BudgetExceededError(RunError):
    """The next call could break the run's budget, so it was not made."""


class ContextWindowError(RunError):
    """The prompt plus max_tokens does not fit the model's context window."""


class CassetteMissError(RunError):
    """A request replayed from a cassette was not recorded: it changed since (``changes``
    shows how, against the closest recorded request of the same step)."""

    def __init__(
        self, message: str, *, step: str | None, changes: str = "", hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint, step=step)
        self.changes = redact(changes)

    def format(self) -> str:
        text = f"{self.message}\n{self.changes}" if self.changes else self.message
        return f"{text}\n  {self.hint}" if self.hint else text


class InterruptedRunError(RunError):
    """The run was interrupted (Ctrl-C); finished steps are stored."""

    exit_code = 130
