"""`flowgpt ui` in a real browser: Debian's chromium, headless, driven by Playwright (the
system browser: Playwright's own browser downloads are never used).

Over a store with a few `--mock` runs and a batch made by the command line, a 3-step run
whose JSON step was repaired, and a run whose prompt and reply hold hostile HTML: the runs
page lists them with the right totals and its filters work; the run page shows the step
graph, both attempts and the messages; the hostile reply is text and runs no script (with
the Content-Security-Policy, and without it); every page loads nothing from elsewhere and
breaks no rule of its own CSP.

Skipped, saying why, where no chromium (or no Playwright) is installed; .ci/run installs
both. With FLOWGPT_DOC_SCREENSHOTS=1 the tests also write docs/images/ui-*.png, the
screenshots of docs/ui.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flowgpt.money import format_usd, sum_costs
from flowgpt.store import BatchSummary, RunFilter, RunStore
from flowgpt.ui._pages import resume_command
from tests.support.ui_runs import (
    HOSTILE,
    HOSTILE_IMG,
    HOSTILE_SCRIPT,
    LOCAL_MODEL,
    ROOT,
    FilledStore,
    UIProcess,
    fill_store,
)

CHROMIUM = os.environ.get("FLOWGPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# A headless chromium that talks to no one but the page: no Google services, updates,
# sync or QUIC probes. Playwright's launch() gives it a fresh, temporary --user-data-dir.
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests may run as root (CI containers)
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "docs" / "images"
WANT_SCREENSHOTS = os.environ.get("FLOWGPT_DOC_SCREENSHOTS") == "1"


def _screenshot(target: Any, name: str, **options: Any) -> None:
    """Save a screenshot for docs/ui.md when FLOWGPT_DOC_SCREENSHOTS=1."""
    if WANT_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target.screenshot(path=str(SCREENSHOTS / name), **options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no chromium at {CHROMIUM}: the browser tests need a real browser"
            " (apt-get install chromium, as .ci/run does; or set FLOWGPT_CHROMIUM)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> FilledStore:
    # In a thread of its own: Playwright's sync API keeps an event loop running in this
    # one, where the runs (asyncio.run inside) could not start.
    folder = tmp_path_factory.mktemp("ui-browser")
    if WANT_SCREENSHOTS:  # a short path for the pictures to show
        folder = Path(tempfile.gettempdir()) / "flowgpt-ui-demo"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fill_store, folder).result()


@pytest.fixture(scope="module")
def ui(filled: FilledStore) -> Iterator[UIProcess]:
    with UIProcess(filled.path) as server:
        yield server


class Watch:
    """What a page did besides rendering: dialogs opened (a script ran), requests made,
    console errors (a CSP violation is one)."""

    def __init__(self) -> None:
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.errors: list[str] = []


def _new_page(browser: Any, ui: UIProcess, **context: Any) -> tuple[Any, Any, Watch]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, **context)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    watch = Watch()

    def on_dialog(dialog: Any) -> None:
        watch.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("request", lambda request: watch.requests.append(request.url))
    page.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    return ctx, page, watch


@pytest.fixture
def page(browser: Any, ui: UIProcess) -> Iterator[Any]:
    """A page in a fresh context; afterwards: no script ran, nothing was loaded from
    elsewhere, the page broke no rule of its CSP."""
    ctx, page, watch = _new_page(browser, ui)
    page.watch = watch
    yield page
    page.wait_for_timeout(100)  # anything an image's onerror would do has happened
    ctx.close()
    assert watch.dialogs == [], "a script ran"
    assert [u for u in watch.requests if not u.startswith(ui.url)] == []
    assert watch.errors == []


def _texts(locator: Any) -> list[str]:
    return [t.strip() for t in locator.all_text_contents()]


def _expected_totals(store: RunStore, where: RunFilter | None = None) -> tuple[int, int, str]:
    """Runs, tokens and dollars of what a filter picks, from the runs' own rows (the page
    adds up the steps: two ways to the same numbers)."""
    runs = store.list_runs(1000, where=where)
    cost = sum_costs(r.cost_usd for r in runs)
    return len(runs), sum(r.total_tokens for r in runs), format_usd(cost)


def _shown_totals(page: Any) -> tuple[int, int, str]:
    runs = int(page.locator("#total-runs").inner_text().replace(",", ""))
    tokens = int(page.locator("#total-tokens").inner_text().replace(",", ""))
    return runs, tokens, page.locator("#total-cost").inner_text()


# -- the runs page ----------------------------------------------------------------------


def test_runs_page_lists_mock_runs_and_the_batch_with_totals(
    page: Any, ui: UIProcess, filled: FilledStore
) -> None:
    page.goto(ui.url)
    with RunStore(filled.path) as store:
        entries = store.list_entries(50)
        expected = _expected_totals(store)
        batch_rows = store.list_runs(10, batch=str(filled.batch_out))
    singles = page.locator("table.runs:not(.rows) > tbody > tr.run")
    # newest first, as `flowgpt runs list` has them; the batch is one entry
    shown = [row.get_attribute("data-run") for row in singles.all()]
    assert shown == [e.run_id for e in entries if not isinstance(e, BatchSummary)]
    assert len(shown) == 7
    # who answered: the mock and local runs marked, the relay's endpoint named
    runs = [e for e in entries if not isinstance(e, BatchSummary)]
    for row, entry in zip(singles.all(), runs, strict=True):
        badge = row.locator("td:nth-child(3) .badge")
        assert badge.inner_text() == entry.provider
        marked = {"mock": "mock", "local": "local"}.get(str(entry.provider), "remote")
        assert marked in (badge.get_attribute("class") or "").split()
    relay = page.locator(f"tr.run[data-run='{filled.relay_run}'] .host")
    assert relay.inner_text() == filled.relay_host
    assert _shown_totals(page) == expected
    assert expected[0] == 10 and expected[1] > 0 and expected[2].startswith("$")
    with RunStore(filled.path) as store:
        mocked = _expected_totals(store, RunFilter(provider="mock"))
    assert page.locator("#total-mock-cost").inner_text() == mocked[2] != expected[2]
    assert f"in {mocked[0]} runs" in page.locator("#total-mock").inner_text()

    batch = page.locator("tr.batch")
    assert batch.get_attribute("data-batch") == str(filled.batch_out)
    assert "3/3 rows" in batch.inner_text()
    rows = page.locator("tr.batch-rows table.rows tbody tr.run")
    assert not rows.first.is_visible()  # folded until asked for
    page.locator("tr.batch-rows summary").click()
    assert rows.first.is_visible()
    assert [r.get_attribute("data-run") for r in rows.all()] == [r.run_id for r in batch_rows]

    # daily spend: a bar a day, a segment per model that day, the mock's part marked
    legend = _texts(page.locator("ul.legend li"))
    assert legend == ["gpt-4o (mock, not billed)", "gpt-4o-mini (mock, not billed)", "o4-mini"]
    with RunStore(filled.path) as store:
        daily = store.spending().daily
    assert page.locator("svg.spend rect.seg").count() == len(daily) == 6
    assert page.locator("svg.spend rect.seg.mock").count() == 5
    days = [(date.today() - timedelta(days=n)).strftime("%m-%d") for n in (2, 1, 0)]
    assert _texts(page.locator("svg.spend text.day")) == days
    _screenshot(page, "ui-runs.png", full_page=True)


def test_filters_pick_runs_and_totals_follow(page: Any, ui: UIProcess, filled: FilledStore) -> None:
    page.goto(ui.url)
    store = RunStore(filled.path)

    def rows() -> list[str]:
        return _texts(page.locator("table.runs:not(.rows) > tbody > tr.run > td:nth-child(2)"))

    page.select_option("select[name=workflow]", "article-writer")
    page.click("button[type=submit]")
    assert "workflow=article-writer" in page.url
    assert rows() == ["article-writer", "article-writer"]
    assert page.locator("tr.batch").count() == 0
    assert _shown_totals(page) == _expected_totals(store, RunFilter(workflow="article-writer"))

    page.select_option("select[name=status]", "failed")  # both filters now
    page.click("button[type=submit]")
    assert [r.get_attribute("data-run") for r in page.locator("tr.run").all()] == [
        filled.failed_run
    ]
    assert _shown_totals(page) == (1, 0, "$0")  # stopped by its budget before any call

    page.click("a.clear")
    page.select_option("select[name=model]", "gpt-4o")
    page.click("button[type=submit]")
    assert sorted(rows()) == ["article-writer", "triage"]
    assert _shown_totals(page) == _expected_totals(store, RunFilter(model="gpt-4o"))

    page.click("a.clear")
    today, yesterday = date.today(), date.today() - timedelta(days=1)
    page.fill("input[name=since]", (today + timedelta(days=1)).isoformat())
    page.click("button[type=submit]")
    assert page.locator("tr.run").count() == 0
    assert "No run matches this filter" in page.locator("p.empty").inner_text()
    assert _shown_totals(page) == (0, 0, "$0")
    page.fill("input[name=since]", today.isoformat())
    page.click("button[type=submit]")
    assert sorted(rows()) == ["ask", "ask", "echo", "triage"]
    assert _shown_totals(page) == _expected_totals(store, RunFilter(since=today))
    page.fill("input[name=since]", yesterday.isoformat())
    page.fill("input[name=until]", yesterday.isoformat())
    page.click("button[type=submit]")
    assert rows() == [] and page.locator("tr.batch").count() == 1  # the batch ran then
    only_yesterday = RunFilter(since=yesterday, until=yesterday)
    assert _shown_totals(page) == _expected_totals(store, only_yesterday)
    assert _texts(page.locator("svg.spend text.day")) == [yesterday.strftime("%m-%d")]
    page.click("a.clear")

    providers = _texts(page.locator("select[name=provider] option"))
    assert providers == ["any", "local", "mock", "openai"]
    page.select_option("select[name=provider]", "mock")
    page.click("button[type=submit]")
    assert _shown_totals(page) == _expected_totals(store, RunFilter(provider="mock"))
    assert page.locator("tr.batch").count() == 1 and len(rows()) == 5
    page.select_option("select[name=provider]", "openai")
    page.click("button[type=submit]")
    assert [r.get_attribute("data-run") for r in page.locator("tr.run").all()] == [filled.relay_run]
    assert _shown_totals(page) == _expected_totals(store, RunFilter(provider="openai"))
    assert page.locator("#total-mock").count() == 0  # nothing of the mock's here

    # a batch on its own: its rows, by row number, and what they spent
    page.click("a.clear")
    page.click("tr.batch a")
    assert page.locator("h1").inner_text() == f"batch {filled.batch_out}"
    assert _texts(page.locator("table.rows tbody tr.run td:first-child")) == ["1", "2", "3"]
    assert _shown_totals(page) == _expected_totals(store, RunFilter(batch=str(filled.batch_out)))
    summary = store.batch_summary(str(filled.batch_out))
    assert format_usd(summary.cost_usd) in page.locator("p.facts").inner_text()
    store.close()

    page.goto(ui.url + "?since=yesterday&status=done")  # said, not a crash
    problems = _texts(page.locator("p.problem"))
    assert problems == [  # in the form's order
        "status: 'done' is not ok, failed, interrupted or running; left out",
        "since: 'yesterday' is not a date (YYYY-MM-DD); left out",
    ]


# -- the run page -----------------------------------------------------------------------


def test_run_page_shows_the_graph_both_attempts_and_the_messages(
    page: Any, ui: UIProcess, filled: FilledStore
) -> None:
    page.goto(ui.url)
    page.click(f"a[href='/runs/{filled.triage_run}']")
    assert page.url == f"{ui.url}runs/{filled.triage_run}"
    assert page.locator("h1").inner_text().startswith(f"triage {filled.triage_run}")

    # the graph: three boxes left to right, arrows from each step to the steps that use it
    nodes = page.locator("svg.graph g.node")
    assert [n.get_attribute("data-step") for n in nodes.all()] == ["extract", "answer", "summary"]
    assert all("st-ok" in (n.get_attribute("class") or "") for n in nodes.all())
    xs = [n.bounding_box()["x"] for n in nodes.all()]
    assert xs == sorted(xs) and len(set(xs)) == 3
    edges = {
        (e.get_attribute("data-from"), e.get_attribute("data-to"))
        for e in page.locator("svg.graph path.edge").all()
    }
    assert edges == {("extract", "answer"), ("extract", "summary"), ("answer", "summary")}
    details = _texts(page.locator("svg.graph g.node text.detail"))
    assert details == ["ok · 2 attempts", "ok", "ok"]

    # the repaired step: the rejected reply, why, then the accepted one, in that order
    extract = page.locator("#step-extract")
    replies = extract.locator(".reply")
    assert replies.count() == 2
    first, second = replies.nth(0), replies.nth(1)
    assert "attempt 1 of 2" in first.inner_text() and "rejected" in first.inner_text()
    assert (
        first.locator("pre").inner_text() == '{\n  "product": "kettle",\n  "severity": "urgent"\n}'
    )
    assert _texts(first.locator(".failures li")) == [
        "at `$.severity`: 'urgent' is not one of ['low', 'high']"
    ]
    assert "asked again, with these errors" in first.inner_text()
    assert "attempt 2 of 2" in second.inner_text() and "accepted" in second.inner_text()
    assert '"severity": "high"' in second.locator("pre").inner_text()
    assert first.bounding_box()["y"] < second.bounding_box()["y"]

    # messages as sent, role by role; usage with cached and reasoning tokens; the price
    (user,) = extract.locator(".message").all()
    assert user.locator(".role").inner_text().lower() == "user"
    assert user.locator("pre").inner_text() == (
        "Read this support ticket and reply with JSON (product, severity):\nMy kettle leaks."
    )
    answer = page.locator("#step-answer .message pre").inner_text()
    assert answer == "Write a short, kind reply about the kettle."
    facts = page.locator("#step-summary dl.facts").inner_text()
    assert "gpt-4o" in facts and "(0 cached)" in facts and "(0 reasoning)" in facts
    assert "output $10 per 1M tokens" in facts and "from genai-prices" in facts

    # cost and latency per step, and a box leads to its step
    bars = _texts(page.locator("svg.bars text.label"))
    assert bars == ["extract", "answer", "summary"]
    with RunStore(filled.path) as store:
        run = store.load_run(filled.triage_run)
    values = _texts(page.locator("svg.bars text.value"))
    for step in run.steps.values():
        assert format_usd(step.cost_usd) in values
    assert page.locator("#resume").count() == 0  # it did not fail
    _screenshot(page, "ui-run.png", clip={"x": 0, "y": 0, "width": 1280, "height": 760})
    _screenshot(extract, "ui-repair.png")
    nodes.nth(2).click()
    assert page.url.endswith("#step-summary")


def test_a_hostile_reply_is_shown_as_text_and_runs_no_script(
    page: Any, ui: UIProcess, filled: FilledStore
) -> None:
    page.goto(f"{ui.url}runs/{filled.hostile_run}")
    reply = page.locator("#step-reply .reply pre")
    assert reply.inner_text() == HOSTILE
    assert page.locator("#step-reply .message pre").inner_text() == f"Repeat this: {HOSTILE}"
    assert HOSTILE in page.locator("section.io pre").first.inner_text()  # the inputs
    assert page.evaluate("document.scripts.length") == 0
    assert page.locator("img").count() == 0  # no element was made of the reply
    assert page.evaluate("document.querySelectorAll('[onerror]').length") == 0
    # the step skipped by its `when:` is greyed, its arrow dashed
    skipped = page.locator("svg.graph g.node[data-step=escalate]")
    assert "st-skipped" in (skipped.get_attribute("class") or "")
    dash = skipped.locator("rect").evaluate("r => getComputedStyle(r).strokeDasharray")
    assert dash not in ("", "none")
    assert "st-skipped" in (page.locator("#step-escalate").get_attribute("class") or "")
    _screenshot(page.locator("#step-reply"), "ui-hostile.png")
    page.goto(ui.url)
    assert page.locator(f"tr.run[data-run='{filled.hostile_run}']").count() == 1


def test_escaping_alone_keeps_the_hostile_reply_inert(
    browser: Any, ui: UIProcess, filled: FilledStore
) -> None:
    # The CSP forbids every script anyway; here the browser ignores it, so only the
    # escaping stands between the reply and the page.
    ctx, page, watch = _new_page(browser, ui, bypass_csp=True)
    page.goto(f"{ui.url}runs/{filled.hostile_run}")
    page.wait_for_timeout(300)
    assert watch.dialogs == [], "a script in the reply ran"
    assert page.evaluate("document.scripts.length") == 0
    assert page.locator("#step-reply .reply pre").inner_text() == HOSTILE
    ctx.close()
    with urllib.request.urlopen(f"{ui.url}runs/{filled.hostile_run}") as response:
        html = response.read().decode()
    assert HOSTILE_SCRIPT not in html and HOSTILE_IMG not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_failed_run_says_how_to_resume_it(page: Any, ui: UIProcess, filled: FilledStore) -> None:
    page.goto(f"{ui.url}runs/{filled.failed_run}")
    with RunStore(filled.path) as store:
        expected = resume_command(store.run_summary(filled.failed_run), filled.path)
    assert page.locator("#resume pre.command").inner_text() == expected
    assert expected.endswith(f"--resume {filled.failed_run} --mock --store {filled.path}")
    assert "budget" in page.locator("#run-error").inner_text()
    states = {
        n.get_attribute("data-step"): (n.get_attribute("class") or "").split()[-1]
        for n in page.locator("svg.graph g.node").all()
    }
    assert states == {"outline": "st-failed", "draft": "st-pending", "polish": "st-pending"}
    heading = page.locator("#step-outline h4").first.inner_text()
    assert "not sent" in heading  # the budget stopped it before its call
    _screenshot(page, "ui-failed.png", clip={"x": 0, "y": 0, "width": 1280, "height": 620})


def test_a_batch_row_shows_its_for_each_items(
    page: Any, ui: UIProcess, filled: FilledStore
) -> None:
    with RunStore(filled.path) as store:
        (row,) = store.list_runs(1, where=RunFilter(batch=str(filled.batch_out)))
        run = store.load_run(row.run_id)
    items = run.steps["section"].items
    assert len(items) >= 2
    page.goto(f"{ui.url}runs/{row.run_id}")
    node = page.locator("svg.graph g.node[data-step=section]")
    detail = node.locator("text.detail").text_content()
    assert detail == f"ok · {len(items)} items ({len(items)} ok)"
    assert page.locator("#step-section details.item").count() == len(items)
    first_item = page.locator("#step-section details.item").first
    assert first_item.locator(".message pre").count() >= 1
    assert f"row {row.batch_row} of" in page.locator("p.facts.small").inner_text()
    assert Decimal(0) < (run.cost_usd or Decimal(0))


def test_a_relay_run_shows_its_endpoint_and_cached_and_reasoning_tokens(
    page: Any, ui: UIProcess, filled: FilledStore
) -> None:
    page.goto(f"{ui.url}runs/{filled.relay_run}")
    facts = page.locator("p.facts").first.inner_text()
    assert f"openai {filled.relay_host}" in facts
    step = page.locator("#step-answer dl.facts").inner_text()
    assert "40 prompt (16 cached) → 30 completion (24 reasoning)" in step
    assert "input $1.1 · cached input $0.275 · output $4.4 per 1M tokens" in step
    with RunStore(filled.path) as store:
        cost = store.run_summary(filled.relay_run).cost_usd
    assert page.locator("#run-cost").inner_text() == format_usd(cost)
    assert "not billed" not in facts  # a real (relayed) call


def test_a_failed_local_run_resumes_with_its_model(
    page: Any, ui: UIProcess, filled: FilledStore
) -> None:
    page.goto(f"{ui.url}runs/{filled.local_run}")
    command = page.locator("#resume pre.command").inner_text()
    assert f"--resume {filled.local_run} --local-model {LOCAL_MODEL}" in command
    assert page.locator("p.facts .badge.local").inner_text() == "local"
