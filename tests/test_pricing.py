"""Prices: overrides, genai-prices figures, the disk cache, formatting."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from genai_prices import types as gp

from flowgpt.accounting import prices as pricing
from flowgpt.accounting._cache import user_cache_dir
from flowgpt.accounting.prices import (
    ModelPrice,
    cost_of,
    is_openai_url,
    resolve_price,
    worst_case_cost,
)
from flowgpt.money import format_usd
from flowgpt.spec.models import PriceSpec
from flowgpt.usage import Usage
from tests.support.fake_openai import FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parent.parent

D = Decimal


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own cache folder and a process with nothing remembered."""
    path = tmp_path / "flowgpt-cache"
    monkeypatch.setenv("FLOWGPT_CACHE_DIR", str(path))
    pricing._caches.clear()
    yield path
    pricing._caches.clear()


def _genai_model_price(model: str) -> Any:
    snapshot = genai_prices.data_snapshot.get_snapshot()
    _, info = snapshot.find_provider_model(model, None, "openai", None)
    return info.get_prices(dt.datetime.now(dt.timezone.utc))


def _cache_files(path: Path) -> list[Path]:
    return sorted(path.glob("genai-prices-*.json"))


# ---------------------------------------------------------------- resolve_price


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "gpt-4o-2024-08-06", "o3", "gpt-4.1"])
def test_genai_prices_figures(model: str) -> None:
    price = resolve_price(model)
    expected = _genai_model_price(model)
    assert price == ModelPrice(
        input=expected.input_mtok,
        cached_input=expected.cache_read_mtok,
        output=expected.output_mtok,
        source="genai-prices",
    )


def test_known_figures_for_gpt_4o_mini() -> None:
    assert resolve_price("gpt-4o-mini") == ModelPrice(
        D("0.15"), D("0.075"), D("0.6"), source="genai-prices"
    )


def test_no_cached_rate_means_the_input_rate() -> None:
    # genai-prices has no cached rate for this snapshot and bills cached tokens as input
    price = resolve_price("gpt-4o-2024-05-13")
    assert price is not None
    assert price.cached_input == price.input


def test_override_wins() -> None:
    overrides = {
        "gpt-4o-mini": PriceSpec(input=D("1"), output=D("2")),
        "my-finetune": PriceSpec(input=D("0.30"), output=D("1.20"), cached_input=D("0.15")),
    }
    assert resolve_price("gpt-4o-mini", overrides=overrides) == ModelPrice(
        D("1"), D("1"), D("2"), source="workflow"
    )
    assert resolve_price("my-finetune", overrides=overrides) == ModelPrice(
        D("0.30"), D("0.15"), D("1.20"), source="workflow"
    )
    # an override also prices a model behind another server
    assert resolve_price(
        "my-finetune", base_url="http://localhost:11434/v1", overrides=overrides
    ) == ModelPrice(D("0.30"), D("0.15"), D("1.20"), source="workflow")


def test_unknown_model_is_unpriced_never_zero() -> None:
    assert resolve_price("no-such-model-xyz") is None
    assert resolve_price("gpt-nonexistent-9") is None
    assert cost_of(Usage(100, 50), "no-such-model-xyz") is None
    assert worst_case_cost(100, 50, None) is None
    assert format_usd(None) == "unpriced"


def test_models_not_priced_per_token_are_unpriced() -> None:
    assert resolve_price("whisper-1") is None


