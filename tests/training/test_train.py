import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from simpsonize.cli import main
from tests.training.conftest import TINY_TRAIN, fake_probe

REPO = Path(__file__).resolve().parents[2]


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, *extra])


def test_a_few_steps_write_checkpoint_losses_plot_and_samples(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_dataset, run, "--snapshot-every", "2") == 0
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4
    assert {"G_A", "G_B", "D_A", "D_B", "opt_G", "opt_D", "sched_G", "sched_D", "pool_A", "pool_B", "rng"} <= set(state)
    with (run / "losses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert {"G_A", "G_B", "D_A", "D_B", "cycle_A", "cycle_B", "idt_A", "idt_B"} <= set(rows[0])
    assert all(float(r["cycle_B"]) > 0 for r in rows)
    # lr constant for epoch 1, then linear decay to 0 over epoch 2
    assert [float(r["lr"]) for r in rows] == pytest.approx([2e-4, 2e-4, 1e-4, 0.0])
    assert Image.open(run / "losses.png").width > 0
    grid = Image.open(run / "samples" / "step_0000004.png")
    assert grid.height == 6 * 32  # real_A, fake_B, rec_A, real_B, fake_A, rec_B
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step_0000002", "step_0000004"]


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny_dataset, straight) == 0
    assert train(tiny_dataset, resumed, "--max-steps", "2") == 0
    assert torch.load(resumed / "checkpoint.pt", weights_only=False)["step"] == 2
    assert main(["train", "--out", str(resumed), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for net in ("G_A", "G_B", "D_A", "D_B"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    assert (straight / "losses.csv").read_text().count("\n") == (resumed / "losses.csv").read_text().count("\n")


def test_max_minutes_stops_cleanly_with_a_checkpoint(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_dataset),
                "--out",
                str(run),
                *TINY_TRAIN[:8],
                "--epochs",
                "1000",
                "--epochs-decay",
                "0",
                "--steps-per-epoch",
                "2",
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--max-minutes",
                "0",
            ]
        )
        == 0
    )
    assert "stopped by its time budget" in capsys.readouterr().out
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 1


def test_max_cpu_minutes_stops_on_process_cpu_time(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_dataset),
                "--out",
                str(run),
                *TINY_TRAIN[:8],
                "--epochs",
                "1000",
                "--epochs-decay",
                "0",
                "--steps-per-epoch",
                "2",
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--max-cpu-minutes",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "stopped by its time budget" in out and "CPU min" in out
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 1


def test_new_run_refuses_to_overwrite_and_resume_needs_a_checkpoint(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tiny_dataset, run, "--max-steps", "1") == 0
    assert train(tiny_dataset, run) == 2
    assert "already holds a run" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume"]) == 2


@pytest.mark.timeout(300)
def test_ddp_on_two_cpu_processes(tiny_dataset, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "simpsonize.cli",
            "train",
            "--data",
            str(tiny_dataset),
            "--out",
            str(run),
            *TINY_TRAIN,
            "--max-steps",
            "2",
            "--diff-augment",
            "color,translation,cutout",
            "--ema-decay",
            "0.9",
            "--snapshot-every",
            "2",
        ],  # only rank 0 keeps the average; it must not hang the others
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 2" in done.stdout
    with (run / "losses.csv").open() as handle:
        assert all(float(row["D_B"]) > 0 and float(row["cycle_B"]) > 0 for row in csv.DictReader(handle))
    sessions = json.loads((run / "sessions.json").read_text())
    assert sessions[-1]["world_size"] == 2
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and int(state["G_ema"]["n_averaged"]) == 2
    assert (run / "snapshots" / "step_0000002_ema" / "G_B.safetensors").is_file()


def test_resume_can_add_a_decay_to_the_schedule(tiny_dataset, tmp_path, capsys):
    """An ablation arm trained at a constant rate can become the long run: resume with a decay appended."""
    run = tmp_path / "run"
    assert train(tiny_dataset, run, "--max-steps", "2") == 0
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--resume",
                "--epochs-decay",
                "3",
                "--max-steps",
                "2",
                "--device",
                "cpu",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    assert "at step 4/8" in capsys.readouterr().out  # (1 + 3 epochs) x 2 steps
    assert json.loads((run / "config.json").read_text())["epochs_decay"] == 3


