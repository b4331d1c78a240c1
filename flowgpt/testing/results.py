"""What ``flowgpt test`` produces: a result per expectation, per case and for the whole
test file, the per-model summary (the model matrix), and the text that explains a failure
(the command line, JUnit and pytest all show the same)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from flowgpt.money import sum_costs
from flowgpt.results import RunResult

__all__ = ["CaseResult", "CaseStatus", "ExpectationResult", "Mode", "ModelSummary", "SuiteResult"]

Mode = Literal["replay", "record", "live"]
# passed; failed: an expectation did not hold, or the run failed (a changed request in a
# replay, a reply that failed validation); error: the provider could not be reached.
CaseStatus = Literal["passed", "failed", "error"]


@dataclass
class ExpectationResult:
    """One expectation, checked."""

    kind: str
    subject: str  # what was checked: "output `article`", "step `outline`", "the case"
    description: str  # the expectation in words: 'contains "tea"'
    passed: bool
    actual: str | None = None  # the actual value, as shown to people
    detail: str | None = None  # why it failed (a diff, the schema errors, the judge's reason)
    where: str | None = None  # file:line of the expectation
    cost_usd: Decimal | None = Decimal(0)  # a judge's request costs; other checks are free

    def explain(self) -> str:
        head = f"{self.where}: " if self.where else ""
        lines = [f"{head}{self.subject} should {self.description}"]
        if self.detail:
            lines += [f"  {line}" for line in self.detail.splitlines()]
        if self.actual is not None:
            actual = self.actual.splitlines() or [""]
            lines.append(f"  actual: {actual[0]}")
            lines += [f"          {line}" for line in actual[1:]]
        return "\n".join(lines)


@dataclass
class CaseResult:
    """One case run once (for one model when models are compared)."""

    name: str
    status: CaseStatus
    model: str | None = None  # the model every step used; None: the workflow's own
    expectations: list[ExpectationResult] = field(default_factory=list)
    run: RunResult | None = None
    error: str | None = None  # why the run failed, as the error explains it
    latency_s: float = 0.0  # as recorded when replayed (a replay itself takes no time)
    where: str | None = None  # file:line of the case

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failures(self) -> list[ExpectationResult]:
        return [e for e in self.expectations if not e.passed]

    @property
    def cost_usd(self) -> Decimal | None:
        """What the workflow's run cost (judges not included); None when unpriced."""
        return self.run.cost_usd if self.run is not None else Decimal(0)

    @property
    def judge_cost_usd(self) -> Decimal | None:
        return sum_costs(e.cost_usd for e in self.expectations)

    @property
    def tokens(self) -> int:
        return self.run.usage.total_tokens if self.run is not None else 0

    def explain(self) -> str:
        """Why the case did not pass (empty when it did)."""
        parts = []
        if self.error:
            parts.append(self.error)
        parts += [e.explain() for e in self.failures]
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "status": self.status,
            "cost_usd": _money(self.cost_usd),
            "judge_cost_usd": _money(self.judge_cost_usd),
            "tokens": self.tokens,
            "latency_s": round(self.latency_s, 4),
            "error": self.error,
            "expectations": [
                {
                    "kind": e.kind,
                    "subject": e.subject,
                    "description": e.description,
                    "passed": e.passed,
                    "actual": e.actual,
                    "detail": e.detail,
                    "where": e.where,
                }
                for e in self.expectations
            ],
            "outputs": self.run.outputs if self.run is not None else None,
        }


@dataclass(frozen=True)
class ModelSummary:
    """One row of the model matrix."""

    model: str | None
    cases: int
    passed: int
    cost_usd: Decimal | None  # all cases together; None when unpriced
    latency_s: float  # the mean per case

    @property
    def pass_rate(self) -> float:
        return self.passed / self.cases if self.cases else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "cases": self.cases,
            "passed": self.passed,
            "pass_rate": round(self.pass_rate, 4),
            "cost_usd": _money(self.cost_usd),
            "mean_latency_s": round(self.latency_s, 4),
        }


@dataclass
class SuiteResult:
    """Every case of a test file, run once per model."""

    tests: str  # the test file
    workflow: str  # the workflow file
    mode: Mode
    cases: list[CaseResult] = field(default_factory=list)
    models: list[str | None] = field(default_factory=lambda: [None])
    cassette: str | None = None  # the cassette replayed or recorded
    cassette_written: bool = False
    notes: list[str] = field(default_factory=list)  # e.g. why the cassette was not written

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    @property
    def passed(self) -> int:
        return sum(c.status == "passed" for c in self.cases)

    @property
    def failed(self) -> int:
        return sum(c.status == "failed" for c in self.cases)

    @property
    def errors(self) -> int:
        return sum(c.status == "error" for c in self.cases)

    @property
    def cost_usd(self) -> Decimal | None:
        return sum_costs(c.cost_usd for c in self.cases)

    def summary(self, model: str | None) -> ModelSummary:
        cases = [c for c in self.cases if c.model == model]
        return ModelSummary(
            model=model,
            cases=len(cases),
            passed=sum(c.passed for c in cases),
            cost_usd=sum_costs(c.cost_usd for c in cases),
            latency_s=sum(c.latency_s for c in cases) / len(cases) if cases else 0.0,
        )

    def matrix(self) -> list[ModelSummary]:
        """Pass rate, cost and latency for each model compared."""
        return [self.summary(m) for m in self.models]

    def explain(self) -> str:
        """Every failing case and why, for an assertion message."""
        return "\n".join(
            f"case `{c.name}`{f' ({c.model})' if c.model else ''}: {c.status}\n{c.explain()}"
            for c in self.cases
            if not c.passed
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tests": self.tests,
            "workflow": self.workflow,
            "mode": self.mode,
            "cassette": self.cassette,
            "cassette_written": self.cassette_written,
            "ok": self.ok,
            "passed": self.passed,
            "failed": self.failed,
            "errors": self.errors,
            "cost_usd": _money(self.cost_usd),
            "models": [s.to_dict() for s in self.matrix()],
            "cases": [c.to_dict() for c in self.cases],
            "notes": self.notes,
        }


def _money(value: Decimal | None) -> str | None:
    # As in run results: a string keeps every digit; unpriced is null, never 0.
    return None if value is None else str(value)
