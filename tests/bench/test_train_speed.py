"""`simpsonize bench train`: the variants it compares, and a real run on tiny networks (plumbing and arithmetic
only; the figures themselves are for an idle machine)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from bench_support import REPO_ROOT, bench_report, run_bench

from simpsonize.bench.train_speed import BASELINE, Variant, variants


def test_the_baseline_is_the_readmes_command_and_every_other_variant_changes_one_thing():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "--nproc-per-node 2" in readme and "OMP_NUM_THREADS=1" in readme and "--precision bf16" in readme
    assert (BASELINE.procs, BASELINE.threads, BASELINE.batch, BASELINE.precision) == (2, 1, 1, "bf16")
    chosen = variants()
    assert chosen[0] == BASELINE and len(set(chosen)) == len(chosen)
    for variant in chosen[1:]:
        base = Variant(recipe=variant.recipe)
        if variant == base:  # another recipe's own baseline
            assert variant.recipe != BASELINE.recipe
            continue
        changed = {k for k, v in asdict(variant).items() if asdict(base)[k] != v}
        # one change, or the two that go together: 1 process x 2 threads (+ a batch), fp32 without channels_last
        assert changed and changed in (
            {"batch"},
            {"procs", "threads"},
            {"procs", "threads", "batch"},
            {"precision", "channels_last"},
            {"channels_last"},
            {"compile"},
        ), changed
    assert {v.batch for v in chosen} == {1, 2, 4, 8} and {v.recipe for v in chosen} == {"shipped", "projected"}
    assert any(v.compile for v in chosen) and not any(v.compile for v in variants(compile_=False))


@pytest.mark.slow
def test_bench_train_quick_reports_rates_and_where_the_step_goes(tmp_path):
    report, done = bench_report(tmp_path / "train.json", "train", "--quick", timeout=600)
    assert "family" in report["cpu"] and "| variant |" in done.stdout
    ddp, single = report["rows"]
    assert ddp["variant"]["procs"] == 2 and single["variant"]["procs"] == 1
    for row in (ddp, single):
        v = row["variant"]
        assert row["images_per_second"] == pytest.approx(v["batch"] * v["procs"] / row["seconds_per_step"])
        parts = row["breakdown_ms"]
        assert {
            "forward G_A",
            "forward G_B",
            "forward D_A",
            "forward D_B",
            "backward (all networks)",
            "optimizers",
        } <= parts.keys()
        # DDP's all-reduce runs while the backward does (README: the shares then add up to a little more than the
        # step), so it may exceed the step by that much and no more; every other part is the step's own time.
        named = sum(ms for part, ms in parts.items() if part not in ("step", "DDP all-reduce"))
        assert all(ms >= 0 for ms in parts.values()) and named <= parts["step"] * 1.02
        assert named + parts.get("DDP all-reduce", 0.0) >= parts["step"] * 0.98
    assert parts.keys().isdisjoint({"DDP all-reduce"})  # one process: nothing to reduce
    assert ddp["breakdown_ms"]["DDP all-reduce"] > 0


def test_an_unknown_recipe_is_refused_with_a_sentence():
    done = run_bench("train", "--recipes", "nope", timeout=120)
    assert done.returncode == 2 and "unknown recipe nope" in done.stdout
