"""What the fast commands load: ``flowgpt --help``, ``schema``, ``validate`` and
``estimate`` must start quickly (issue 13's targets), so none of them imports the openai
SDK, rich, OpenTelemetry or the engine, and none imports genai-prices once its prices are
cached. A run imports OpenTelemetry only when tracing is on. Beyond
that each loads only what its job needs: jsonschema for the output schemas ``validate``
checks, tiktoken for the tokens ``estimate`` counts. Timings live in
tests/benchmarks/bench_startup.py, not here.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTICLE = str(ROOT / "workflows" / "article.yaml")
EXAMPLES = sorted(str(p) for p in (ROOT / "workflows").glob("*.yaml"))

HEAVY = [
    "openai",
    "rich",
    "genai_prices",
    "flowgpt.engine.engine",
    "flowgpt.engine.run",
    "tiktoken",
    "jsonschema",
    "starlette",  # the web stack of `flowgpt ui` (an extra)
    "uvicorn",
    "opentelemetry",
]

# Runs the CLI in a fresh interpreter, then reports which of the heavy modules it loaded.
_PROBE = """
import json, sys
from flowgpt.cli import main
heavy = json.loads(sys.argv[2])
sys.argv = ["flowgpt", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
loaded = [m for m in heavy if m in sys.modules]
print("\\nPROBE " + json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def probe(args: list[str], cache: Path, **variables: str) -> tuple[int, list[str], str]:
    """(exit code, heavy modules loaded, stderr) of one CLI run in a new process, with
    the environment variables ``variables`` added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OTEL_"))}
    env["FLOWGPT_CACHE_DIR"] = str(cache)
    env.update(variables)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    head, _, tail = proc.stderr.rpartition("\nPROBE ")
    assert tail, proc.stderr
    result = json.loads(tail)
    return result["code"], result["loaded"], head


# The heavy modules each command may load: what its own work needs, nothing else.
NEEDED = {
    "--help": set(),
    "schema": set(),
    "validate": {"jsonschema"},  # the workflows' output schemas are checked
    "estimate": {"jsonschema", "tiktoken"},  # validated, then tokens counted
}


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["schema"],
        ["validate", *EXAMPLES],
        ["estimate", ARTICLE, "-i", "topic=green tea"],
    ],
)
def test_fast_commands_load_only_what_they_need_once_prices_are_cached(
    args: list[str], tmp_path: Path
) -> None:
    probe(args, tmp_path)  # the first run may fill the price cache
    code, loaded, err = probe(args, tmp_path)
    assert code == 0, err
    assert set(loaded) <= NEEDED[args[0]], f"`flowgpt {' '.join(args)}` imported {loaded}"


@pytest.mark.parametrize(
    "args", [["validate", ARTICLE], ["estimate", ARTICLE, "-i", "topic=green tea"]]
)
def test_cold_commands_still_avoid_openai_rich_and_the_engine(
    args: list[str], tmp_path: Path
) -> None:
    code, loaded, err = probe(args, tmp_path / "empty-cache")
    assert code == 0, err
    assert not {"openai", "rich", "flowgpt.engine.engine", "flowgpt.engine.run"} & set(loaded)


def test_a_run_imports_opentelemetry_only_when_tracing_is_on(tmp_path: Path) -> None:
    args = ["run", ARTICLE, "-i", "topic=green tea", "--mock", "--no-store"]
    code, loaded, err = probe(args, tmp_path)
    assert code == 0, err
    assert "opentelemetry" not in loaded
    # The same run with the variable set (exporting nowhere) does load it: the probe sees it.
    off = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    code, loaded, err = probe(
        args, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", **off
    )
    assert code == 0, err
    assert "opentelemetry" in loaded


def _workflow(path: Path, schema: str) -> Path:
    path.write_text(
        "version: 1\nname: x\ndefaults: {model: gpt-4o-mini}\nsteps:\n  - id: a\n"
        f"    prompt: hi\n    output:\n      schema: {schema}\n"
    )
    return path


def test_an_invalid_schema_is_reported_where_it_is_written(tmp_path: Path) -> None:
    wf = _workflow(tmp_path / "bad.yaml", "{type: object, properties: {n: {minimum: ten}}}")
    code, _, err = probe(["validate", str(wf)], tmp_path / "cache")
    assert code == 2
    assert f"{wf}:8:" in err
    assert "invalid JSON Schema: 'ten' is not of type 'number'" in err


def test_validate_in_process_leaves_the_garbage_collector_as_it_was() -> None:
    from click.testing import CliRunner

    from flowgpt.cli import main

    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            result = CliRunner().invoke(main, ["validate", ARTICLE])
            assert result.exit_code == 0, result.output
            assert gc.isenabled() is enabled
        finally:
            gc.enable()


def test_the_startup_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.benchmarks import bench_startup

    assert bench_startup.main(["--runs", "1"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert [" ".join(r) for r in rows] == [
        "python -c",
        "flowgpt --help",
        "flowgpt validate",
        "flowgpt schema",
        "flowgpt estimate",
    ]  # the times themselves are not checked
