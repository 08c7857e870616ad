"""The R1 penalty on the Simpsons-side discriminators (training/regularizers.py, `train --r1-gamma`)."""

import csv

import torch

from simpsonize.cli import main
from tests.training.conftest import TINY_TRAIN
from simpsonize.training.regularizers import r1_penalty
from simpsonize.training.train import Trainer, TrainConfig


def test_r1_is_the_squared_gradient_of_the_score_at_real_images():
    weight = torch.randn(3, 8, 8)
    linear = lambda x: [(x * weight).sum(dim=(1, 2, 3)).view(-1, 1, 1, 1)]  # noqa: E731  score gradient = weight
    images = torch.rand(4, 3, 8, 8)
    assert torch.isclose(r1_penalty(linear, images), weight.pow(2).sum())
    # a judge that ignores its input has no slope to charge
    constant = lambda x: [torch.ones(len(x), 1, 2, 2) + 0 * x.sum()]  # noqa: E731
    assert r1_penalty(constant, images) == 0
    # each scale's score is its mean logit, and the scales add up
    two_scales = lambda x: [linear(x)[0].expand(-1, 1, 3, 3), 2 * linear(x)[0]]  # noqa: E731
    assert torch.isclose(r1_penalty(two_scales, images), 9 * weight.pow(2).sum())


def test_r1_flattens_the_discriminator_around_real_images():
    """Descending the penalty must reach the judge's weights (the gradient's graph is kept) and lower it."""
    torch.manual_seed(0)
    judge = torch.nn.Conv2d(3, 1, 3)
    images = torch.rand(2, 3, 8, 8)
    before = r1_penalty(lambda x: [judge(x)], images)
    before.backward()
    assert judge.weight.grad is not None and judge.weight.grad.abs().sum() > 0
    with torch.no_grad():
        judge.weight -= 0.1 * judge.weight.grad
    assert r1_penalty(lambda x: [judge(x)], images) < before


def _trainer(tiny_dataset, tmp_path, **options):
    config = TrainConfig(data=str(tiny_dataset), out=str(tmp_path / "t"), size=48, ngf=4, n_blocks=1, ndf=4,
                         epochs=2, epochs_decay=0, steps_per_epoch=2, precision="fp32", d_scales=2, **options)
    return Trainer(config, device="cpu", num_workers=0)


def test_lazy_r1_steps_the_simpsons_judges_only_every_nth_step(tiny_dataset, tmp_path):
    on, off = _trainer(tiny_dataset, tmp_path, r1_gamma=50.0, r1_every=2), _trainer(tiny_dataset, tmp_path)
    logged = []
    for step in range(3):
        D_B_before = [p.detach().clone() for p in on.D.D_B.parameters()]
        losses = {}
        for t in (on, off):  # same seed, same data: the only difference is the penalty
            losses[t is on] = t.train_step(t.sample_A[:1], t.sample_B[:1])
        logged.append(losses[True]["r1"])
        assert losses[False]["r1"] == 0
        if step == 0:  # the penalty changed the Simpsons-side judges, at both scales, and not D_A
            assert any(not torch.equal(a, b) for a, b in zip(on.D.D_B.parameters(), off.D.D_B.parameters()))
            assert any(not torch.equal(a, b)
                       for a, b in zip(on.D.D_B_coarse.parameters(), off.D.D_B_coarse.parameters()))
            assert all(torch.equal(a, b) for a, b in zip(on.D.D_A.parameters(), off.D.D_A.parameters()))
            assert any(not torch.equal(a, b) for a, b in zip(D_B_before, on.D.D_B.parameters()))
    assert logged[0] > 0 and logged[1] == 0 and logged[2] > 0  # steps 0 and 2 of every 2


def test_r1_gamma_from_the_command_line_reaches_the_loss_log(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), *TINY_TRAIN, "--r1-gamma", "10",
                 "--r1-every", "1", "--max-steps", "2"]) == 0
    with (run / "losses.csv").open() as handle:
        assert all(float(row["r1"]) > 0 for row in csv.DictReader(handle))
    assert torch.load(run / "checkpoint.pt", weights_only=False)["config"]["r1_gamma"] == 10.0


def test_bad_r1_options_are_clear_errors(tiny_dataset, tmp_path, capsys):
    for flags, sentence in ((["--r1-gamma", "-1"], "--r1-gamma must be 0 (off) or positive"),
                            (["--r1-gamma", "1", "--r1-every", "0"], "--r1-every must be at least 1")):
        assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), *TINY_TRAIN,
                     *flags]) == 2
        assert sentence in capsys.readouterr().out
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
