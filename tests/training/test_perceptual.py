"""`train --cycle-perceptual SHARE`: part of the photo cycle measured on frozen features (training/perceptual.py).

The distance is tested on TinyFeatures (tests/training/conftest.py), a tiny random stand-in for Lite0; only
tests/training/test_lite0.py loads the real weights."""

import csv
from pathlib import Path

import pytest
import torch

import simpsonize.training.perceptual
from simpsonize.cli import main
from simpsonize.training.perceptual import FeatureDistance, mixed_cycle
from tests.training.conftest import TINY_TRAIN, TinyFeatures, tiny_trainer


@pytest.fixture(autouse=True)
def tiny_distance(monkeypatch):
    monkeypatch.setattr(simpsonize.training.perceptual, "pretrained_distance", lambda: FeatureDistance(TinyFeatures()))


def images(seed: int, n: int = 2, side: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "losses.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_the_distance_is_zero_only_for_the_same_image_and_reaches_the_image():
    distance = FeatureDistance(TinyFeatures())
    photo = images(0)
    assert distance(photo, photo).item() == 0.0
    drawing = images(1).requires_grad_(True)
    d = distance(drawing, photo)
    assert d.item() > 0.1 and d.dtype == torch.float32
    d.backward()
    assert drawing.grad is not None and drawing.grad.abs().sum() > 0


def test_the_feature_network_stays_frozen_in_eval_mode():
    """No parameters for an optimiser or DDP to see, and the batch norms keep their statistics even when the trainer
    puts everything in training mode."""
    distance = FeatureDistance(TinyFeatures())
    before = {k: v.clone() for k, v in distance.state_dict().items()}
    distance.train()
    assert not distance.training and list(distance.parameters()) == []
    distance(images(1).requires_grad_(True), images(0)).backward()
    assert all(torch.equal(before[k], v) for k, v in distance.state_dict().items())


def test_the_mix_is_the_pixel_l1_at_share_0_and_the_distance_at_share_1():
    distance = FeatureDistance(TinyFeatures())
    rec, photo = images(1), images(0)
    pixels = torch.nn.functional.l1_loss(rec, photo)
    assert torch.equal(mixed_cycle(rec, photo, 0.0, None), pixels)
    assert torch.allclose(mixed_cycle(rec, photo, 1.0, distance), distance(rec, photo))
    half = mixed_cycle(rec, photo, 0.5, distance)
    assert torch.allclose(half, 0.5 * pixels + 0.5 * distance(rec, photo))


def test_it_changes_only_the_photo_cycle_of_the_first_step(tiny_dataset, tmp_path):
    """Same seed, same networks: the drawing cycle and the judges' first losses are the same, the photo cycle not."""
    plain = tiny_trainer(tiny_dataset, tmp_path / "plain", pool_size=1)
    mixed = tiny_trainer(tiny_dataset, tmp_path / "mixed", pool_size=1, cycle_perceptual=0.5)
    batch = (plain.sample_A[:1], plain.sample_B[:1])
    a, b = plain.train_step(*batch), mixed.train_step(*batch)
    assert a["cycle_A"] == b["cycle_A"] and a["G_B"] == b["G_B"] and a["D_B"] == b["D_B"]
    assert a["cycle_B"] != b["cycle_B"]
    # the frozen network is not one of the trained, saved or reduced networks
    assert all("features" not in name for name, _ in mixed.networks())
    assert sum(p.numel() for p in mixed.G.parameters()) == sum(p.numel() for p in plain.G.parameters())


def test_bf16_trains_with_it(tiny_dataset, tmp_path):
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
        cycle_perceptual=0.5,
    )
    trainer = Trainer(config, device="cpu", num_workers=0, precision=(True, "asked for bf16"), layout=(True, "on"))
    before = {k: v.clone() for k, v in trainer.G.G_B.state_dict().items()}
    losses = trainer.train_step(trainer.sample_A[:1], trainer.sample_B[:1])
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.G.G_B.state_dict().items())


def test_the_share_round_trips_through_checkpoint_and_resume(tiny_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    options = [*TINY_TRAIN, "--cycle-perceptual", "0.5", "--pool-size", "1"]
    assert main(["train", "--data", str(tiny_dataset), "--out", str(straight), *options]) == 0
    assert main(["train", "--data", str(tiny_dataset), "--out", str(resumed), *options, "--max-steps", "2"]) == 0
    assert main(["train", "--out", str(resumed), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    saved = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert saved["config"]["cycle_perceptual"] == 0.5
    assert not any("features" in key for key in saved["G_B"])
    assert rows(resumed) == rows(straight)


@pytest.mark.parametrize("share", ["-0.1", "1.5"])
def test_a_share_outside_0_to_1_exits_2_with_a_sentence(tiny_dataset, tmp_path, capsys, share):
    run = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), *TINY_TRAIN, "--cycle-perceptual", share]
    assert main(run) == 2
    assert f"error: --cycle-perceptual is a share between 0 and 1, not {float(share):g}." in capsys.readouterr().out
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
