"""What the fast commands load: ``flowgpt --help``, ``validate`` and ``schema`` must start
quickly (issue 2), so they never import the openai SDK, rich, the engine or genai-prices
(once its prices are cached), and ``validate`` imports jsonschema only for an output schema
it has not checked before. Timings live in tests/benchmarks/bench_startup.py, not here.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flowgpt.spec import output as validation
from flowgpt.spec.output import check_schema

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


def probe(args: list[str], cache: Path) -> tuple[int, list[str], str]:
    """(exit code, heavy modules loaded, stderr) of one CLI run in a new process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["FLOWGPT_CACHE_DIR"] = str(cache)
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


@pytest.mark.parametrize("args", [["--help"], ["schema"], ["validate", *EXAMPLES]])
def test_fast_commands_load_nothing_heavy_once_caches_are_warm(
    args: list[str], tmp_path: Path
) -> None:
    probe(args, tmp_path)  # the first run may fill the price and schema-check caches
    code, loaded, err = probe(args, tmp_path)
    assert code == 0, err
    assert loaded == [], f"`flowgpt {' '.join(args)}` imported {loaded}"


def test_a_cold_validate_still_avoids_openai_rich_and_the_engine(tmp_path: Path) -> None:
    code, loaded, err = probe(["validate", ARTICLE], tmp_path / "empty-cache")
    assert code == 0, err
    assert not {"openai", "rich", "flowgpt.engine.engine"} & set(loaded)


def _workflow(path: Path, schema: str) -> Path:
    path.write_text(
        "version: 1\nname: x\ndefaults: {model: gpt-4o-mini}\nsteps:\n  - id: a\n"
        f"    prompt: hi\n    output:\n      schema: {schema}\n"
    )
    return path


def test_an_invalid_schema_is_reported_the_same_from_the_cache(tmp_path: Path) -> None:
    wf = _workflow(tmp_path / "bad.yaml", "{type: object, properties: {n: {minimum: ten}}}")
    cache = tmp_path / "cache"
    first = probe(["validate", str(wf)], cache)
    again = probe(["validate", str(wf)], cache)
    assert first[0] == again[0] == 2
    assert "jsonschema" in first[1] and "jsonschema" not in again[1]
    assert f"{wf}:8:" in first[2]
    assert "invalid JSON Schema: 'ten' is not of type 'number'" in first[2]
    assert again[2] == first[2]


def test_a_changed_schema_is_checked_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wf = _workflow(tmp_path / "wf.yaml", "{type: object}")
    assert probe(["validate", str(wf)], cache)[0] == 0
    _workflow(wf, "{type: objekt}")
    code, loaded, err = probe(["validate", str(wf)], cache)
    assert code == 2 and "jsonschema" in loaded
    assert f"{wf}:8:" in err and "invalid JSON Schema" in err


# -- the schema-check cache, in process ---------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLOWGPT_CACHE_DIR", str(tmp_path))
    return tmp_path / "schema-checks"


BAD: dict[str, Any] = {"type": "object", "properties": {"n": {"type": 3}}, "required": "n"}


def _uncached(schema: dict[str, Any]) -> Any:
    return validation._metaschema_problems(schema)


def test_cached_answers_equal_fresh_ones(cache_dir: Path) -> None:
    expected = _uncached(BAD)
    assert len(expected) == 2
    assert check_schema(BAD) == expected  # miss: computed and stored
    assert len(list(cache_dir.glob("*.json"))) == 1
    assert check_schema(BAD) == expected  # hit
    assert check_schema({"type": "object"}) == []
    assert len(list(cache_dir.glob("*.json"))) == 2


def test_a_damaged_cache_entry_is_recomputed(cache_dir: Path) -> None:
    check_schema(BAD)
    (entry,) = cache_dir.glob("*.json")
    for damage in [
        "{not json",
        '{"problems": [[["x"], 3]]}',
        "[]",
        '{"problems": [[[true], "m"]]}',
        '{"problems": [["path", "m"]]}',
    ]:
        entry.write_text(damage)
        assert check_schema(BAD) == _uncached(BAD)


def test_an_unwritable_cache_folder_only_costs_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FLOWGPT_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    assert check_schema(BAD) == _uncached(BAD)


def test_the_key_follows_content_and_jsonschema_install(monkeypatch: pytest.MonkeyPatch) -> None:
    key = validation._schema_cache_key
    assert key({"type": "object"}) == key({"type": "object"})
    # jsonschema reports in the schema's key order, so order is part of the identity
    assert key({"type": "object", "title": "a"}) != key({"title": "a", "type": "object"})
    assert key({"minimum": 1}) != key({"minimum": 1.0}) != key({"minimum": True})
    before = key({"type": "object"})
    monkeypatch.setattr(validation, "_package_stamp", lambda name: f"{name}-99.0")
    assert key({"type": "object"}) != before


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "default": datetime.date(2024, 1, 2)},
        {"enum": [{1: "int key"}]},
        {"const": float("nan")},
    ],
)
def test_values_json_cannot_say_exactly_are_checked_without_the_cache(
    schema: dict[str, Any], cache_dir: Path
) -> None:
    assert validation._schema_cache_key(schema) is None
    check_schema(schema)
    assert not cache_dir.exists()


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
