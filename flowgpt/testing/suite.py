"""A test file -> a checked ``Suite``: the cases, the workflow they run, the cassette they
replay, and every mistake found before anything runs, at ``file:line`` like ``validate``.

A test file names its workflow and cassette with ``workflow:`` and ``cassette:``; by
default they are the files beside it named as ``flowgpt.testing.paths`` says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from flowgpt import templating
from flowgpt.errors import Diagnostic, InputError, SpecError
from flowgpt.spec.diagnostics import did_you_mean
from flowgpt.spec.inputs import resolve_inputs
from flowgpt.spec.loader import load_workflow, read_document, validate_document
from flowgpt.spec.output import check_schema
from flowgpt.spec.workflow import SourceMap, Workflow
from flowgpt.store.cassettes import Cassette, load_cassette
from flowgpt.testing.models import SuiteSpec
from flowgpt.testing.paths import cassette_path_for, stem

__all__ = ["Suite", "check_test_file", "load_suite"]

_START = (
    "start with `cases:`, a list of `- name:`, `inputs:` and `expect:`; "
    "see docs/testing.md or `flowgpt schema --test`"
)
# Says what judges when neither the test file nor the workflow names a model.
_JUDGE_HINT = "set `judge_model:` at the top of the test file, or `model:` on the expectation"


@dataclass
class Suite:
    """A loaded test file: its cases, the workflow they run and the cassette they replay."""

    spec: SuiteSpec
    path: Path
    workflow: Workflow
    cassette_path: Path
    source_map: SourceMap | None = None

    @property
    def judge_model(self) -> str | None:
        return self.spec.judge_model or self.workflow.spec.defaults.model

    def where(self, *doc_path: str | int) -> str:
        """``file:line`` of a value in the test file (for reports)."""
        if self.source_map is None:
            return str(self.path)
        loc = self.source_map.locate(doc_path)
        return f"{loc.file}:{loc.line}" if loc.line is not None else str(loc.file)

    def record_command(self) -> str:
        """The command that records this suite's cassette."""
        return f"flowgpt test {self.path} --record"

    def load_cassette(self) -> Cassette:
        """The cassette a replay answers from; SpecError (saying how to record it) when it
        is missing or not a cassette."""
        return load_cassette(
            self.cassette_path, record_hint=f"record it first: {self.record_command()}"
        )


def _located(smap: SourceMap, path: Sequence[str | int], message: str, hint: str) -> Diagnostic:
    loc = smap.locate(path)
    return Diagnostic(message, loc.file, loc.line, loc.col, hint=hint, code="test")


def _unknown(
    smap: SourceMap,
    at: Sequence[str | int],
    what: str,
    name: str | None,
    known: Sequence[str],
    hint: str,
) -> list[Diagnostic]:
    """An expectation's ``step:`` or ``output:`` (``what``) that the workflow does not have."""
    if name is None or name in known:
        return []
    return [
        _located(smap, (*at, what), f"unknown {what} `{name}`{did_you_mean(name, known)}", hint)
    ]


