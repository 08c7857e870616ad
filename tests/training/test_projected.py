"""`train --d-projected`: a Projected GAN judge (training/projected.py) of the Simpsons side, on frozen features.

Every test here judges through TinyFeatures (tests/training/conftest.py), a tiny random stand-in for Lite0; only
tests/training/test_lite0.py loads the real weights."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import simpsonize.training.train
from simpsonize.cli import main
from simpsonize.model.networks import GeneratorConfig, ResnetGenerator
from simpsonize.training.projected import ProjectedDiscriminator, RandomProjection, projected_lsgan
from tests.training.conftest import (
    TINY_TRAIN,
    TinyFeatures,
    assert_same_networks,
    assert_simpsons_judge_learns_and_pushes_only_g_b,
    tiny_trainer,
    train_at_commit,
)
from tests.training.trainer_entry import exercise

REPO = Path(__file__).resolve().parents[2]
# The trainer as it was before --d-projected existed: with the flag off, training must be the same to the bit.
BEFORE_THE_FLAG = "c8ae6ab"

pytestmark = pytest.mark.usefixtures("tiny_projected_features")


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, *extra])


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "losses.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def frozen_state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.D.D_B_projected[0].projection.state_dict().items()}


def test_the_frozen_parts_get_no_gradient_and_do_not_change_in_training(tiny_dataset, tmp_path):
    """The pretrained features (with their batch-norm statistics) and the random mixing stay exactly as drawn through
    training steps, including `requires_grad_(True)` on the discriminators; only the heads are optimised."""
    trainer = tiny_trainer(tiny_dataset, tmp_path / "t", d_projected="with-patch")
    judge = trainer.D.D_B_projected[0]
    before = frozen_state(trainer)
    assert list(judge.projection.parameters()) == []
    trainer.D.train()
    assert not judge.projection.training and not any(m.training for m in judge.projection.features.modules())
    for _ in range(2):
        trainer.train_step(trainer.sample_A[:1], trainer.sample_B[:1])
    after = judge.projection.state_dict()
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not b.requires_grad and b.grad is None for b in judge.projection.buffers())
    optimised = {id(p) for group in trainer.opt_D_projected.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in judge.heads.parameters()}


def test_the_heads_learn_to_tell_two_fixed_image_sets_apart():
    """A few Adam steps on the heads alone, with DiffAugment on, separate yellow faces from grey ones."""
    torch.manual_seed(0)
    judge = ProjectedDiscriminator(TinyFeatures(), image_size=32, seed=0)
    yellow = (torch.tensor([0.8, 0.6, -0.7]).view(1, 3, 1, 1) + 0.2 * torch.randn(4, 3, 32, 32)).clamp(-1, 1)
    grey = (0.1 * torch.randn(4, 3, 32, 32)).clamp(-1, 1)
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-4, betas=(0.5, 0.999))
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = 0.5 * (projected_lsgan(judge(yellow), True) + projected_lsgan(judge(grey), False))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, losses


def test_gradients_reach_the_generator_through_the_frozen_network():
    torch.manual_seed(0)
    generator = ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1))
    judge = ProjectedDiscriminator(TinyFeatures(), image_size=32, seed=0)
    judge.requires_grad_(False)  # as in the generator's step
    projected_lsgan(judge(generator(torch.rand(1, 3, 32, 32) * 2 - 1)), True).backward()
    grads = [p.grad for p in generator.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in judge.parameters())


def test_cross_scale_mixing_lets_the_finest_head_see_the_coarsest_features():
    """CSM's top-down path: a change in the stride-32 features alone moves the stride-4 map the first head judges."""

    class Fixed(torch.nn.Module):
        channels, input_size = (2, 2, 2, 2), None

        def __init__(self):
            super().__init__()
            self.maps = [torch.randn(1, 2, 16 // 2**i, 16 // 2**i) for i in range(4)]

        def forward(self, x):
            return [m + 0 * x.mean() for m in self.maps]

    torch.manual_seed(0)
    features = Fixed()
    projection = RandomProjection(features)
    before = projection(torch.zeros(1, 3, 64, 64))
    features.maps[3] = features.maps[3] + 1
    after = projection(torch.zeros(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in before] == [(64, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2)]
    assert not torch.allclose(before[0], after[0])


def test_it_learns_and_pushes_only_the_simpsons_generator(tiny_dataset, tmp_path):
    assert_simpsons_judge_learns_and_pushes_only_g_b(
        lambda: tiny_trainer(tiny_dataset, tmp_path / "t", d_projected="with-patch"), lambda t: t.D.D_B_projected
    )


def test_it_starts_every_other_network_as_without_it(tiny_dataset, tmp_path):
    """Built from its own seed, the judge leaves the run's four networks the same: the arms of an ablation start from
    the same weights."""
    off = tiny_trainer(tiny_dataset, tmp_path / "off")
    judged = tiny_trainer(tiny_dataset, tmp_path / "judged", d_projected="with-patch")
    assert_same_networks(
        {name: module.state_dict() for name, module in off.networks()},
        {name: module.state_dict() for name, module in judged.networks()},
        ("G_A", "G_B", "D_A", "D_B"),
    )


def test_the_flag_round_trips_through_checkpoint_and_resume(tiny_dataset, tmp_path):
    """A resumed run keeps its judge and continues exactly: every loss of every step, and the same weights."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny_dataset, straight, "--d-projected", "with-patch", "--pool-size", "1") == 0
    assert train(tiny_dataset, resumed, "--d-projected", "with-patch", "--pool-size", "1", "--max-steps", "2") == 0
    assert main(["train", "--out", str(resumed), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert a["config"]["d_projected"] == b["config"]["d_projected"] == "with-patch"
    # the checkpoint keeps the heads and the random mixing, never the pretrained network (it has its package)
    assert any(k.startswith("heads.") for k in b["D_B_projected"])
    assert any(k.startswith("projection.csm.") for k in b["D_B_projected"])
    assert not any(k.startswith("projection.features.") for k in b["D_B_projected"])
    assert_same_networks(a, b, ("G_B", "G_A", "D_B", "D_B_projected"))
    assert rows(resumed) == rows(straight) and [r["step"] for r in rows(straight)] == ["1", "2", "3", "4"]
    assert all(float(r["G_B_proj"]) > 0 for r in rows(straight))


def test_a_bad_flag_value_exits_2_with_a_sentence(tiny_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        train(tiny_dataset, tmp_path / "bad", "--d-projected", "yes")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --d-projected: invalid choice: 'yes'" in err
    assert "{off,with-patch}" in err  # the usage line: `alone` left with its lost ablation


def test_bf16_and_channels_last_train_with_it(tiny_dataset, tmp_path):
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
        d_projected="with-patch",
    )
    trainer = Trainer(
        config, device="cpu", num_workers=0, precision=(True, "asked for bf16"), layout=(True, "asked for on")
    )
    heads = {k: v.clone() for k, v in trainer.D.D_B_projected[0].heads.state_dict().items()}
    losses = trainer.train_step(trainer.sample_A[:1], trainer.sample_B[:1])
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()) and losses["G_B_proj"] > 0
    after = trainer.D.D_B_projected[0].heads.state_dict()
    assert any(not torch.equal(heads[k], after[k]) for k in heads)
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())


def test_off_trains_exactly_as_the_trainer_before_the_flag(tiny_dataset, tmp_path):
    """Without the flag nothing changes: the same weights and losses to the bit as the trainer before it existed."""
    options = dict(
        data=str(tiny_dataset),
        size=32,
        ngf=4,
        n_blocks=1,
        ndf=4,
        epochs=1,
        epochs_decay=1,
        steps_per_epoch=2,
        precision="fp32",
        pool_size=1,
        diff_augment="color,translation,cutout",
    )
    old, old_losses = train_at_commit(
        BEFORE_THE_FLAG, {**options, "out": str(tmp_path / "before")}, 2, "steps", tmp_path
    )
    new, new_losses = exercise(simpsonize.training.train, {**options, "out": str(tmp_path / "now")}, 2, "steps")
    assert_same_networks(old, new, ("G_A", "G_B", "D_A", "D_B"))
    assert [{k: v for k, v in step.items() if k in old_losses[0]} for step in new_losses] == [
        {k: v for k, v in step.items() if k in new_losses[0]} for step in old_losses
    ]
    assert all(step["D_B_proj"] == step["G_B_proj"] == 0 for step in new_losses)
    assert set(new) - set(old) <= {"layout"}  # no new checkpoint entries when off (the layout is recorded since)


@pytest.mark.timeout(300)
def test_ddp_on_two_cpu_processes_with_it(tiny_dataset, tmp_path):
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
            str(REPO / "tests" / "training" / "projected_ddp_entry.py"),
            "train",
            "--data",
            str(tiny_dataset),
            "--out",
            str(run),
            *TINY_TRAIN,
            "--max-steps",
            "2",
            "--d-projected",
            "with-patch",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 2" in done.stdout
    assert all(float(r["D_B_proj"]) > 0 and float(r["D_B"]) > 0 for r in rows(run))


def test_the_step_cost_benchmark_times_every_arm_against_off(capsys):
    """`simpsonize bench projected --quick`: one row per arm, the ratio to `off` (1 for `off` itself)."""
    assert main(["bench", "projected", "--quick", "--json"]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert set(result["seconds"]) == {"off", "with-patch"} and result["ratio"]["off"] == 1
    assert all(s > 0 for s in result["seconds"].values())
