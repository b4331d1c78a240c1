"""Pydantic models of the test file (``NAME.test.yaml``, format version 1). No I/O here.

Like the workflow's models, every model forbids unknown keys, so a typo such as
``contain:`` is an error with a did-you-mean instead of an expectation silently ignored.
"""

# No `from __future__ import annotations`: pydantic evaluates the annotations (see
# flowgpt/spec/models.py).

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "EXPECT_KINDS",
    "LIMIT_KINDS",
    "VALUE_KINDS",
    "CaseSpec",
    "ExpectSpec",
    "LimitSpec",
    "SuiteSpec",
    "suite_json_schema",
]

IDENT = r"^[a-z_][a-z0-9_]*$"

# Expectations on a value (a step's output or a workflow output) ...
VALUE_KINDS: tuple[str, ...] = (
    "equals",
    "contains",
    "not_contains",
    "regex",
    "schema",
    "expr",
    "judge",
)
# ... and limits on what the case (or one step) used.
LIMIT_KINDS: tuple[str, ...] = ("cost_usd", "tokens", "latency_s")
EXPECT_KINDS: tuple[str, ...] = VALUE_KINDS + LIMIT_KINDS


def _new_list() -> list[Any]:
    return []


def _new_dict() -> dict[str, Any]:
    return {}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class LimitSpec(_Spec):
    """Bounds on a number: ``{max: 0.01}``, ``{min: 1, max: 5}``."""

    min: Decimal | None = Field(None, ge=0, description="The smallest value that passes.")
    max: Decimal | None = Field(None, ge=0, description="The largest value that passes.")

    @model_validator(mode="after")
    def _some_bound(self) -> "LimitSpec":
        if self.min is None and self.max is None:
            raise ValueError("a limit needs `max:` (or `min:`), e.g. `{max: 0.01}`")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"`min` ({self.min}) is above `max` ({self.max})")
        return self


class ExpectSpec(_Spec):
    """One expectation: what it looks at (``step:`` or ``output:``) and one kind of check.

    Value kinds (equals, contains, not_contains, regex, schema, expr, judge) need
    ``step:`` or ``output:``. Limits (cost_usd, tokens, latency_s) are on the whole case,
    or on one step with ``step:``.
    """

    # `contains: 2026` means the text "2026", as written.
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, frozen=True, coerce_numbers_to_str=True
    )

    step: str | None = Field(None, pattern=IDENT, description="Check this step's output.")
    output: str | None = Field(None, min_length=1, description="Check this workflow output.")
    equals: Any = Field(None, description="The value must equal this (text, number, JSON).")
    contains: str | None = Field(
        None, description="The text must contain this (other values: their JSON text)."
    )
    not_contains: str | None = Field(None, description="The text must not contain this.")
    regex: str | None = Field(None, description="A regular expression the text must match.")
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="A JSON Schema (Draft 2020-12) the value must match."
    )
    expr: str | None = Field(
        None,
        description="A sandboxed Jinja expression that must be true; it sees `value`, "
        "`inputs`, `outputs` and `steps`, e.g. `value.split() | length >= 50`.",
    )
    judge: str | None = Field(
        None,
        min_length=1,
        description="A yes/no question a model answers about the value; yes passes.",
    )
    model: str | None = Field(
        None, min_length=1, description="With judge: the model that answers (default: judge_model)."
    )
    cost_usd: LimitSpec | None = Field(None, description="Dollars the case (or step) may cost.")
    tokens: LimitSpec | None = Field(None, description="Tokens (in + out) it may use.")
    latency_s: LimitSpec | None = Field(None, description="Seconds it may take.")

    @model_validator(mode="after")
    def _one_kind(self) -> "ExpectSpec":
        kinds = [k for k in EXPECT_KINDS if k in self.kinds_given()]
        if len(kinds) != 1:
            found = f"found {', '.join(kinds)}" if kinds else "found none"
            raise ValueError(
                f"an expectation has exactly one kind ({found}); kinds: {', '.join(EXPECT_KINDS)}"
            )
        kind = kinds[0]
        if self.step is not None and self.output is not None:
            raise ValueError("give `step:` or `output:`, not both")
        if kind in VALUE_KINDS and self.step is None and self.output is None:
            raise ValueError(f"`{kind}` needs `step:` or `output:` to say what it checks")
        if kind in LIMIT_KINDS and self.output is not None:
            raise ValueError(
                f"`{kind}` limits the whole case, or one step with `step:`; not an output"
            )
        if self.model is not None and kind != "judge":
            raise ValueError("`model:` only goes with `judge:`")
        return self

    def kinds_given(self) -> set[str]:
        given = set(self.model_fields_set)
        if "schema_" in given:
            given = (given - {"schema_"}) | {"schema"}
        return given

    @property
    def kind(self) -> str:
        given = self.kinds_given()
        return next(k for k in EXPECT_KINDS if k in given)

    @property
    def value(self) -> Any:
        """What the kind compares against (the schema, the question, the limit...)."""
        kind = self.kind
        return self.schema_ if kind == "schema" else getattr(self, kind)


class CaseSpec(_Spec):
    """One test case: the inputs of one run and what must hold about it."""

    name: str = Field(min_length=1, description="Unique within the file; names the case.")
    description: str | None = None
    inputs: dict[str, Any] = Field(
        default_factory=_new_dict, description="The run's inputs, typed as the workflow says."
    )
    expect: list[ExpectSpec] = Field(
        default_factory=_new_list,
        description="What must hold; with none, the case passes when the run succeeds.",
    )


class SuiteSpec(_Spec):
    """A whole test file."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1] = Field(1, description="Format version; only 1 exists.")
    workflow: str | None = Field(
        None,
        min_length=1,
        description="The workflow file, relative to this file (default: NAME.yaml for "
        "NAME.test.yaml).",
    )
    cassette: str | None = Field(
        None,
        min_length=1,
        description="The cassette file, relative to this file (default: NAME.cassette.yaml).",
    )
    judge_model: str | None = Field(
        None,
        min_length=1,
        description="The model that answers `judge:` questions (default: the workflow's "
        "default model).",
    )
    cases: list[CaseSpec] = Field(min_length=1)


def suite_json_schema() -> dict[str, Any]:
    """The JSON Schema of the test-file format, as shipped in schemas/test.schema.json."""
    schema = SuiteSpec.model_json_schema(by_alias=True, mode="validation")
    schema["$id"] = "https://flowgpt.dev/schemas/test.schema.json"
    schema["title"] = "flowgpt test file (format version 1)"
    return schema
