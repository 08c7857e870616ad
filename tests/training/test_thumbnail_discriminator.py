"""`train --d-thumbnail`: a Simpsons-side discriminator that judges each crop's colour layout from a thumbnail."""

import pytest
import torch

from simpsonize.cli import main
from simpsonize.model.networks import DiscriminatorConfig, ThumbnailDiscriminator
from tests.training.conftest import (TINY_TRAIN, assert_same_networks,
                                     assert_simpsons_judge_learns_and_pushes_only_g_b, tiny_trainer)
from simpsonize.training.train import Discriminators


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, "--d-thumbnail", "8", *extra])


def test_one_logit_per_image_that_every_pixel_reaches():
    """Why it exists: the C2ST tells our faces from the show's by 8x8 px thumbnails, so the judge must see the
    whole crop's layout at once, and a change in any corner must move its single logit."""
    torch.manual_seed(0)
    judge = ThumbnailDiscriminator(16, ndf=8).eval()
    image = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        before = judge(image)
        assert before.shape == (2, 1)
        for corner in ((slice(0, 8), slice(0, 8)), (slice(120, 128), slice(120, 128))):
            moved = image.clone()
            moved[:, :, corner[0], corner[1]] = -image[:, :, corner[0], corner[1]]
            assert (judge(moved) - before).abs().min() > 0


def test_it_sees_the_layout_and_not_the_texture():
    """Pixel-level texture below the thumbnail's resolution averages away: a checkerboard and its flat mean give
    the same thumbnail, so the generator cannot answer this judge with noise, only with colours in places."""
    judge = ThumbnailDiscriminator(8, ndf=8).eval()
    checker = torch.zeros(1, 3, 64, 64)
    checker[..., ::2, ::2] = 1.0
    checker[..., 1::2, 1::2] = 1.0
    flat = torch.full_like(checker, 0.5)
    yellow_left = flat.clone()
    yellow_left[:, :2, :, :32] = 1.0
    with torch.no_grad():
        assert torch.allclose(judge(checker), judge(flat), atol=1e-6)
        assert not torch.allclose(judge(yellow_left), judge(flat), atol=1e-4)


def test_the_discriminators_add_its_logit_after_the_patch_scales():
    D = Discriminators(DiscriminatorConfig(ndf=4), d_scales=2, thumbnail=8)
    logits = D.judge_simpsons(torch.rand(2, 3, 48, 48) * 2 - 1)
    assert [tuple(p.shape) for p in logits] == [(2, 1, 4, 4), (2, 1, 1, 1), (2, 1)]


def test_it_learns_and_pushes_only_the_simpsons_generator(tiny_dataset, tmp_path):
    def trainer():
        return tiny_trainer(tiny_dataset, tmp_path / "t", d_thumbnail=8)

    assert_simpsons_judge_learns_and_pushes_only_g_b(trainer, lambda t: t.D.D_B_thumb)


def test_a_thumbnail_run_checkpoints_and_resumes_exactly(tiny_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny_dataset, straight) == 0
    state = torch.load(straight / "checkpoint.pt", weights_only=False)
    assert state["config"]["d_thumbnail"] == 8 and state["D_B_thumb"]
    assert train(tiny_dataset, resumed, "--max-steps", "2") == 0
    assert main(["train", "--out", str(resumed), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    other = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert_same_networks(state, other, ("G_B", "D_B", "D_B_thumb"))


def test_init_from_a_run_without_it_starts_it_fresh(tiny_dataset, tmp_path):
    source = tmp_path / "source"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(source), *TINY_TRAIN]) == 0
    trainer = tiny_trainer(tiny_dataset, tmp_path / "t", d_thumbnail=8)
    fresh = {k: v.clone() for k, v in trainer.D.D_B_thumb.state_dict().items()}
    trainer.load_networks(source)
    assert all(torch.equal(v, fresh[k]) for k, v in trainer.D.D_B_thumb.state_dict().items())


@pytest.mark.parametrize("side", ["4", "10", "64"])
def test_a_bad_side_is_a_clear_error(tiny_dataset, tmp_path, capsys, side):
    assert train(tiny_dataset, tmp_path / "run", "--d-thumbnail", side) == 2  # the last --d-thumbnail wins
    assert "--d-thumbnail must be 0 (off) or a side of 8 px up to --size 32" in capsys.readouterr().out
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