def test_precision_auto_picks_bf16_only_with_hardware_or_a_faster_probe(monkeypatch):
    from simpsonize.training import precision as precision_module
    from simpsonize.training.config import TrainConfig
    from simpsonize.training.precision import BF16, BF16_CHANNELS_LAST, FP32, choose_precision

    config = TrainConfig(data="", out="")
    cpu = torch.device("cpu")
    fake_probe(monkeypatch, {})  # no probe when asked or with AMX
    assert choose_precision(TrainConfig(data="", out="", precision="fp32"), cpu)[0] is False
    assert choose_precision(TrainConfig(data="", out="", precision="bf16"), cpu)[0] is True
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert choose_precision(config, cpu) == (True, "auto: CPU has AMX (amx_bf16)")
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: {"avx2"})
    fake_probe(monkeypatch, {FP32: 1.84, BF16: 75.0, BF16_CHANNELS_LAST: 75.0})  # the AVX2 EPYC's trap
    use_bf16, reason = choose_precision(config, cpu)
    assert use_bf16 is False and "probe" in reason
    fake_probe(monkeypatch, {FP32: 1.0, BF16: 0.95, BF16_CHANNELS_LAST: 0.5})  # bf16 in its faster layout
    assert choose_precision(config, cpu) == (
        True,
        "auto: CPU has no AMX or avx512_bf16; probe: bf16 0.500 s vs fp32 1.000 s per step",
    )


def test_probe_times_each_variant_without_touching_the_run_rng():
    from simpsonize.training.config import TrainConfig
    from simpsonize.training.precision import BF16, BF16_CHANNELS_LAST, FP32, probe_step_seconds

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    config = TrainConfig(data="", out="", size=32, ngf=4, n_blocks=1, ndf=4)
    seconds = probe_step_seconds(config, torch.device("cpu"), (FP32, BF16, BF16_CHANNELS_LAST))
    assert len(seconds) == 3 and all(0 < s < math.inf for s in seconds)
    assert torch.equal(torch.rand(3), expected)


def test_resume_writes_into_the_folder_it_was_given_not_the_one_it_was_copied_from(tiny_dataset, tmp_path):
    """An ablation arm copied into a long-run folder and resumed there must not overwrite the arm."""
    import shutil

    arm, long_run = tmp_path / "arm", tmp_path / "long"
    assert train(tiny_dataset, arm, "--max-steps", "2") == 0
    shutil.copytree(arm, long_run)
    before = (arm / "checkpoint.pt").read_bytes()
    assert main(["train", "--out", str(long_run), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    assert (arm / "checkpoint.pt").read_bytes() == before
    assert torch.load(long_run / "checkpoint.pt", weights_only=False)["step"] == 4


def test_resume_keeps_the_runs_snapshot_and_sample_cadence_unless_given_again(tiny_dataset, tmp_path):
    """A resumed run once lost its snapshots because --snapshot-every fell back to its default (none)."""
    run = tmp_path / "run"
    assert train(tiny_dataset, run, "--snapshot-every", "1", "--sample-every", "1", "--max-steps", "2") == 0
    assert (
        main(["train", "--out", str(run), "--resume", "--device", "cpu", "--num-workers", "0", "--max-steps", "1"]) == 0
    )
    assert sorted(p.name for p in (run / "snapshots").iterdir())[-1] == "step_0000003"
    assert (run / "samples" / "step_0000003.png").is_file()
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--resume",
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--snapshot-every",
                "0",
                "--checkpoint-minutes",
                "3",
            ]
        )
        == 0
    )
    assert not (run / "snapshots" / "step_0000004").exists()
    config = json.loads((run / "config.json").read_text())
    assert (config["snapshot_every"], config["sample_every"], config["checkpoint_minutes"]) == (0, 1, 3.0)
    reasons = [session["precision_reason"] for session in json.loads((run / "sessions.json").read_text())]
    assert len(reasons) == 3 and all(r.count("kept from the run's earlier session") == 1 for r in reasons[1:])