@pytest.mark.parametrize(
    "base_url",
    [
        "http://localhost:11434/v1",
        "http://127.0.0.1:8000/v1",
        "https://api.together.xyz/v1",
        "https://eu.api.openai.com/v1",
        "https://api.openai.com.evil.example/v1",
        "not a url",
    ],
)
def test_openai_names_are_priced_wherever_requests_go_unless_the_workflow_says(
    base_url: str,
) -> None:
    # Relays in front of OpenAI bill its model names at its prices: budgets keep working.
    assert not is_openai_url(base_url)
    assert resolve_price("gpt-4o", base_url=base_url) == resolve_price("gpt-4o")
    assert cost_of(Usage(100, 50), "gpt-4o", base_url=base_url) == cost_of(Usage(100, 50), "gpt-4o")
    # `provider.prices: pricing`: only the workflow's own entries; `none`: nothing.
    assert resolve_price("gpt-4o", base_url=base_url, prices="pricing") is None
    assert cost_of(Usage(100, 50), "gpt-4o", base_url=base_url, prices="pricing") is None
    own = {"gpt-4o": PriceSpec(input=1, output=2)}
    assert resolve_price("gpt-4o", overrides=own, prices="pricing").source == "workflow"  # type: ignore[union-attr]
    assert resolve_price("gpt-4o", overrides=own, prices="none") is None
    assert cost_of(Usage(100, 50), "gpt-4o", overrides=own, prices="none") is None


@pytest.mark.parametrize(
    "base_url",
    [None, "https://api.openai.com/v1", "https://api.openai.com/v1/", " https://API.openai.com "],
)
def test_openai_urls_are_priced(base_url: str | None) -> None:
    assert is_openai_url(base_url)
    assert resolve_price("gpt-4o-mini", base_url=base_url) is not None


# ---------------------------------------------------------------- cost_of


# A usage as the API reports it: prompt_tokens include the cached ones, completion_tokens
# include the reasoning ones.
USAGE = Usage(
    prompt_tokens=12_345, completion_tokens=2_500, cached_tokens=4_096, reasoning_tokens=1_024
)


def _raw_response(model: str, usage: Usage) -> dict[str, Any]:
    return {
        "model": model,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        },
    }


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "o3", "o4-mini"])
def test_cost_of_equals_genai_prices(model: str) -> None:
    cost = cost_of(USAGE, model)
    assert cost is not None and cost > 0

    by_calc_price = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=USAGE.prompt_tokens,
            cache_read_tokens=USAGE.cached_tokens,
            output_tokens=USAGE.completion_tokens,
        ),
        model,
        provider_id="openai",
    ).total_price
    assert cost == by_calc_price

    # genai-prices reading the raw Chat Completions reply itself agrees
    extracted = genai_prices.extract_usage(
        _raw_response(model, USAGE), provider_id="openai", api_flavor="chat"
    )
    assert cost == extracted.calc_price().total_price

    # and reasoning tokens are billed once, as output (no double count)
    price = resolve_price(model)
    assert price is not None
    by_hand = (
        (USAGE.prompt_tokens - USAGE.cached_tokens) * price.input
        + USAGE.cached_tokens * price.cached_input
        + USAGE.completion_tokens * price.output
    ) / 1_000_000
    assert cost == by_hand


def _openai_models() -> list[str]:
    snapshot = genai_prices.data_snapshot.get_snapshot()
    (openai,) = [p for p in snapshot.providers if p.id == "openai"]
    return [m.id for m in openai.models]


def test_every_openai_model_is_priced_as_genai_prices_reads_the_reply() -> None:
    """Whatever the model (reasoning, audio, image, search, tiered), cost_of gives the
    price genai-prices gives when it reads the raw Chat Completions reply itself."""
    models = _openai_models()
    assert len(models) > 50
    priced = 0
    for model in models:
        try:
            expected = (
                genai_prices.extract_usage(
                    _raw_response(model, USAGE), provider_id="openai", api_flavor="chat"
                )
                .calc_price()
                .total_price
            )
        except LookupError:  # a name genai-prices lists but does not price
            assert cost_of(USAGE, model) is None
            continue
        assert cost_of(USAGE, model) == expected, model
        priced += 1
    assert priced > 50


def test_cost_of_gpt_4o_mini_figure() -> None:
    usage = Usage(
        prompt_tokens=1000, completion_tokens=500, cached_tokens=400, reasoning_tokens=200
    )
    # 600 * 0.15 + 400 * 0.075 + 500 * 0.6 = 420 micro-dollars
    assert cost_of(usage, "gpt-4o-mini") == D("0.00042")


