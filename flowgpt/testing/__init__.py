"""Tests of whole workflows (``flowgpt test``): cases in a test file beside the workflow,
expectations on steps and outputs, cassettes recorded once and replayed offline, the
report, JUnit XML and a pytest plugin.

    from flowgpt.testing import load_suite, run_suite_sync

    result = run_suite_sync(load_suite("workflows/note.test.yaml"))   # replays the cassette
    assert result.ok, result.explain()

The package's modules: ``models`` (the test-file format), ``suite`` (loading and checking a
test file), ``cassette`` (the recording and replaying providers), ``judge``, ``expect``
(checking one expectation), ``runner``, ``results``, ``junit`` and ``pytest_plugin``.
Exports load on first use, so ``flowgpt validate`` and ``schema`` stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowgpt.testing.cassette import RecordingProvider, ReplayProvider
    from flowgpt.testing.junit import junit_xml
    from flowgpt.testing.models import CaseSpec, ExpectSpec, LimitSpec, SuiteSpec
    from flowgpt.testing.results import CaseResult, ExpectationResult, ModelSummary, SuiteResult
    from flowgpt.testing.runner import run_suite, run_suite_sync
    from flowgpt.testing.suite import Suite, load_suite

_EXPORTS: dict[str, str] = {
    "CaseResult": "flowgpt.testing.results",
    "CaseSpec": "flowgpt.testing.models",
    "ExpectSpec": "flowgpt.testing.models",
    "ExpectationResult": "flowgpt.testing.results",
    "LimitSpec": "flowgpt.testing.models",
    "ModelSummary": "flowgpt.testing.results",
    "RecordingProvider": "flowgpt.testing.cassette",
    "ReplayProvider": "flowgpt.testing.cassette",
    "Suite": "flowgpt.testing.suite",
    "SuiteResult": "flowgpt.testing.results",
    "SuiteSpec": "flowgpt.testing.models",
    "junit_xml": "flowgpt.testing.junit",
    "load_suite": "flowgpt.testing.suite",
    "run_suite": "flowgpt.testing.runner",
    "run_suite_sync": "flowgpt.testing.runner",
}

__all__ = [
    "CaseResult",
    "CaseSpec",
    "ExpectSpec",
    "ExpectationResult",
    "LimitSpec",
    "ModelSummary",
    "RecordingProvider",
    "ReplayProvider",
    "Suite",
    "SuiteResult",
    "SuiteSpec",
    "junit_xml",
    "load_suite",
    "run_suite",
    "run_suite_sync",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowgpt.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