def _check(suite: Suite, smap: SourceMap) -> list[Diagnostic]:
    """What is wrong with the cases, seen against the workflow (nothing is run)."""
    found: list[Diagnostic] = []
    wf = suite.workflow.spec
    steps = wf.step_ids
    outputs = list(wf.outputs)
    seen: dict[str, int] = {}
    for i, case in enumerate(suite.spec.cases):
        if case.name in seen:
            first = smap.locate(("cases", seen[case.name], "name")).line
            found.append(
                _located(
                    smap,
                    ("cases", i, "name"),
                    f"duplicate case name `{case.name}` (first used on line {first})",
                    "case names must be unique; rename one of them",
                )
            )
        seen.setdefault(case.name, i)
        try:
            resolve_inputs(wf, case.inputs)
        except InputError as exc:
            for d in exc.diagnostics:
                found.append(
                    _located(
                        smap,
                        ("cases", i, "inputs"),
                        f"case `{case.name}`: {d.message}",
                        d.hint or "give the inputs the workflow declares",
                    )
                )
        for j, expect in enumerate(case.expect):
            at = ("cases", i, "expect", j)
            found += _unknown(
                smap, at, "step", expect.step, steps, f"the workflow's steps: {', '.join(steps)}"
            )
            found += _unknown(
                smap,
                at,
                "output",
                expect.output,
                outputs,
                f"the workflow's outputs: {', '.join(outputs)}"
                if outputs
                else "the workflow has no `outputs:`; check a step with `step:`",
            )
            kind = expect.kind
            if kind == "schema":
                for where, problem in check_schema(expect.schema_ or {}):
                    found.append(
                        _located(
                            smap,
                            (*at, "schema", *where),
                            f"invalid JSON Schema: {problem}",
                            "see https://json-schema.org/understanding-json-schema/",
                        )
                    )
            elif kind == "regex":
                try:
                    re.compile(expect.regex or "")
                except re.error as exc:
                    found.append(
                        _located(
                            smap,
                            (*at, "regex"),
                            f"invalid regular expression: {exc}",
                            "quote the pattern in single quotes so YAML keeps backslashes",
                        )
                    )
            elif kind == "expr":
                try:
                    templating.parse_expression(expect.expr or "")
                except templating.TemplateSyntaxProblem as exc:
                    found.append(
                        _located(
                            smap,
                            (*at, "expr"),
                            f"`expr`: {exc.detail}",
                            "a bare Jinja expression over `value`, e.g. "
                            "`value.split() | length >= 50`",
                        )
                    )
            elif kind == "judge" and expect.model is None and suite.judge_model is None:
                found.append(
                    _located(smap, (*at, "judge"), "no model to answer `judge:`", _JUDGE_HINT)
                )
    return found


def _beside(tests: Path, name: str) -> Path:
    """``name`` relative to the test file's folder, without ``..`` in what is shown."""
    return Path(os.path.normpath(tests.parent / name))


def load_suite(path: str | Path, *, workflow: str | Path | None = None) -> Suite:
    """Load and check a test file. ``workflow`` replaces the one the file names (to run
    the same cases against another version of it). Raises SpecError with every mistake."""
    tests = Path(path)
    _, data, smap = read_document(tests, what="test file", start_hint=_START)
    spec, diagnostics = validate_document(SuiteSpec, data, smap)
    if spec is None:
        diagnostics.sort(key=lambda d: (d.line or 0, d.col or 0))
        raise SpecError(f"{tests}: the test file is not valid", diagnostics=diagnostics)
    if workflow is not None:
        workflow_path = Path(workflow)
    else:
        if spec.workflow is not None:
            workflow_path = _beside(tests, spec.workflow)
            title = f"the workflow {spec.workflow} is not there"
            at: tuple[str, ...] = ("workflow",)
            message = f"workflow file not found: {workflow_path}"
            hint = "`workflow:` is relative to the test file"
        else:
            workflow_path = tests.with_name(stem(tests) + ".yaml")
            title, at = "which workflow does it test?", ()
            message = f"no `workflow:` and no {workflow_path.name} beside the test file"
            hint = "add `workflow: NAME.yaml` (relative to the test file)"
        if not workflow_path.is_file():
            raise SpecError(f"{tests}: {title}", diagnostics=[_located(smap, at, message, hint)])
    cassette = _beside(tests, spec.cassette) if spec.cassette else cassette_path_for(tests)
    suite = Suite(
        spec=spec,
        path=tests,
        workflow=load_workflow(workflow_path),
        cassette_path=cassette,
        source_map=smap,
    )
    problems = _check(suite, smap)
    if problems:
        problems.sort(key=lambda d: (d.line or 0, d.col or 0))
        raise SpecError(f"{tests}: the test file is not valid", diagnostics=problems)
    return suite


def check_test_file(path: str | Path) -> list[Diagnostic]:
    """Every mistake in a test file (and in the workflow it tests), for ``validate``."""
    try:
        load_suite(path)
    except SpecError as exc:
        return [replace(d, file=d.file or str(path)) for d in exc.diagnostics]
    return []