def test_cost_of_uses_overrides() -> None:
    overrides = {"gpt-4o": PriceSpec(input=D("1"), output=D("4"), cached_input=D("0.5"))}
    expected = ((12_345 - 4_096) * D(1) + 4_096 * D("0.5") + 2_500 * D(4)) / 1_000_000
    assert cost_of(USAGE, "gpt-4o", overrides=overrides) == expected
    assert cost_of(USAGE, "gpt-4o", base_url="http://localhost:1/v1", overrides=overrides) == (
        expected
    )
    # cached_input defaults to the input price
    plain = {"local": PriceSpec(input=D("2"), output=D("3"))}
    assert cost_of(Usage(1_000, 1_000, cached_tokens=500), "local", overrides=plain) == D("0.005")
    # a model declared free really costs $0
    free = {"llama3": PriceSpec(input=D(0), output=D(0))}
    zero = cost_of(USAGE, "llama3", base_url="http://localhost:11434/v1", overrides=free)
    assert zero == 0
    assert format_usd(zero) == "$0"


# ---------------------------------------------------------------- worst case


def test_worst_case_cost() -> None:
    price = ModelPrice(D("0.15"), D("0.075"), D("0.6"), source="genai-prices")
    # the prompt at the uncached rate, every allowed output token used
    assert worst_case_cost(1_000, 800, price) == (1_000 * D("0.15") + 800 * D("0.6")) / 1_000_000
    assert worst_case_cost(0, 0, price) == 0


def test_worst_case_counts_dearer_cache_writes() -> None:
    price = ModelPrice(D("1"), D("0.1"), D("6"), source="genai-prices", cache_write=D("1.25"))
    assert worst_case_cost(1_000, 100, price) == (1_000 * D("1.25") + 100 * D(6)) / 1_000_000


def _info(prices: Any) -> Any:
    return gp.ModelInfo(id="m", match=gp.ClauseEquals(equals="m"), prices=prices)


NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.timezone.utc)


def test_tiered_prices_use_the_highest_tier() -> None:
    entry = pricing._flatten(
        _info(
            gp.ModelPrice(
                input_mtok=gp.TieredPrices(base=D(1), tiers=[gp.Tier(start=272_000, price=D(2))]),
                cache_read_mtok=gp.TieredPrices(
                    base=D("0.1"), tiers=[gp.Tier(start=272_000, price=D("0.2"))]
                ),
                output_mtok=gp.TieredPrices(base=D(6), tiers=[gp.Tier(start=272_000, price=D(9))]),
            )
        ),
        NOW,
    )
    assert entry == {
        "input": "2",
        "cached_input": "0.2",
        "output": "9",
        "cache_write": None,
        "valid_until": None,
        "batch": None,  # no batch variant: half the standard rates
    }


def test_conditional_prices_follow_the_date_and_expire() -> None:
    info = _info(
        [
            gp.ConditionalPrice(prices=gp.ModelPrice(input_mtok=D(5), output_mtok=D(15))),
            gp.ConditionalPrice(
                constraint=gp.StartDateConstraint(start_date=dt.date(2025, 6, 1)),
                prices=gp.ModelPrice(input_mtok=D(4), output_mtok=D(12)),
            ),
            gp.ConditionalPrice(
                constraint=gp.StartDateConstraint(start_date=dt.date(2026, 3, 1)),
                prices=gp.ModelPrice(input_mtok=D(3), output_mtok=D(9)),
            ),
        ]
    )
    entry = pricing._flatten(info, NOW)
    assert entry is not None
    assert (entry["input"], entry["output"], entry["valid_until"]) == ("4", "12", "2026-03-01")
    later = pricing._flatten(info, dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc))
    assert later is not None
    assert (later["input"], later["valid_until"]) == ("3", None)


