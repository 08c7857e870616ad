"""The memory layout per machine (training/precision.py): ``--channels-last auto`` times bf16 in both layouts on a
CPU, a resumed run keeps its layout on the same hardware, and the layout changes the speed, not the numbers."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from simpsonize.cli import main
from simpsonize.training import precision as precision_module
from simpsonize.training import train as train_module
from simpsonize.training.config import TrainConfig
from simpsonize.training.losses import LOSS_NAMES
from simpsonize.training.precision import (
    BF16,
    BF16_CHANNELS_LAST,
    FP32,
    choose_channels_last,
    choose_precision,
    probe_step_seconds,
)
from tests.training.conftest import TINY_TRAIN, fake_probe

CPU = torch.device("cpu")
KEPT = " (kept from the run's earlier session)"


def test_auto_takes_channels_last_with_bf16_on_a_cpu_only_where_the_probe_finds_it_5_percent_faster(monkeypatch):
    config = TrainConfig(data="", out="")
    calls = fake_probe(monkeypatch, {BF16: 1.0, BF16_CHANNELS_LAST: 0.94})
    assert choose_channels_last(config, CPU, True) == (
        True,
        "auto: bf16 on a CPU; probe: channels_last 0.940 s vs contiguous 1.000 s per step",
    )
    assert calls == [[BF16, BF16_CHANNELS_LAST]]
    fake_probe(monkeypatch, {BF16: 1.0, BF16_CHANNELS_LAST: 0.96})  # faster, but not by 5 %
    assert choose_channels_last(config, CPU, True) == (
        False,
        "auto: bf16 on a CPU; probe: contiguous 1.000 s vs channels_last 0.960 s per step",
    )
    fake_probe(monkeypatch, {BF16: 0.5, BF16_CHANNELS_LAST: 1.0})
    assert choose_channels_last(config, CPU, True)[0] is False


def test_no_probe_on_cuda_for_fp32_or_when_forced(monkeypatch):
    calls = fake_probe(monkeypatch, {})
    auto = TrainConfig(data="", out="")
    assert choose_channels_last(auto, torch.device("cuda"), True) == (True, "auto: CUDA")
    assert choose_channels_last(auto, torch.device("cuda"), False) == (True, "auto: CUDA")
    assert choose_channels_last(auto, CPU, False) == (False, "auto: fp32 on a CPU")
    for choice, expected in (("on", True), ("off", False)):
        for device, bf16 in ((CPU, True), (CPU, False), (torch.device("cuda"), True)):
            forced = TrainConfig(data="", out="", channels_last=choice)
            assert choose_channels_last(forced, device, bf16) == (expected, f"asked for {choice}")
    assert calls == []


def test_the_layout_reuses_what_the_precision_probe_timed(monkeypatch):
    """The precision probe times bf16 in each layout the run may use; the layout choice then times nothing again."""
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    calls = fake_probe(monkeypatch, {FP32: 2.0, BF16: 1.0, BF16_CHANNELS_LAST: 1.2})
    config = TrainConfig(data="", out="")
    timings = {}
    assert choose_precision(config, CPU, timings) == (
        True,
        "auto: CPU has avx512_bf16; probe: bf16 1.000 s vs fp32 2.000 s per step",
    )
    use, reason = choose_channels_last(config, CPU, True, timings)
    assert use is False and "contiguous 1.000 s vs channels_last 1.200 s" in reason
    assert calls == [[FP32, BF16, BF16_CHANNELS_LAST]]
    # with the layout forced, bf16 is timed in that layout only, and judged by it
    calls.clear()
    assert choose_precision(TrainConfig(data="", out="", channels_last="on"), CPU)[0] is True
    assert calls == [[FP32, BF16_CHANNELS_LAST]]
    fake_probe(monkeypatch, {FP32: 1.0, BF16: 0.5, BF16_CHANNELS_LAST: 0.95})
    assert choose_precision(TrainConfig(data="", out="", channels_last="on"), CPU)[0] is False


def test_a_hopeless_bf16_stops_the_probe_and_skips_the_other_bf16_layout(monkeypatch):
    """Without bf16 hardware a bf16 step takes tens of times an fp32 one (75 s against 1.84 s on an AVX2 EPYC): after
    one such step the probe stops timing bf16 (a clock that steps by hand stands in for the slow kernels)."""
    clock = [0.0]
    steps = []

    def fake_step(G, D, x, config, device, bf16):
        steps.append((bf16, x.is_contiguous(memory_format=torch.channels_last)))
        clock[0] += 40.0 if bf16 else 1.0

    monkeypatch.setattr(precision_module, "_probe_step", fake_step)
    monkeypatch.setattr(precision_module.time, "perf_counter", lambda: clock[0])
    config = TrainConfig(data="", out="", size=32, ngf=4, n_blocks=1, ndf=4)
    assert probe_step_seconds(config, CPU, (FP32, BF16, BF16_CHANNELS_LAST)) == (1.0, math.inf, math.inf)
    assert steps == [FP32] * 4 + [BF16]


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, *extra])


def _resume(out: Path, *extra: str) -> int:
    return main(["train", "--out", str(out), "--resume", "--device", "cpu", "--num-workers", "0", *extra])


def _layout(run: Path) -> tuple[bool, str, str, str]:
    """The checkpoint's layout and reason, and the last session's."""
    saved = torch.load(run / "checkpoint.pt", weights_only=False)["layout"]
    session = json.loads((run / "sessions.json").read_text())[-1]
    return saved["channels_last"], saved["reason"], session["layout"], session["layout_reason"]


def test_resume_keeps_the_runs_layout_on_the_same_hardware_and_probes_again_elsewhere(
    tiny_dataset, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    fake_probe(monkeypatch, {BF16: 1.0, BF16_CHANNELS_LAST: 0.5})
    assert _train(tiny_dataset, run, "--precision", "bf16", "--max-steps", "1") == 0
    chosen = "auto: bf16 on a CPU; probe: channels_last 0.500 s vs contiguous 1.000 s per step"
    assert _layout(run) == (True, chosen, "channels_last", chosen)
    assert f"precision bf16 (asked for bf16), layout channels_last ({chosen}) on" in capsys.readouterr().out

    calls = fake_probe(monkeypatch, {BF16: 0.5, BF16_CHANNELS_LAST: 1.0})  # a new probe would now say contiguous
    assert _resume(run, "--max-steps", "1") == 0
    assert _layout(run) == (True, chosen + KEPT, "channels_last", chosen + KEPT)
    assert f"layout channels_last ({chosen}{KEPT})" in capsys.readouterr().out
    assert calls == []
    assert _resume(run, "--max-steps", "1") == 0
    assert _layout(run)[1] == chosen + KEPT  # said once, however many resumes

    monkeypatch.setattr(train_module, "hardware_name", lambda device: "another CPU")
    assert _resume(run, "--max-steps", "1") == 0
    assert calls == [[BF16, BF16_CHANNELS_LAST]]
    assert _layout(run)[::2] == (False, "contiguous")
    assert len(json.loads((run / "sessions.json").read_text())) == 4


def _without_the_layout_entry(run: Path) -> None:
    """The run's checkpoint as this trainer wrote it before the layout was recorded."""
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    del state["layout"]
    torch.save(state, run / "checkpoint.pt")


