"""`train --d-scales`: the Simpsons-side discriminator judges the image at several scales (pix2pixHD)."""

import csv

import torch

from simpsonize.cli import main
from simpsonize.model.networks import DiscriminatorConfig, halve
from tests.training.conftest import (TINY_TRAIN, assert_same_networks,
                                     assert_simpsons_judge_learns_and_pushes_only_g_b, tiny_trainer)
from simpsonize.training.train import Discriminators

# 48 px: the coarse scale is 24 px, the smallest side a 70x70 PatchGAN still answers.
MULTI_SCALE = [*TINY_TRAIN, "--size", "48", "--d-scales", "2"]


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *MULTI_SCALE, *extra])


def test_halve_averages_neighbourhoods_and_keeps_flat_images_flat():
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert halve(flat).shape == (1, 3, 16, 16)
    assert torch.allclose(halve(flat), flat[:, :, :16, :16])  # the border is not darkened by zero padding
    stripes = torch.zeros(1, 1, 8, 8)
    stripes[..., ::2] = 1.0  # a one-pixel texture that a coarser scale no longer shows in full contrast
    assert halve(stripes).std() < stripes.std() / 2


def test_the_coarsest_scale_sees_the_whole_face_and_the_finest_only_a_patch():
    """Why the flag exists: at 128 px with 3 scales every coarse logit depends on every part of the face, while a
    70x70 patch logit of D_B does not see the opposite corner. The C2ST tells our faces from the show's by their
    colour layout at 8x8 px, which only the first can judge."""
    torch.manual_seed(0)
    # Without instance norms (the spectral-norm variant), so that only the convolutions' reach is measured: an
    # instance norm passes every pixel's share of the mean and variance to every logit.
    D = Discriminators(DiscriminatorConfig(ndf=8, spectral_norm=True), d_scales=3).eval()
    image = torch.rand(1, 3, 128, 128) * 2 - 1
    moved = image.clone()
    moved[:, :, :8, :8] = -image[:, :, :8, :8]  # change only the top-left corner
    with torch.no_grad():
        before, after = D.judge_simpsons(image), D.judge_simpsons(moved)
    assert [tuple(p.shape[-2:]) for p in before] == [(14, 14), (6, 6), (2, 2)]
    assert torch.equal(before[0][..., -1, -1], after[0][..., -1, -1])  # the far corner's patch did not see it
    coarse_change = (before[2] - after[2]).abs()
    assert (coarse_change > 0).all()  # every whole-face logit did


def test_a_multi_scale_run_trains_checkpoints_and_resumes_exactly(tiny_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny_dataset, straight) == 0
    state = torch.load(straight / "checkpoint.pt", weights_only=False)
    assert {"D_B_coarse", "opt_D_coarse", "sched_D_coarse"} <= set(state)
    assert state["config"]["d_scales"] == 2
    with (straight / "losses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert all(float(r["D_B_coarse"]) > 0 and float(r["G_B_coarse"]) > 0 for r in rows)

    assert train(tiny_dataset, resumed, "--max-steps", "2") == 0
    assert main(["train", "--out", str(resumed), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    other = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert_same_networks(state, other, ("G_B", "D_B", "D_B_coarse"))


def test_the_coarse_discriminator_learns_and_pushes_the_generator(tiny_dataset, tmp_path):
    def trainer():
        return tiny_trainer(tiny_dataset, tmp_path / "t", size=48, d_scales=2)

    # G_B's step depends on what the coarse scale thinks, so its loss is part of the generator's objective; G_A's
    # does not, since the second scale judges only the Simpsons side.
    assert_simpsons_judge_learns_and_pushes_only_g_b(trainer, lambda t: t.D.D_B_coarse)


def test_init_from_a_single_scale_run_keeps_its_networks_and_starts_the_coarse_one_fresh(tiny_dataset, tmp_path):
    source = tmp_path / "source"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(source), *TINY_TRAIN, "--size", "48"]) == 0
    tuned = tmp_path / "tuned"
    assert train(tiny_dataset, tuned, "--init-from", str(source), "--max-steps", "0") == 0
    trainer = tiny_trainer(tiny_dataset, tmp_path / "t", size=48, d_scales=2)
    fresh = {k: v.clone() for k, v in trainer.D.D_B_coarse.state_dict().items()}
    trainer.load_networks(source)
    state = torch.load(source / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(v, state["D_B"][k]) for k, v in trainer.D.D_B.state_dict().items())
    assert all(torch.equal(v, fresh[k]) for k, v in trainer.D.D_B_coarse.state_dict().items())


def test_too_many_scales_for_the_size_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), *TINY_TRAIN,
                 "--d-scales", "2"]) == 2  # 32 px halved is 16 px
    message = capsys.readouterr().out
    assert "--d-scales 2 at 32 px" in message and "at least 24" in message
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), *TINY_TRAIN,
                 "--d-scales", "0"]) == 2
    assert "at least 1" in capsys.readouterr().out
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
