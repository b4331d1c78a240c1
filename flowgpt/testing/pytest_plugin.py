"""A pytest plugin: each case of every ``*.test.yaml`` file pytest collects is a test item,
replayed from its cassette (offline, no key), for projects that embed flowgpt.

It is opt-in, so installing flowgpt changes no one's test run. Turn it on in a
``conftest.py``::

    pytest_plugins = ["flowgpt.testing.pytest_plugin"]

then ``pytest workflows/`` collects ``workflows/article.test.yaml::green tea`` and the
others (or list the folder in ``testpaths``). A failing case shows what ``flowgpt test``
shows: the expectation, its file:line and the actual value, or what changed in a request.
The only module of flowgpt that imports pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowgpt.errors import SpecError
from flowgpt.store.cassettes import Cassette
from flowgpt.testing.paths import is_test_file
from flowgpt.testing.runner import run_suite_sync
from flowgpt.testing.suite import Suite, load_suite

__all__ = ["CaseItem", "TestFile", "pytest_collect_file"]


class CaseFailed(Exception):
    """A case that did not pass; its text is the explanation."""


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.File | None:
    if is_test_file(file_path):
        file: pytest.File = TestFile.from_parent(parent, path=file_path)
        return file
    return None


class TestFile(pytest.File):
    """A test file: one item per case."""

    __test__ = False  # a pytest node, not a test class of someone's module
    _cassette: Cassette | None = None

    def cassette(self, suite: Suite) -> Cassette:
        """The suite's cassette, read once for all its cases (SpecError if it cannot be)."""
        if self._cassette is None:
            self._cassette = suite.load_cassette()
        return self._cassette

    def collect(self) -> Iterator[pytest.Item]:
        try:
            suite = load_suite(self.path)
        except SpecError as exc:
            raise self.CollectError(exc.format()) from None
        for case in suite.spec.cases:
            yield CaseItem.from_parent(self, name=case.name, suite=suite)


class CaseItem(pytest.Item):
    """One case, replayed from the cassette."""

    def __init__(self, *, suite: Suite, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite

    def runtest(self) -> None:
        file = self.getparent(TestFile)
        cassette = file.cassette(self.suite) if file is not None else None
        result = run_suite_sync(self.suite, cases=[self.name], cassette=cassette)
        if not result.ok:
            raise CaseFailed(result.explain())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, (CaseFailed, SpecError)):
            value = excinfo.value
            return value.format() if isinstance(value, SpecError) else str(value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.path.name}::{self.name}"