@pytest.mark.parametrize(
    "options, expected, reason",
    [
        (("--precision", "bf16"), "channels_last", "the rule before layouts were recorded"),  # auto + bf16
        (("--precision", "fp32"), "contiguous", "the rule before layouts were recorded"),
        (("--precision", "bf16", "--channels-last", "off"), "contiguous", "asked for off"),
    ],
)
def test_a_checkpoint_from_before_the_layout_was_recorded_resumes_with_the_old_rule(
    tiny_dataset, tmp_path, monkeypatch, options, expected, reason
):
    """Old run folders continue exactly: auto was channels_last with bf16, whatever a probe would say now."""
    run = tmp_path / "run"
    fake_probe(monkeypatch, {BF16: 1.0, BF16_CHANNELS_LAST: 0.5})
    assert _train(tiny_dataset, run, *options, "--max-steps", "1") == 0
    _without_the_layout_entry(run)
    calls = fake_probe(monkeypatch, {BF16: 0.5, BF16_CHANNELS_LAST: 1.0})  # a probe would now say contiguous
    assert _resume(run, "--max-steps", "1") == 0
    use, saved_reason, session_layout, _ = _layout(run)
    assert session_layout == expected and use is (expected == "channels_last") and reason in saved_reason
    assert calls == []


def _loss_rows(run: Path) -> list[dict[str, str]]:
    with (run / "losses.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_the_layout_changes_the_speed_not_the_numbers(tiny_dataset, tmp_path):
    """The same seed's first 3 fp32 steps in each layout: the same losses, to the kernels' rounding (losses.csv keeps
    5 decimals, hence the absolute tolerance beside the relative one). At batch 1, where torch's own instance norm gets
    a channels_last gradient wrong (the next test) and the networks' instance norm (simpsonize/model/networks.py)
    mends it: without that, the losses part from step 2."""
    for choice in ("on", "off"):
        run = tmp_path / choice
        assert _train(tiny_dataset, run, "--channels-last", choice, "--batch-size", "1", "--max-steps", "3") == 0
    on, off = _loss_rows(tmp_path / "on"), _loss_rows(tmp_path / "off")
    assert [r["step"] for r in on] == [r["step"] for r in off] == ["1", "2", "3"]
    for row_on, row_off in zip(on, off):
        for name in LOSS_NAMES:
            assert float(row_on[name]) == pytest.approx(float(row_off[name]), rel=1e-4, abs=2e-5), name
    assert _layout(tmp_path / "on")[::2] == (True, "channels_last")
    assert _layout(tmp_path / "off")[::2] == (False, "contiguous")


def test_torchs_instance_norm_misreads_a_channels_last_gradient_at_batch_1():
    """A canary for a torch bug (2.14.1, CPU): at batch 1, instance norm's backward reads a channels_last incoming
    gradient's memory as if it were NCHW, so a channels_last generator (whose convolutions hand such gradients back)
    trains on wrong gradients at batch 1: the losses of the test above part from step 2 there. Batch 2 is right. When
    this fails, torch has fixed it."""
    torch.manual_seed(0)
    x, grad = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    as_given = grad.contiguous(memory_format=torch.channels_last)
    misread = as_given.permute(0, 2, 3, 1).reshape(-1).view(1, 4, 6, 6)  # its memory in NCHW order

    def input_grad(x, grad):
        x = x.clone().requires_grad_(True)
        torch.nn.functional.instance_norm(x).backward(grad)
        return x.grad

    assert torch.allclose(input_grad(x, as_given), input_grad(x, misread))
    assert not torch.allclose(input_grad(x, as_given), input_grad(x, grad), atol=1e-3)
    x2, grad2 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    assert torch.allclose(
        input_grad(x2, grad2.contiguous(memory_format=torch.channels_last)), input_grad(x2, grad2), atol=1e-5
    )


def _choose_in_process_group(rank: int, port: int, results: Path) -> None:
    import os

    import torch.distributed as dist

    from simpsonize.training.ddp import Distributed, main_rank_choice

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        own = (rank == 1, f"rank {rank}'s probe")  # the two ranks' probes disagree
        chosen = main_rank_choice(own, Distributed(world_size=2, rank=rank), CPU)
        (results / f"{rank}.json").write_text(json.dumps(chosen))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_every_ddp_rank_takes_rank_0s_choice(tmp_path):
    """Each rank times its own probe; DDP refuses parameters whose strides differ between processes, so the ranks
    take rank 0's layout (and precision)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    mp.spawn(_choose_in_process_group, args=(port, tmp_path), nprocs=2)
    assert json.loads((tmp_path / "0.json").read_text()) == [False, "rank 0's probe"]
    assert json.loads((tmp_path / "1.json").read_text()) == [
        False,
        "rank 0's choice (this rank's probe: rank 1's probe)",
    ]
