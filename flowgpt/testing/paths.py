"""Which files go together: ``NAME.test.yaml`` tests ``NAME.yaml`` and replays
``NAME.cassette.yaml``, all in one folder. Names only, no I/O (``validate`` reads these
to tell a test file or a cassette from a workflow without loading anything)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["cassette_path_for", "is_cassette_file", "is_test_file", "stem", "tests_path_for"]

_TEST_SUFFIXES = (".test.yaml", ".test.yml")
_CASSETTE_SUFFIXES = (".cassette.yaml", ".cassette.yml")


def is_test_file(path: str | Path) -> bool:
    """True for a test file's name (``NAME.test.yaml``)."""
    return str(path).endswith(_TEST_SUFFIXES)


def is_cassette_file(path: str | Path) -> bool:
    """True for a cassette's name (``NAME.cassette.yaml``)."""
    return str(path).endswith(_CASSETTE_SUFFIXES)


def stem(path: str | Path) -> str:
    """``NAME`` of ``NAME.test.yaml``, ``NAME.yaml`` or ``NAME.yml``."""
    name = Path(path).name
    for suffix in (*_TEST_SUFFIXES, ".yaml", ".yml"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def tests_path_for(workflow: str | Path) -> Path:
    """Where a workflow's test file is: ``NAME.test.yaml`` beside ``NAME.yaml``."""
    return Path(workflow).with_name(stem(workflow) + ".test.yaml")


def cassette_path_for(tests: str | Path) -> Path:
    """The default cassette of a test file: ``NAME.cassette.yaml`` beside it."""
    return Path(tests).with_name(stem(tests) + ".cassette.yaml")
