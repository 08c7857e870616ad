"""`train --d-warmup`: the first steps of a run train only the discriminators."""

import torch

from simpsonize.cli import main
from tests.training.conftest import TINY_TRAIN, tiny_trainer


def trainer(data, out, **options):
    return tiny_trainer(data, out, steps_per_epoch=4, **options)


def copy(module):
    return [p.detach().clone() for p in module.parameters()]


def test_the_generators_wait_while_the_discriminators_learn_then_train_as_usual(tiny_dataset, tmp_path):
    t = trainer(tiny_dataset, tmp_path / "t", d_warmup=2, d_thumbnail=8)
    generators, judges = copy(t.G), copy(t.D)
    for _ in range(2):
        losses = t.train_step(t.sample_A[:1], t.sample_B[:1])
    assert all(torch.equal(a, b) for a, b in zip(generators, t.G.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(judges, t.D.parameters()))  # every judge, the new one too
    assert losses["G_B"] > 0 and losses["cycle_B"] > 0  # still computed, for the loss log
    t.train_step(t.sample_A[:1], t.sample_B[:1])  # step 2: warm-up over
    assert any(not torch.equal(a, b) for a, b in zip(generators, t.G.G_B.parameters()))
    assert t.step == 3 and t.sched_G.get_last_lr()[0] == t.config.lr  # the warm-up steps count in the schedule


def test_without_it_the_first_step_moves_the_generators(tiny_dataset, tmp_path):
    t = trainer(tiny_dataset, tmp_path / "t")
    generators = copy(t.G.G_B)
    t.train_step(t.sample_A[:1], t.sample_B[:1])
    assert any(not torch.equal(a, b) for a, b in zip(generators, t.G.G_B.parameters()))


def test_bad_values_are_clear_errors(tiny_dataset, tmp_path, capsys):
    run = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), *TINY_TRAIN]
    assert main([*run, "--d-warmup", "-1"]) == 2
    assert "--d-warmup must be 0 (off) or a number of steps" in capsys.readouterr().out
    assert main([*run, "--d-warmup", "2", "--objective", "cut"]) == 2
    assert "cyclegan objective only" in capsys.readouterr().out
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
