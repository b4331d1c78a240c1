"""Secrets where they must not be (issue 15), end to end:

- an `sk-` key anywhere in a workflow's text (a mapping key, under `pricing:`, a comment)
  or in a prompt file, and a private key in a prompt file, fail `validate` and `run` at the
  line that holds them, the key never repeated and nothing sent;
- prompt files in hidden folders (`.ssh/`, `.config/`) are refused unless allowed;
- `user:password@` in `provider.base_url` fails `validate`, and never reaches the store;
- a reply that echoes the key in use is scrubbed from what `run` prints and writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flowgpt import Engine, MockProvider, SpecError, load_workflow
from flowgpt.accounting.checks import check_file
from flowgpt.store import RunStore
from tests.support.fake_openai import FakeOpenAI, Reply

KEY = "sk-proj-Zq0demoKEYdonotuse0123456789"
ESCAPED_KEY = KEY.replace("p", "\\x70", 1)  # YAML reads "\x70" in double quotes as "p"
PRIVATE = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)

BASE = """\
version: 1
name: secrets
defaults: {model: gpt-4o-mini, max_tokens: 20}
inputs:
  topic: {type: string, default: tea}
steps:
  - id: one
    prompt: "About {{ inputs.topic }}"
"""


def _check(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> list[Any]:
    for name, content in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content, encoding="utf-8")
    path = tmp_path / "wf.yaml"
    path.write_text(text, encoding="utf-8")
    return [d for d in check_file(path) if d.severity == "error"]


def _refused_before_any_request(path: Path) -> SpecError:
    mock = MockProvider()
    with pytest.raises(SpecError) as caught:
        Engine(provider=mock).run_sync(load_workflow(path))
    assert mock.requests == []
    return caught.value


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # a key as a mapping key of an input default
        (BASE.replace("  topic:", f"  doc: {{type: object, default: {{{KEY}: 1}}}}\n  topic:"), 5),
        # a key as a model name under pricing:
        (BASE + f"pricing:\n  {KEY}: {{input: 1, output: 1}}\n", 10),
        # a key in a comment
        (BASE.replace("steps:", f"# the key is {KEY}\nsteps:"), 6),
        # a key in a block scalar that is a prompt
        (BASE.replace('prompt: "About {{ inputs.topic }}"', f"prompt: |\n      use {KEY}"), 9),
        # a key after \n escapes in a quoted prompt: its line, once (not a line guessed
        # from the escapes)
        (BASE.replace('"About {{ inputs.topic }}"', f'"hello\\n\\nkey {KEY}"'), 8),
        # a key that only YAML's escapes spell out: the line of its value
        (BASE.replace('"About {{ inputs.topic }}"', f'"use {ESCAPED_KEY}"'), 8),
    ],
    ids=["mapping-key", "pricing", "comment", "block", "escaped-newlines", "escaped-key"],
)
def test_a_key_anywhere_in_the_workflow_is_an_error_at_its_line(
    tmp_path: Path, text: str, line: int
) -> None:
    errors = _check(tmp_path, text)
    assert [(d.line, d.code) for d in errors] == [(line, "secret")], errors
    assert "API key (sk-...)" in errors[0].message
    error = _refused_before_any_request(tmp_path / "wf.yaml")
    assert KEY not in error.format() and KEY[10:20] not in error.format()


@pytest.mark.parametrize(
    ("content", "line", "said"),
    [
        (f"Summarise.\nUse the key {KEY} for it.\n", 2, "API key (sk-...) is written in a prompt"),
        (f"Summarise this:\n{PRIVATE}", 2, "private key is written in a prompt file"),
    ],
)
def test_a_prompt_file_holding_a_key_is_an_error_at_its_line(
    tmp_path: Path, content: str, line: int, said: str
) -> None:
    text = BASE.replace('prompt: "About {{ inputs.topic }}"', "prompt_file: prompts/ask.md")
    errors = _check(tmp_path, text, {"prompts/ask.md": content})
    assert len(errors) == 1 and errors[0].line == line and said in errors[0].message, errors
    assert errors[0].file == str(tmp_path / "prompts/ask.md")
    assert "sent to the API" in (errors[0].hint or "")
    error = _refused_before_any_request(tmp_path / "wf.yaml")
    assert KEY not in error.format() and "b3BlbnNzaC1rZXkt" not in error.format()


@pytest.mark.parametrize("name", [".ssh/id_ed25519", ".config/app/token.md", "prompts/.env"])
def test_a_prompt_file_in_a_hidden_folder_is_refused_unread(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWGPT_ALLOW_HIDDEN_FILES", raising=False)
    text = BASE.replace('prompt: "About {{ inputs.topic }}"', f"prompt_file: {name}")
    errors = _check(tmp_path, text, {name: "HIDDEN-CONTENT-7f3a"})
    assert len(errors) == 1 and "points into a hidden file or folder" in errors[0].message
    assert "FLOWGPT_ALLOW_HIDDEN_FILES=1" in (errors[0].hint or "")
    assert all("HIDDEN-CONTENT" not in d.format() for d in errors)


def test_a_link_into_a_hidden_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".private").mkdir()
    (tmp_path / ".private" / "notes.md").write_text("HIDDEN-CONTENT-7f3a", encoding="utf-8")
    (tmp_path / "prompts").symlink_to(tmp_path / ".private")
    text = BASE.replace('prompt: "About {{ inputs.topic }}"', "prompt_file: prompts/notes.md")
    errors = _check(tmp_path, text)
    assert len(errors) == 1 and "(`.private`)" in errors[0].message


def test_hidden_prompt_files_are_read_when_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BASE.replace('prompt: "About {{ inputs.topic }}"', "prompt_file: .github/ask.md")
    files = {".github/ask.md": "Ask about {{ inputs.topic }}."}
    monkeypatch.setenv("FLOWGPT_ALLOW_HIDDEN_FILES", "1")
    assert _check(tmp_path, text, files) == []
    mock = MockProvider(["ok"])
    Engine(provider=mock).run_sync(load_workflow(tmp_path / "wf.yaml"))
    assert mock.requests[0].messages[-1]["content"] == "Ask about tea."
    monkeypatch.delenv("FLOWGPT_ALLOW_HIDDEN_FILES")
    assert load_workflow(tmp_path / "wf.yaml", allow_hidden_files=True).files


def test_credentials_in_base_url_are_an_error_and_never_stored(tmp_path: Path) -> None:
    text = BASE.replace(
        "steps:", "provider: {base_url: 'https://deploy:hunter2-pw@llm.example/v1'}\nsteps:"
    )
    errors = _check(tmp_path, text)
    assert [(d.line, d.code) for d in errors] == [(6, "secret")]
    assert "user name or password" in errors[0].message
    assert all("hunter2" not in d.format() for d in errors)
    # The store redacts a URL's password from whatever it is given.
    with RunStore(tmp_path / "runs.sqlite3") as store:
        store.start_run("r1", workflow_name="w", workflow_text=text, workflow_path=None, inputs={})
    with sqlite3.connect(tmp_path / "runs.sqlite3") as conn:
        (stored,) = conn.execute("SELECT workflow_text FROM runs").fetchone()
    assert "hunter2" not in stored and "https://[redacted]@llm.example/v1" in stored


@pytest.mark.timeout(60)
def test_a_reply_echoing_the_key_is_scrubbed_from_output(tmp_path: Path) -> None:
    # A key of any shape (this one is not sk-...): the key in use is what is scrubbed.
    key = "my-gateway-token-4f9d1c2b7e"
    text = BASE.replace("steps:", "provider: {api_key_env: GATEWAY_KEY}\nsteps:")
    (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
    echo = f"I was called with {key}; here it is again: {key}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    with FakeOpenAI(responder=lambda body: Reply(echo)) as server:
        env.update(GATEWAY_KEY=key, OPENAI_BASE_URL=server.base_url)
        runs = [
            subprocess.run(
                [sys.executable, "-m", "flowgpt", "run", "wf.yaml", *extra],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp_path,
                timeout=60,
            )
            for extra in ([], ["--json"], ["-o", "out.json"])
        ]
    for done in runs:
        assert done.returncode == 0, done.stderr
        assert key not in done.stdout + done.stderr
    assert "I was called with [redacted key]; here it is again: [redacted key]" in runs[0].stdout
    assert "[redacted key]" in json.dumps(json.loads(runs[1].stdout))
    written = (tmp_path / "out.json").read_text(encoding="utf-8")
    assert key not in written and "[redacted key]" in written