def _loss_rows(run: Path) -> list[dict[str, str]]:
    with (run / "losses.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_resume_is_exact_with_the_history_pools_full(tiny_dataset, tmp_path):
    """With a pool of one fake, the pools are full after step 1 and every later step draws on their random state, which
    the checkpoint must carry: the loss values after the resume are the straight run's, to the last digit."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny_dataset, straight, "--pool-size", "1") == 0
    assert train(tiny_dataset, resumed, "--pool-size", "1", "--max-steps", "2") == 0
    state = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert state["config"]["pool_size"] == 1
    assert len(state["pool_A"]["images"]) == len(state["pool_B"]["images"]) == 1  # full
    assert main(["train", "--out", str(resumed), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0

    rows_straight, rows_resumed = _loss_rows(straight), _loss_rows(resumed)
    assert [r["step"] for r in rows_resumed] == ["1", "2", "3", "4"]
    assert rows_resumed == rows_straight  # every loss, lr and epoch value, not just the count of lines
    assert float(rows_resumed[3]["D_A"]) > 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(resumed / "checkpoint.pt", weights_only=False)
    for pool in ("pool_A", "pool_B"):
        assert torch.equal(a[pool]["images"][0], b[pool]["images"][0])
        assert a[pool]["rng"] == b[pool]["rng"]
    for net in ("G_A", "G_B", "D_A", "D_B"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"


def test_pool_size_is_a_flag_and_the_default_is_the_papers(tiny_dataset, tmp_path):
    import simpsonize.training.train as train_module
    from simpsonize.cli import build_parser

    args = build_parser({"train": train_module}).parse_args(["train", "--out", "x", "--data", "y"])
    assert train_module.config_from_args(args).pool_size == 50
    assert train(tiny_dataset, tmp_path / "none", "--pool-size", "0", "--max-steps", "1") == 0
    state = torch.load(tmp_path / "none" / "checkpoint.pt", weights_only=False)
    assert state["config"]["pool_size"] == 0 and state["pool_A"]["images"] == []


def test_bf16_and_channels_last_train_on_the_cpu(tiny_dataset, tmp_path):
    """The GPU recipe's precision and memory format, run once on a tiny model."""
    from torch import nn

    from simpsonize.training.config import TrainConfig
    from simpsonize.training.trainer import Trainer

    config = TrainConfig(
        data=str(tiny_dataset),
        out=str(tmp_path / "t"),
        size=32,
        ngf=4,
        n_blocks=1,
        ndf=4,
        epochs=1,
        epochs_decay=0,
        steps_per_epoch=2,
    )
    trainer = Trainer(
        config, device="cpu", num_workers=0, precision=(True, "asked for bf16"), layout=(True, "asked for on")
    )
    assert trainer.bf16 and trainer.channels_last
    convs = [m.weight for m in [*trainer.G.modules(), *trainer.D.modules()] if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    with torch.no_grad(), trainer.autocast():
        assert trainer.G.G_B(trainer.sample_B).dtype == torch.bfloat16
    before = {k: v.clone() for k, v in trainer.G.G_B.state_dict().items()}
    losses = trainer.train_step(trainer.sample_A[:1], trainer.sample_B[:1])
    assert set(losses) == {
        "D_A",
        "G_A",
        "cycle_A",
        "idt_A",
        "D_B",
        "G_B",
        "cycle_B",
        "idt_B",
        "D_B_proj",
        "G_B_proj",
    }
    assert all(math.isfinite(v) for v in losses.values()) and losses["cycle_B"] > 0
    after = trainer.G.G_B.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned something
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in after.values())  # fp32 master weights

    # the whole loop through the CLI: samples, a snapshot that loads as served weights, the session's precision
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_dataset),
                "--out",
                str(run),
                *TINY_TRAIN[:-2],
                "--precision",
                "bf16",
                "--channels-last",
                "on",
                "--max-steps",
                "2",
                "--snapshot-every",
                "2",
            ]
        )
        == 0
    )
    session = json.loads((run / "sessions.json").read_text())[-1]
    assert [session[k] for k in ("precision", "layout", "layout_reason")] == ["bf16", "channels_last", "asked for on"]
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["precision"]["bf16"] is True and state["layout"]["channels_last"] is True
    from simpsonize.model.weights import load_generator

    generator, _ = load_generator(run / "snapshots" / "step_0000002" / "G_B.safetensors")
    with torch.no_grad():
        out = generator(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_init_from_starts_with_the_other_runs_networks_and_adam_moments_on_a_fresh_schedule(tiny_dataset, tmp_path):
    """Fine-tuning: the four networks and Adam's moments come from the source run; lr, step and pools start anew."""
    from simpsonize.training.config import TrainConfig
    from simpsonize.training.trainer import Trainer

    source = tmp_path / "source"
    assert train(tiny_dataset, source) == 0  # ends with lr decayed to 0
    config = TrainConfig(
        data=str(tiny_dataset),
        out=str(tmp_path / "tuned"),
        size=32,
        ngf=4,
        n_blocks=1,
        ndf=4,
        epochs=1,
        epochs_decay=1,
        steps_per_epoch=2,
        precision="fp32",
        lr=5e-5,
    )
    trainer = Trainer(config, device="cpu", num_workers=0)
    assert trainer.load_networks(source) == 4
    state = torch.load(source / "checkpoint.pt", weights_only=False)
    for name, module in (
        ("G_A", trainer.G.G_A),
        ("G_B", trainer.G.G_B),
        ("D_A", trainer.D.D_A),
        ("D_B", trainer.D.D_B),
    ):
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[name][key]), f"{name}.{key} was not loaded"
    moments = trainer.opt_G.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(moments, state["opt_G"]["state"][0]["exp_avg"])
    assert trainer.step == 0 and len(trainer.pool_A.images) == 0
    assert [g["lr"] for g in trainer.opt_G.param_groups + trainer.opt_D.param_groups] == [5e-5, 5e-5]
    (tmp_path / "tuned").mkdir()
    trainer.fit(max_steps=3)
    # this run's own schedule at its step 3 of 4 (the source logged 1e-4 there, from 2e-4)
    assert [g["lr"] for g in trainer.opt_G.param_groups] == [pytest.approx(2.5e-5)]


