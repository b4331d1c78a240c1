"""The benchmarks (tests/benchmarks/bench_chain.py, bench_batch.py) still run: tiny counts,
no timings."""

from __future__ import annotations

import pytest

from tests.benchmarks import bench_batch, bench_chain


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


def test_both_sides_send_the_same_chain() -> None:
    # The comparison is only fair while the workflow and the raw f-strings agree.
    workflow = bench_chain.parse_workflow(bench_chain.WORKFLOW)
    steps = workflow.spec.steps
    assert [s.id for s in steps] == ["a", "b", "c"]
    assert all(s.system == bench_chain.SYSTEM for s in steps)
    assert workflow.spec.defaults.model == bench_chain.MODEL
    assert workflow.spec.defaults.max_tokens == bench_chain.MAX_TOKENS


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