def test_time_of_day_prices_take_the_highest() -> None:
    info = _info(
        [
            gp.ConditionalPrice(prices=gp.ModelPrice(input_mtok=D(2), output_mtok=D(8))),
            gp.ConditionalPrice(
                constraint=gp.TimeOfDateConstraint(
                    start_time=dt.time(16, 30), end_time=dt.time(0, 30)
                ),
                prices=gp.ModelPrice(input_mtok=D(1), output_mtok=D(4)),
            ),
        ]
    )
    for hour in (3, 17):
        entry = pricing._flatten(info, NOW.replace(hour=hour))
        assert entry is not None
        assert (entry["input"], entry["output"]) == ("2", "8")


# ---------------------------------------------------------------- the disk cache


def _run(code: str, cache: Path) -> str:
    env = {**os.environ, "FLOWGPT_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


WARM_CHECK = """
import sys
from flowgpt.accounting.prices import resolve_price
price = resolve_price("gpt-4o-mini")
other = resolve_price("gpt-4.1-mini-2025-04-14")
print(price.input, price.cached_input, price.output, other is not None,
      "genai_prices" in sys.modules)
"""


def test_warm_cache_does_not_import_genai_prices(cache_dir: Path) -> None:
    assert not _cache_files(cache_dir)
    cold = _run(WARM_CHECK, cache_dir)
    assert cold == "0.15 0.075 0.6 True True"  # the first process needed genai-prices
    assert len(_cache_files(cache_dir)) == 1
    warm = _run(WARM_CHECK, cache_dir)
    assert warm == "0.15 0.075 0.6 True False"


def test_importing_pricing_does_not_import_genai_prices(cache_dir: Path) -> None:
    assert _run(
        "import sys, flowgpt.accounting.prices; print('genai_prices' in sys.modules)", cache_dir
    ) == ("False")


VALIDATE_CHECK = """
import sys
from click.testing import CliRunner
from flowgpt.cli import main
result = CliRunner().invoke(main, ["validate", sys.argv[1]])
print(result.exit_code, "no known price" in result.output, "did you mean" in result.output,
      "genai_prices" in sys.modules)
"""


@pytest.mark.parametrize("prices", ["pricing", "none"])
def test_validate_without_openai_prices_does_not_read_the_price_list(
    prices: str, cache_dir: Path, tmp_path: Path
) -> None:
    # `provider.prices: pricing` (or none): OpenAI's list is not this endpoint's, so a
    # did-you-mean from it is not offered, and not computed either (no genai-prices import,
    # no cache file written), even for a name close to one OpenAI lists.
    workflow = tmp_path / "relay.yaml"
    workflow.write_text(
        f"version: 1\nname: relay\nprovider: {{prices: {prices}}}\n"
        "defaults: {model: gpt-4o-minii}\nsteps:\n  - id: a\n    prompt: hi\n"
    )
    env = {**os.environ, "FLOWGPT_CACHE_DIR": str(cache_dir)}
    out = subprocess.run(
        [sys.executable, "-c", VALIDATE_CHECK, str(workflow)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    assert out == "0 True False False"
    assert not _cache_files(cache_dir)


def _poison(cache_dir: Path, *, signature: str | None, valid_until: str | None = None) -> Path:
    """Leave a cache file claiming gpt-4o-mini costs $99."""
    resolve_price("gpt-4o-mini")
    (path,) = _cache_files(cache_dir)
    data = json.loads(path.read_text())
    if signature is not None:
        data["signature"] = signature
    data["models"]["gpt-4o-mini"] = {
        "input": "99",
        "cached_input": "99",
        "output": "99",
        "cache_write": None,
        "valid_until": valid_until,
    }
    path.write_text(json.dumps(data))
    pricing._caches.clear()
    return path


def test_the_cache_is_what_answers(cache_dir: Path) -> None:
    _poison(cache_dir, signature=None)
    price = resolve_price("gpt-4o-mini")
    assert price is not None and price.input == 99


def test_a_stale_signature_invalidates_the_cache(cache_dir: Path) -> None:
    path = _poison(cache_dir, signature="v1:0:0")
    price = resolve_price("gpt-4o-mini")
    assert price is not None and price.input == D("0.15")
    data = json.loads(path.read_text())  # rewritten for the installed data
    assert data["signature"] != "v1:0:0"
    assert data["models"]["gpt-4o-mini"]["input"] == "0.15"


def test_a_new_genai_prices_install_invalidates_the_cache(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison(cache_dir, signature=None)
    real = pricing._signature
    monkeypatch.setattr(pricing, "_signature", lambda d: f"{real(d)}-upgraded")
    price = resolve_price("gpt-4o-mini")
    assert price is not None and price.input == D("0.15")


def test_a_new_cache_format_invalidates_the_cache(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison(cache_dir, signature=None)
    monkeypatch.setattr(pricing, "_CACHE_FORMAT", pricing._CACHE_FORMAT + 1)
    price = resolve_price("gpt-4o-mini")
    assert price is not None and price.input == D("0.15")


def test_an_expired_entry_is_recomputed(cache_dir: Path) -> None:
    _poison(cache_dir, signature=None, valid_until="2000-01-01")
    price = resolve_price("gpt-4o-mini")
    assert price is not None and price.input == D("0.15")


def test_an_entry_is_used_until_its_valid_until_day(cache_dir: Path) -> None:
    _poison(cache_dir, signature=None, valid_until="2999-01-01")
    price = resolve_price("gpt-4o-mini")
    assert price is not None and price.input == 99


def test_a_price_with_an_end_day_is_not_kept_past_it(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long-running process asks again after the day a scheduled price change happens.
    _poison(cache_dir, signature=None, valid_until="2030-01-01")
    monkeypatch.setattr(pricing, "_today", lambda: dt.date(2029, 12, 31))
    first = resolve_price("gpt-4o-mini")
    assert first is not None and first.input == 99
    monkeypatch.setattr(pricing, "_today", lambda: dt.date(2030, 1, 1))
    later = resolve_price("gpt-4o-mini")
    assert later is not None and later.input == D("0.15")


def test_each_genai_prices_install_keeps_its_own_file(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_price("gpt-4o-mini")
    (first,) = _cache_files(cache_dir)
    real_dir = pricing._genai_prices_dir()
    assert real_dir is not None
    other = tmp_path / "other-venv" / "genai_prices"
    other.mkdir(parents=True)
    (other / "data.py").write_bytes((Path(real_dir) / "data.py").read_bytes())
    monkeypatch.setattr(pricing, "_genai_prices_dir", lambda: str(other))
    assert resolve_price("gpt-4o-mini") is not None
    assert len(_cache_files(cache_dir)) == 2  # the first install's file was left alone
    assert first.exists() and json.loads(first.read_text())["models"]


def test_a_damaged_cache_file_is_ignored(cache_dir: Path) -> None:
    resolve_price("gpt-4o-mini")
    (path,) = _cache_files(cache_dir)
    path.write_text("{not json")
    pricing._caches.clear()
    assert resolve_price("gpt-4o-mini") == ModelPrice(
        D("0.15"), D("0.075"), D("0.6"), source="genai-prices"
    )


def test_an_unwritable_cache_dir_is_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FLOWGPT_CACHE_DIR", str(blocker / "cache"))
    pricing._caches.clear()
    assert resolve_price("gpt-4o-mini") is not None
    assert resolve_price("no-such-model-xyz") is None


def test_user_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOWGPT_CACHE_DIR", str(tmp_path / "explicit"))
    assert user_cache_dir() == str(tmp_path / "explicit")
    monkeypatch.delenv("FLOWGPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == str(tmp_path / "xdg" / "flowgpt")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == str(tmp_path / "home" / ".cache" / "flowgpt")


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (None, "unpriced"),
        (D(0), "$0"),
        (D("0.000"), "$0"),
        (D("0.000435"), "$0.000435"),
        (D("0.00043512"), "$0.000435"),
        (D("0.00042"), "$0.00042"),
        (D("0.0000001"), "$0.0000001"),
        (D("0.0125"), "$0.0125"),
        (D("0.123456"), "$0.123"),
        (D("0.5"), "$0.50"),
        (D("0.999999"), "$1.00"),
        (D("1"), "$1.00"),
        (D("12.345"), "$12.35"),
        (D("1234.5"), "$1234.50"),
    ],
)
def test_format_usd(amount: Decimal | None, text: str) -> None:
    assert format_usd(amount) == text


def test_model_price_round_trips() -> None:
    price = ModelPrice(D("1.25"), D("0.125"), D("10"), source="genai-prices", cache_write=D("2"))
    assert ModelPrice.from_dict(json.loads(json.dumps(price.to_dict()))) == price


# ---------------------------------------------------------------- through a relay


def test_a_budgeted_workflow_through_a_relay_is_priced_at_openais_prices(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A reader of a Chinese API guide: OPENAI_BASE_URL points at a relay, the workflow has
    # a budget. validate, estimate and run agree that gpt-4o-mini is priced, and the run is
    # billed at OpenAI's list prices, with the table saying where the prices came from.
    from click.testing import CliRunner

    from flowgpt.cli import main

    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-relay-test-key")
    monkeypatch.setenv("COLUMNS", "200")
    workflow = str(ROOT / "workflows" / "note.yaml")
    plan = '{"title": "Tea", "points": ["grown in hills", "picked by hand"]}'
    for _ in range(2):  # two runs: plan (JSON), then write
        fake_openai.queue(Reply(plan, prompt_tokens=40, completion_tokens=20))
        fake_openai.queue(Reply("Tea is good.", prompt_tokens=50, completion_tokens=4))
    runner = CliRunner()
    checked = runner.invoke(main, ["validate", "--strict", workflow])
    assert checked.exit_code == 0, checked.output
    estimated = runner.invoke(main, ["estimate", workflow, "-i", "topic=tea", "--json"])
    assert estimated.exit_code == 0, estimated.output
    bound = D(json.loads(estimated.stdout)["worst_cost_usd"])
    ran = runner.invoke(main, ["run", workflow, "-i", "topic=tea", "--json", "--no-store"])
    assert ran.exit_code == 0, ran.output
    doc = json.loads(ran.stdout)
    expected = sum(
        (
            cost_of(Usage(s["usage"]["prompt_tokens"], s["usage"]["completion_tokens"]), s["model"])
            or D(0)
            for s in doc["steps"]
        ),
        D(0),
    )
    assert D(doc["cost_usd"]) == expected > 0
    assert D(doc["cost_usd"]) <= bound  # the estimate is a true bound
    assert fake_openai.base_url.rstrip("/") in doc["price_note"]
    table = runner.invoke(main, ["run", workflow, "-i", "topic=tea", "--no-store"])
    assert "prices are OpenAI's list prices" in table.output
    # A workflow that says its endpoint bills otherwise: unpriced everywhere, so validate
    # --strict refuses and the run's budget cannot be enforced.
    text = Path(workflow).read_text().replace("budget:", "provider: {prices: pricing}\nbudget:")
    path = tmp_path / "note.yaml"
    path.write_text(text)
    strict = runner.invoke(main, ["validate", "--strict", str(path)])
    assert strict.exit_code == 2 and "no known price" in strict.output
    refused = runner.invoke(main, ["run", str(path), "-i", "topic=tea", "--no-store"])
    assert refused.exit_code == 1 and "cannot be enforced" in refused.output


# ---------------------------------------------------------------- Batch API rates


def test_batch_rates_are_genai_prices_batch_variant_where_it_has_one() -> None:
    _, info = genai_prices.data_snapshot.get_snapshot().find_provider_model(
        "gpt-4o-mini", None, "openai", None
    )
    now = dt.datetime.now(dt.timezone.utc)
    own = info.get_prices(now, {"processing": "batch"})
    assert pricing._batch_variants(info, now), "genai-prices lost its batch prices?"
    price = resolve_price("gpt-4o-mini", batch=True)
    assert price is not None and price.batch
    assert (price.input, price.output) == (own.input_mtok, own.output_mtok)
    by_calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=USAGE.prompt_tokens,
            cache_read_tokens=USAGE.cached_tokens,
            output_tokens=USAGE.completion_tokens,
        ),
        "gpt-4o-mini",
        provider_id="openai",
        price_context={"processing": "batch"},
    ).total_price
    assert cost_of(USAGE, "gpt-4o-mini", batch=True) == by_calc
    full = cost_of(USAGE, "gpt-4o-mini")
    assert full is not None and by_calc < full


def test_batch_rates_are_half_where_genai_prices_has_none() -> None:
    # gpt-3.5-turbo-1106's batch variant sets no token rate: OpenAI's half price applies.
    standard = resolve_price("gpt-3.5-turbo-1106")
    batch = resolve_price("gpt-3.5-turbo-1106", batch=True)
    assert standard is not None and batch is not None and batch.batch and not standard.batch
    assert (batch.input, batch.cached_input, batch.output) == (
        standard.input / 2,
        standard.cached_input / 2,
        standard.output / 2,
    )
    full = cost_of(USAGE, "gpt-3.5-turbo-1106")
    assert full is not None and cost_of(USAGE, "gpt-3.5-turbo-1106", batch=True) == full / 2


def test_batch_rates_of_overrides_are_given_or_half() -> None:
    half = {"m": PriceSpec(input=D("1"), output=D("4"), cached_input=D("0.5"))}
    price = resolve_price("m", overrides=half, batch=True)
    assert price == ModelPrice(D("0.5"), D("0.25"), D("2"), source="workflow", batch=True)
    full = cost_of(USAGE, "m", overrides=half)
    assert full is not None and cost_of(USAGE, "m", overrides=half, batch=True) == full / 2
    given = {
        "m": PriceSpec.model_validate(
            {"input": 1, "output": 4, "batch": {"input": "0.3", "output": "1.5"}}
        )
    }
    price = resolve_price("m", overrides=given, batch=True)
    assert price == ModelPrice(D("0.3"), D("0.3"), D("1.5"), source="workflow", batch=True)
    expected = (USAGE.prompt_tokens * D("0.3") + USAGE.completion_tokens * D("1.5")) / 1_000_000
    assert cost_of(USAGE, "m", overrides=given, batch=True) == expected
    # unpriced stays unpriced, local stays free
    assert resolve_price("nobody-knows", batch=True) is None
    assert cost_of(USAGE, "gpt-4o", prices="pricing", batch=True) is None
    assert cost_of(USAGE, "anything", base_url="local", batch=True) == 0


def test_a_batch_variant_announced_ahead_expires_the_entry() -> None:
    info = gp.ModelInfo(
        id="m",
        match=gp.ClauseEquals(equals="m"),
        prices=gp.ModelPrice(input_mtok=D(2), output_mtok=D(8)),
        price_variants=[
            gp.PriceVariant(
                when={"processing": "batch"},
                prices=gp.ModelPrice(input_mtok=D("0.8"), output_mtok=D(3)),
                constraint=gp.StartDateConstraint(start_date=dt.date(2026, 2, 1)),
            )
        ],
    )
    before = pricing._flatten(info, NOW)
    assert before is not None
    assert (before["batch"], before["valid_until"]) == (None, "2026-02-01")
    after = pricing._flatten(info, dt.datetime(2026, 2, 2, tzinfo=dt.timezone.utc))
    assert after is not None and after["valid_until"] is None
    assert (after["batch"]["input"], after["batch"]["output"]) == ("0.8", "3")


def test_batch_prices_round_trip_and_are_stored_as_such() -> None:
    price = ModelPrice(D("0.5"), D("0.25"), D("2"), source="workflow", batch=True)
    assert ModelPrice.from_dict(json.loads(json.dumps(price.to_dict()))) == price
    assert ModelPrice.from_dict({"input": "1", "cached_input": "1", "output": "1",
                                 "source": "workflow"}).batch is False  # fmt: skip
