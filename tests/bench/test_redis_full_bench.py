"""`simpsonize bench full` against a real `serve` with a small Redis: its counts add up, and it reads /metrics."""

from __future__ import annotations

from bench_support import bench_report

from simpsonize.bench.redis_full import failed_by_reason


def test_failures_by_reason_come_from_the_metrics_text():
    text = (
        'simpsonize_jobs_failed_total{reason="full"} 3.0\nsimpsonize_jobs_failed_total{reason="photo"} 0.0\n'
        'simpsonize_jobs_failed_total{reason="out_of_memory"} 1.0\n'
    )
    assert failed_by_reason(text) == {"full": 3, "out_of_memory": 1}


def test_bench_full_counts_every_upload_and_every_job(tmp_path, tiny_weights):
    args = ("full", "--maxmemory", "4mb", "--uploads", "12", "--clients", "3", "--threads", "1")
    report, _ = bench_report(tmp_path / "full.json", *args, "--weights", str(tiny_weights), timeout=400)
    assert "family" in report["header"]["cpu"]
    assert (
        report["accepted"]
        + report["refused"]
        + report["upload_errors"]
        + sum(n for answer, n in report["other_answers"].items() if answer.startswith("POST"))
        == 12
    )
    assert report["accepted"] == report["finished"] + report["failed"] + report["never_ended"]
    assert report["serve_stayed_up"] and report["worker_exits"] == 0 and report["never_ended"] == 0
    assert float(report["redis_memory"]["simpsonize_redis_max_memory_bytes"]) == 4 * 1024 * 1024