def test_init_from_the_cli_and_its_errors(tiny_dataset, tmp_path, capsys):
    source = tmp_path / "source"
    assert train(tiny_dataset, source, "--max-steps", "1") == 0
    assert train(tiny_dataset, tmp_path / "tuned", "--init-from", str(source), "--lr", "5e-5", "--max-steps", "1") == 0
    assert "networks from" in capsys.readouterr().out
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["init_from"] == str(source) and config["lr"] == 5e-5
    assert train(tiny_dataset, tmp_path / "wider", "--init-from", str(source), "--max-steps", "1", "--ngf", "8") == 2
    message = capsys.readouterr().out
    assert "different architecture" in message and "ngf 4 (this run 8)" in message
    assert train(tiny_dataset, tmp_path / "none", "--init-from", str(tmp_path / "missing")) == 2
    assert "does not exist" in capsys.readouterr().out
    # a run of the removed `--landmark-maps` (its G_B took 3 + 5 input channels): no start from it, no export of it
    state = torch.load(source / "checkpoint.pt", weights_only=False)
    torch.save({**state, "config": {**state["config"], "landmark_maps": True}}, source / "checkpoint.pt")
    assert train(tiny_dataset, tmp_path / "guided", "--init-from", str(source), "--max-steps", "1") == 2
    assert "landmark_maps True (this trainer has none)" in capsys.readouterr().out
    assert main(["export", "--run", str(source), "--out", str(tmp_path / "G_B.safetensors")]) == 2
    assert capsys.readouterr().out.strip() == (
        f"error: {source} was trained with --landmark-maps, removed after its ablation lost (docs/experiments.md); "
        "commit e674807 still has it."
    )


def test_lambda_cycle_is_a_flag(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_dataset, run, "--lambda-cycle", "0", "--lambda-identity", "0", "--max-steps", "2") == 0
    rows = _loss_rows(run)
    assert all(float(r["cycle_A"]) == float(r["cycle_B"]) == 0.0 for r in rows)
    assert json.loads((run / "config.json").read_text())["lambda_cycle"] == 0.0


FASTER_CHANNELS_LAST = {(True, False): 1.0, (True, True): 0.5}  # bf16 step seconds by (bf16, channels_last)
FASTER_CONTIGUOUS = {(True, False): 0.5, (True, True): 1.0}


