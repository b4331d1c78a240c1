"""The pure-Python counter gives exactly tiktoken's counts (it stands in for it in short
commands such as `flowgpt estimate`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowgpt.accounting import tokens
from flowgpt.bpe import PureCounter, RanksFile, write_ranks_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(
    scope="module",
    params=[(n, k) for n in ("o200k_base", "cl100k_base") for k in ("dict", "file")],
    ids=lambda p: "-".join(p),
)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PureCounter, object]:
    name, kind = request.param
    encoding = tokens.get_encoding(name)  # writes the marshal file the counter reads
    kwargs = tokens._fast_kwargs.__wrapped__(name)
    assert kwargs is not None
    if kind == "dict":
        return PureCounter(kwargs["pat_str"], kwargs["mergeable_ranks"]), encoding
    path = str(tmp_path_factory.mktemp("ranks") / f"{name}.sqlite3")
    write_ranks_file(path, kwargs["pat_str"], kwargs["mergeable_ranks"])
    ranks = RanksFile(path)
    assert ranks.pat_str == kwargs["pat_str"]
    return PureCounter(ranks.pat_str, ranks), encoding


def _same(pair: tuple[PureCounter, object], text: str) -> None:
    """The pure count equals tiktoken's wherever the counter says it is sure, and what
    flowgpt counts with (falling back to tiktoken elsewhere) always does."""
    counter, encoding = pair
    expected = len(encoding.encode_ordinary(text))  # type: ignore[attr-defined]
    if counter.agrees_on(text):
        assert counter.count(text) == expected
    assert tokens._count_pure(counter, encoding.name, text) == expected  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_counts_the_same(pair: tuple[PureCounter, object], text: str) -> None:
    _same(pair, text)


@settings(max_examples=100, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from([*"aeiou xyzTHE\n\t.,;:!?'\"0123456789", "ing", "tion", "  ", "\n\n"]),
        max_size=120,
    )
)
def test_word_like_text_counts_the_same(
    pair: tuple[PureCounter, object], pieces: list[str]
) -> None:
    _same(pair, "".join(pieces))


def test_real_files_count_the_same(pair: tuple[PureCounter, object]) -> None:
    for path in [*ROOT.glob("docs/*.md"), *ROOT.glob("workflows/**/*.yaml"), ROOT / "README.md"]:
        _same(pair, path.read_text(encoding="utf-8"))
    _same(pair, "绿茶是什么？请用三句话回答。 " * 20 + "Ünïcödé — emoji 🍵🍵 <|endoftext|>")


# Characters newer than this Python's Unicode database: the regex module may call them
# letters where tiktoken's Rust regex does not (hypothesis found U+3D000).
@pytest.mark.parametrize("text", ["\U0003d000:A", "a\U0003d000b 12", "\U000e0080x"])
def test_characters_unknown_to_python_are_counted_by_tiktoken(
    pair: tuple[PureCounter, object], text: str
) -> None:
    counter, _ = pair
    assert not counter.agrees_on(text)
    _same(pair, text)


def test_count_text_is_exact_for_characters_unknown_to_python() -> None:
    text = "\U0003d000:A"
    expected = len(tokens.get_encoding("cl100k_base").encode_ordinary(text))
    assert tokens._counter("gpt-4", len(text))(text) == expected == 6


def test_count_tokens_is_the_same_before_and_after_the_encoder_is_built() -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is green tea? 绿茶 🍵", "name": "ada"},
    ]
    counter = tokens._counter("gpt-4o-mini", 10)
    encode = tokens.get_encoding("o200k_base").encode_ordinary
    assert counter("What is green tea? 绿茶 🍵") == len(encode("What is green tea? 绿茶 🍵"))
    assert tokens.count_tokens(messages, "gpt-4o-mini") == 3 + 2 * 3 + 1 + sum(
        len(encode(v)) for m in messages for v in m.values()
    )


def test_a_second_process_counts_from_the_ranks_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "from flowgpt import tokens\n"
        "n = tokens.count_text('Green tea, 绿茶 🍵', 'gpt-4o-mini')\n"
        "assert not tokens._BUILT  # tiktoken's encoder was never built\n"
        "print(n)\n"
    )
    counts = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout.strip()
        for _ in range(2)  # the first may write the ranks file, the second reads it
    ]
    expected = len(tokens.get_encoding("o200k_base").encode_ordinary("Green tea, 绿茶 🍵"))
    assert counts == [str(expected)] * 2
    assert list((Path(tokens.tiktoken_cache_dir() or "") / "flowgpt").glob("o200k*.sqlite3"))
