"""The benchmark (tests/benchmarks/bench_chain.py) still runs: tiny counts, no timings."""

from __future__ import annotations

import pytest

from tests.benchmarks import bench_chain


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