@pytest.mark.parametrize(
    "bf16, choice, probe, expected",
    [
        (True, "auto", FASTER_CHANNELS_LAST, True),
        (True, "auto", FASTER_CONTIGUOUS, False),
        (False, "auto", {}, False),
        (True, "off", {}, False),
        (False, "on", {}, True),
    ],
)
def test_channels_last_follows_the_bf16_probe_unless_forced(
    tiny_dataset, tmp_path, monkeypatch, bf16, choice, probe, expected
):
    """--channels-last auto on a CPU: contiguous with fp32, and with bf16 the layout the probe (here a stand-in) finds
    faster (bench train found bf16 faster without channels_last on a Zen 4); on/off force the layout of the networks
    and the images, and a step trains either way."""
    from torch import nn

    from simpsonize.training.config import TrainConfig
    from simpsonize.training.trainer import Trainer

    calls = fake_probe(monkeypatch, probe)

    config = TrainConfig(
        data=str(tiny_dataset),
        out=str(tmp_path / "t"),
        size=32,
        ngf=4,
        n_blocks=1,
        ndf=4,
        epochs=1,
        epochs_decay=0,
        steps_per_epoch=2,
        channels_last=choice,
    )
    trainer = Trainer(config, device="cpu", num_workers=0, precision=(bf16, "test"))
    assert trainer.channels_last is expected and len(calls) == (1 if probe else 0)
    convs = [m.weight for m in trainer.G.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert all(w.is_contiguous(memory_format=torch.channels_last) is expected for w in convs)
    losses = trainer.train_step(trainer.sample_A[:1], trainer.sample_B[:1])
    assert all(math.isfinite(v) for v in losses.values())


def test_channels_last_takes_only_its_three_values(tiny_dataset, tmp_path, capsys):
    from simpsonize.training.config import TrainConfig
    from simpsonize.training.trainer import Trainer

    config = TrainConfig(
        data=str(tiny_dataset), out=str(tmp_path / "t"), size=32, ngf=4, n_blocks=1, ndf=4, channels_last="sometimes"
    )
    with pytest.raises(ValueError, match="unknown channels_last 'sometimes'"):
        Trainer(config, device="cpu", num_workers=0, precision=(False, "test"))
    with pytest.raises(SystemExit):
        train(tiny_dataset, tmp_path / "cli", "--channels-last", "sometimes")
    assert "invalid choice" in capsys.readouterr().err


# The last trainer in one file, with every trick that later lost its ablation (issue 29); the last trainer with
# --eye-judge and --d-projected alone (the eighteenth session's losers); and the last with --eye-consistency (its
# G_B_eyes loss column and the dataset's positions, gone since).
BEFORE_THE_SPLIT = "f6bafa5"
BEFORE_THE_TRIM = "410744a"
BEFORE_THE_EYE_TERM_LEFT = "e564b5f"


@pytest.mark.usefixtures("tiny_projected_features")
@pytest.mark.parametrize(
    "commit, judge",
    [
        (BEFORE_THE_SPLIT, []),
        (BEFORE_THE_TRIM, ["--d-projected", "with-patch"]),
        (BEFORE_THE_EYE_TERM_LEFT, ["--d-projected", "with-patch"]),
    ],
    ids=["before-the-split", "before-the-trim-with-patch", "before-the-eye-term-left-with-patch"],
)
def test_a_run_folder_of_an_earlier_trainer_resumes_and_ends_as_this_trainer_trains_it(
    tiny_dataset, tmp_path, commit, judge
):
    """The shipped recipe's options on tiny networks (before the trim, with the long run's projected judge beside the
    PatchGAN): a run that the earlier trainer took 2 of its 4 steps, resumed here, ends with the same weights, average
    and loss log to the bit as this trainer's straight run, so those first 2 steps were the same too. Its config.json
    names the removed options, at their defaults."""
    from tests.training.conftest import checkout_of, run_in_checkout

    recipe = ["--upsampling", "resize_conv", "--pool-size", "1", "--ema-decay", "0.9", *judge]
    root, _ = checkout_of(commit, tmp_path)
    old = tmp_path / "old"
    run_in_checkout(
        root,
        [
            str(Path(__file__).with_name("projected_ddp_entry.py")),  # that commit's CLI, with the tiny features
            "train",
            "--data",
            str(tiny_dataset),
            "--out",
            str(old),
            *TINY_TRAIN,
            *recipe,
            "--max-steps",
            "2",
        ],
        also=(REPO,),
    )
    saved = json.loads((old / "config.json").read_text())
    removed = "eye_consistency" if commit == BEFORE_THE_EYE_TERM_LEFT else "eye_judge"
    assert saved[removed] == 0.0  # the old trainer's (this one has no such field)
    if commit == BEFORE_THE_SPLIT:
        assert (saved["lambda_tv"], saved["d_scales"], saved["objective"]) == (0.0, 1, "cyclegan")
    assert main(["train", "--out", str(old), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    straight = tmp_path / "straight"
    assert train(tiny_dataset, straight, *recipe) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(old / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for net in ("G_A", "G_B", "D_A", "D_B", "G_ema", *(["D_B_projected"] if judge else [])):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs"
    assert set(a) == set(b)  # the same entries: no sign of the removed tricks is left
    assert _loss_rows(old) == _loss_rows(straight)  # the resume drops the removed tricks' columns (all 0)
    assert not {"lambda_tv", "eye_judge", "eye_consistency"} & set(json.loads((old / "config.json").read_text()))


def test_resuming_a_run_that_used_a_removed_option_exits_2_naming_it(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tiny_dataset, run, "--max-steps", "1") == 0
    original = torch.load(run / "checkpoint.pt", weights_only=False)
    capsys.readouterr()
    resume = ["train", "--out", str(run), "--resume", "--device", "cpu", "--num-workers", "0", "--max-steps", "1"]
    cases = [
        (
            {"lambda_tv": 2.0},
            "this run uses --lambda-tv 2, an option removed from the trainer after its "
            "ablation lost (docs/experiments.md); commit f6bafa5 still has it.",
        ),
        (
            {"objective": "cut", "spectral_norm": True, "r1_gamma": 10.0},
            "this run uses --spectral-norm, --objective cut and --r1-gamma 10, options removed from the trainer "
            "after their ablation lost (docs/experiments.md); commit f6bafa5 still has them.",
        ),
        (
            {"eye_judge": 1.0},
            "this run uses --eye-judge 1, an option removed from the trainer after its "
            "ablation lost (docs/experiments.md); commit 410744a still has it.",
        ),
        (  # a removed flag: G_B took face-part heatmaps beside the photo
            {"landmark_maps": True},
            "this run uses --landmark-maps, an option removed from the trainer after its "
            "ablation lost (docs/experiments.md); commit e674807 still has it.",
        ),
        (
            {"eye_consistency": 1.0},
            "this run uses --eye-consistency 1, an option removed from the trainer after its "
            "ablation lost (docs/experiments.md); commit e564b5f still has it.",
        ),
        (  # a removed value of a kept option
            {"d_projected": "alone"},
            "this run uses --d-projected alone, an option removed from the trainer after its "
            "ablation lost (docs/experiments.md); commit 410744a still has it.",
        ),
        (  # the older commit still has the tricks removed after it
            {"lambda_tv": 2.0, "eye_judge": 0.5},
            "this run uses --lambda-tv 2 and --eye-judge 0.5, options removed from the trainer after their ablation "
            "lost (docs/experiments.md); commit f6bafa5 still has them.",
        ),
    ]
    for removed, sentence in cases:
        torch.save({**original, "config": {**original["config"], **removed}}, run / "checkpoint.pt")
        assert main(resume) == 2
        assert capsys.readouterr().out.strip() == f"error: {sentence}"
        assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 1  # left as it was
    # at the values that meant "off", and their settings that did nothing while off, they are no obstacle
    off = {
        "lambda_tv": 0.0,
        "d_scales": 1,
        "objective": "cyclegan",
        "spectral_norm": False,
        "eye_judge": 0.0,
        "landmark_maps": False,
        "eye_consistency": 0.0,
        "r1_every": 16,
        "lambda_nce": 2.0,
        "nce_patches": 64,
    }
    torch.save({**original, "config": {**original["config"], **off}}, run / "checkpoint.pt")
    assert main(resume) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 2


def test_resume_changes_only_what_it_may_and_names_the_options_it_keeps(tiny_dataset, tmp_path, capsys):
    """A run's whole command given again with --resume continues that run: the options that define it stay."""
    run = tmp_path / "run"
    assert train(tiny_dataset, run, "--max-steps", "1") == 0
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--resume",
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--max-steps",
                "1",
                "--lr",
                "1e-3",
                "--ngf",
                "4",
                "--sample-every",
                "5",
            ]
        )
        == 0
    )
    assert "train: --resume keeps the run's own --lr" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert (config["lr"], config["sample_every"]) == (2e-4, 5)


def test_a_resumed_loss_log_keeps_todays_columns_only(tmp_path):
    """An older run's log: the columns of removed tricks leave, the columns of terms added since (here the projected
    judge's, which runs from before it had) are 0 in its rows, and rows past the checkpoint are dropped."""
    from simpsonize.training.checkpoint import LossLog
    from simpsonize.training.losses import LOSS_NAMES

    older = [name for name in LOSS_NAMES if not name.endswith("_proj")] + ["r1"]
    path = tmp_path / "losses.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "epoch", "lr", *older, "seconds"])
        writer.writeheader()
        for step in (1, 2, 3):
            writer.writerow({"step": step, "epoch": "0", "lr": "2e-4", **dict.fromkeys(older, "0.5"), "seconds": "1"})
    LossLog(path, resume_step=2).close()
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == ["1", "2"]
    assert list(rows[0]) == ["step", "epoch", "lr", *LOSS_NAMES, "seconds"]
    assert all(row["D_B_proj"] == row["G_B_proj"] == "0.00000" and row["G_B"] == "0.5" for row in rows)
