"""The benchmarks (tests/benchmarks/bench_chain.py, bench_batch.py) still run: tiny counts,
no timings."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from tests.benchmarks import bench_batch, bench_chain, bench_ratelimit
from tests.support.fake_openai import FakeOpenAI


@pytest.mark.timeout(60)
def test_bench_chain_runs_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    # Both modes, each against its own fake server process, as in a real run.
    args = ["--chains-seq", "2", "--chains-conc", "4", "--concurrency", "2"]
    assert bench_chain.main([*args, "--latency-ms", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for mode, chains in (("sequential", "2"), ("concurrent", "4")):
        assert rows[mode][1] == chains
        assert float(rows[mode][4]) > 0  # a ratio was computed; its value is not checked


@pytest.mark.timeout(60)
def test_bench_chain_breakdown_times_the_parts_and_puts_them_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parts = [owner.__dict__[name] for owner, name, _ in bench_chain.PARTS]
    args = ["--mode", "sequential", "--chains-seq", "3", "--repeat", "1", "--breakdown"]
    assert bench_chain.main(args) == 0
    err = capsys.readouterr().err
    rows = {
        line.rsplit(None, 1)[0].strip(): float(line.rsplit(None, 1)[1])
        for line in err.splitlines()
        if line.startswith(("raw:", "flowgpt:", "  "))
    }
    # Every part was reached on the flowgpt side, and the SDK's calls on both sides.
    assert all(rows[label.strip()] > 0 for _, _, label in bench_chain.PARTS)
    assert rows["raw: the SDK's create() calls"] > 0
    assert rows["the SDK's create() calls"] > 0
    whole = rows["flowgpt: Engine.run, the whole chain"]
    assert rows["provider.complete()"] < whole
    # The clocks are gone afterwards: the classes have their own methods back.
    assert [owner.__dict__[name] for owner, name, _ in bench_chain.PARTS] == parts


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.version_info < (3, 11), reason="operator.call is Python 3.11+")
def test_bench_chain_instructions_children_run(capsys: pytest.CaptureFixture[str]) -> None:
    # --mode instructions itself needs valgrind and minutes (each child spends about a
    # minute importing under callgrind), so only its children run here, without valgrind:
    # each side and shape does its chains and reports the same headlines.
    digests = {}
    with bench_chain.fake_server(1) as base_url:
        for shape in ("sequential", "concurrent"):
            for side in ("raw", "flowgpt"):
                args = ["--instructions-child", side, "--instructions-shape", shape]
                args += ["--base-url", base_url, "--concurrency", "2"]
                args += ["--instr-chains-seq", "3", "--instr-chains-conc", "3"]
                assert bench_chain.main(args) == 0
                doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
                assert doc["chains"] == 3
                digests[shape, side] = doc["digest"]
    assert len(set(digests.values())) == 1  # chains 0-2 end alike whatever runs them
    counts = [bench_chain.Instructions("sequential", 2, 600, 660)]
    table = bench_chain.instructions_table(counts, bench_chain.parse_args([]))
    row = next(line.split() for line in table.splitlines() if line.startswith("sequential"))
    assert row == ["sequential", "2", "100", "110", "10", "1.100"]


def test_both_sides_send_the_same_requests(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ratio compares like with like only while flowgpt's provider sends, for the same
    # chain, the very requests the raw create() calls send: bodies and headers alike.
    monkeypatch.setenv(bench_chain.KEY_ENV, bench_chain.KEY)  # undone after the test

    async def both() -> None:
        sides = bench_chain.make_sides(fake_openai.base_url)
        try:
            assert await sides.raw(7) == await sides.flowgpt(7)
        finally:
            await sides.aclose()

    asyncio.run(both())
    sent = fake_openai.chat_requests
    raw, flowgpt = sent[: bench_chain.CALLS], sent[bench_chain.CALLS :]
    assert len(flowgpt) == bench_chain.CALLS
    assert [r.body for r in flowgpt] == [r.body for r in raw]
    assert [r.headers for r in flowgpt] == [r.headers for r in raw]


def test_both_sides_send_the_same_chain() -> None:
    # The comparison is only fair while the workflow and the raw f-strings agree.
    workflow = bench_chain.workflow("http://127.0.0.1:9/v1", 7)
    steps = workflow.spec.steps
    assert [s.id for s in steps] == ["a", "b", "c"]
    assert all(s.system == bench_chain.SYSTEM for s in steps)
    assert workflow.spec.defaults.model == bench_chain.MODEL
    assert workflow.spec.defaults.max_tokens == bench_chain.MAX_TOKENS
    # Engine() with no provider: the workflow says where requests go and how many at once.
    provider = workflow.spec.provider
    assert (provider.base_url, provider.api_key_env) == (
        "http://127.0.0.1:9/v1",
        "FLOWGPT_BENCH_API_KEY",
    )
    assert provider.concurrency == 7 and provider.max_retries == bench_chain.MAX_RETRIES


@pytest.mark.timeout(90)
def test_bench_ratelimit_runs_every_client(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny numbers: 8 rows of max_tokens 20 against 6,000 TPM (100 tokens at once, then
    # 100/s), each client against its own fake server process.
    monkeypatch.setenv(bench_ratelimit.KEY_ENV, bench_ratelimit.KEY)  # undone after the test
    args = ["--rows", "8", "--rpm", "600", "--tpm", "6000", "--latency-ms", "5"]
    assert bench_ratelimit.main([*args, "--concurrency", "4", "--max-tokens", "20"]) == 0
    out = capsys.readouterr().out
    rows = {line[:42].strip(): line[42:].split() for line in out.splitlines()[2:6]}
    assert set(rows) == set(bench_ratelimit.LABELS.values())
    for wall, ratio, ok, limited in rows.values():
        assert float(wall) > 0 and float(ratio) > 0 and ok.endswith("/8") and int(limited) >= 0
    # flowgpt finishes every row, as the numbers above are meant to show.
    assert rows[bench_ratelimit.LABELS["flowgpt"]][2] == "8/8"
    assert rows[bench_ratelimit.LABELS["flowgpt-limits"]][2] == "8/8"
    assert "ideal: " in out


@pytest.mark.timeout(120)
def test_bench_batch_runs_throughput_and_memory(capsys: pytest.CaptureFixture[str]) -> None:
    # Tiny sizes: one fake server per part and a fresh process per memory size, as in a
    # real run (the instruction count needs valgrind and minutes, so it is not run here).
    args = ["--rows", "6", "--steps", "2", "--concurrency", "2", "--latency-ms", "1"]
    assert bench_batch.main([*args, "--repeat", "1", "--mem-rows", "3,6"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("batch")]
    throughput, *memory = rows
    assert throughput[1] == "6"
    assert float(throughput[4]) > 0  # a ratio was computed; its value is not checked
    assert [m[1] for m in memory] == ["3", "6"]
    assert all(float(m[2]) > 0 for m in memory)  # peak RSS in MB
    assert float(memory[0][5]) == 1.0  # the peak ratio is relative to the first size


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.version_info < (3, 11), reason="operator.call is Python 3.11+")
def test_bench_batch_instructions_children_run(capsys: pytest.CaptureFixture[str]) -> None:
    # As for bench_chain: the children of --mode instructions, without valgrind.
    with bench_batch.fake_server(1) as base_url:
        for side in ("raw", "flowgpt"):
            args = ["--instructions-child", side, "--base-url", base_url, "--rows", "4"]
            assert bench_batch.main([*args, "--steps", "2", "--concurrency", "2"]) == 0
            doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert doc["rows"] == 4  # every row of the measured batch ended ok


def test_bench_batch_chain_matches_the_raw_script() -> None:
    # The comparison is only fair while the workflow and the raw script send the same
    # messages (the benchmark's warm-up also checks that both end with the same text).
    workflow = bench_batch.parse_workflow(bench_batch.workflow_text(3, 50))
    steps = workflow.spec.steps
    assert [s.id for s in steps] == ["s0", "s1", "s2"]
    assert all(s.system == bench_batch.SYSTEM for s in steps)
    assert workflow.spec.defaults.model == bench_batch.MODEL
    assert workflow.spec.defaults.max_tokens == bench_batch.MAX_TOKENS
    assert workflow.spec.provider.concurrency == 50
    assert workflow.spec.provider.max_retries == bench_batch.MAX_RETRIES
