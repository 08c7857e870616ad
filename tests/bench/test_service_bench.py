"""`simpsonize bench service` against a real `serve` (embedded Redis, one worker, the shipped weights).

Only the plumbing and the arithmetic are checked here; the figures themselves are for an idle machine.
"""

from __future__ import annotations

import pytest
from bench_support import bench_report

from simpsonize.bench.service_latency import Config, markdown


def test_config_parses_workers_by_threads():
    assert Config.parse("4x1") == Config(4, 1)
    with pytest.raises(Exception, match="WORKERSxTHREADS"):
        Config.parse("four")


@pytest.mark.slow
def test_bench_service_reports_latency_split_and_saturation(tmp_path, tiny_weights):
    args = ("service", "--configs", "1x1", "--singles", "2", "--burst", "2", "--timeout", "240")
    # the plumbing and the arithmetic; the shipped model's figures are for an idle machine
    report, _ = bench_report(tmp_path / "service.json", *args, "--weights", str(tiny_weights), timeout=400)
    assert "family" in report["header"]["cpu"]  # every figure carries the CPU it was measured on
    (row,) = report["rows"]
    single, burst = row["single"], row["burst"]
    stages = single["worker_stages_s"]
    assert set(stages) == {"detect", "generate", "encode", "job"}
    assert stages["detect"] + stages["generate"] + stages["encode"] <= stages["job"] * 1.01
    # each photo: the client waits for its job and more, never less
    assert len(single["runs"]) == 2
    assert all(run["latency"] >= run["job"] for run in single["runs"])
    # one worker, one thread: the bound is one job at a time
    assert burst["bound_photos_per_s"] == pytest.approx(1 / stages["job"], rel=0.01)
    assert burst["saturation"] == pytest.approx(burst["photos_per_s"] / burst["bound_photos_per_s"], rel=0.01)
    assert burst["cpu_s"]["workers"] > 0  # the workers' CPU was attributed to them, not to the web process
    assert burst["saturation_without_client"] >= burst["saturation"]  # the client only ever takes cores away
    assert "| 1x1 |" in markdown(report["rows"], report["header"])
