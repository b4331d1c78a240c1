"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the price and tokenizer caches out of the user's home and /tmp."""
    mp = pytest.MonkeyPatch()
    root: Path = tmp_path_factory.mktemp("caches")
    mp.setenv("FLOWGPT_CACHE_DIR", str(root / "flowgpt"))
    mp.setenv("TIKTOKEN_CACHE_DIR", str(root / "tiktoken"))
    mp.setenv("FLOWGPT_STORE", str(root / "runs.sqlite3"))
    mp.delenv("OPENAI_API_KEY", raising=False)
    mp.delenv("OPENAI_BASE_URL", raising=False)
    for name in list(os.environ):
        if name.startswith("OTEL_"):  # tracing is on only where a test turns it on
            mp.delenv(name)
    yield
    mp.undo()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server on 127.0.0.1 (see tests/support/fake_openai.py)."""
    with FakeOpenAI() as server:
        yield server
