"""The total-variation prior (training/regularizers.py, `train --lambda-tv`)."""

import csv

import torch

from simpsonize.cli import main
from tests.training.conftest import TINY_TRAIN
from simpsonize.training.regularizers import total_variation


def test_flat_colour_costs_nothing_and_noise_costs_a_lot():
    flat = torch.full((1, 3, 32, 32), 0.6)
    noisy = flat + 0.1 * torch.randn_like(flat)
    assert total_variation(flat) == 0
    assert total_variation(noisy) > 0.1


def test_an_outline_costs_its_height_whether_sharp_or_soft():
    """Why L1 and not squared differences: a sharp outline must not cost more than a blurred one."""
    sharp = torch.zeros(1, 1, 16, 32)
    sharp[..., 16:] = 1.0
    soft = torch.linspace(0, 1, 10).repeat(1, 1, 16, 1)
    soft = torch.cat([torch.zeros(1, 1, 16, 11), soft, torch.ones(1, 1, 16, 11)], dim=3)
    assert torch.isclose(total_variation(sharp), total_variation(soft))
    squared = lambda x: ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()  # noqa: E731
    assert squared(sharp) > 5 * squared(soft)  # the L2 version would blur outlines


def _rows(run):
    with (run / "losses.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_lambda_tv_adds_the_weighted_prior_to_the_generator_loss(tiny_dataset, tmp_path):
    from simpsonize.training.train import Trainer, TrainConfig

    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), *TINY_TRAIN, "--lambda-tv", "3",
                 "--max-steps", "2"]) == 0
    assert all(float(r["tv"]) > 0 for r in _rows(run))
    off = tmp_path / "off"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(off), *TINY_TRAIN, "--max-steps", "1"]) == 0
    assert all(float(r["tv"]) == 0 for r in _rows(off))

    config = TrainConfig(data=str(tiny_dataset), out=str(tmp_path / "t"), size=32, ngf=4, n_blocks=1, ndf=4,
                         epochs=1, epochs_decay=0, steps_per_epoch=2, precision="fp32", lambda_tv=3.0)
    trainer = Trainer(config, device="cpu", num_workers=0)
    image = torch.rand(1, 3, 32, 32)
    assert torch.isclose(trainer.flatness(image), 3.0 * total_variation(image))


def test_flat_share_counts_the_flat_neighbours():
    from simpsonize.training.regularizers import flat_share

    flat = torch.zeros(2, 3, 8, 8)
    assert flat_share(flat) == 1.0
    stripes = flat.clone()
    stripes[..., :, ::2] = 1.0  # every horizontal pair differs, every vertical pair is flat
    assert flat_share(stripes) == 0.5
    assert flat_share(flat + torch.rand_like(flat)) < 0.2
