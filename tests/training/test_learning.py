"""The objective's building blocks, tested directly, and a trainer that learns rather than merely runs."""

import pytest
import torch

from simpsonize.training.config import TrainConfig
from simpsonize.training.losses import discriminator_lsgan, lsgan
from simpsonize.training.pool import ImagePool
from simpsonize.training.trainer import Trainer


def test_lsgan_pulls_real_to_one_and_fake_to_zero():
    ones, zeros, halves = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3), torch.full((2, 1, 3, 3), 0.5)
    assert lsgan(ones, True) == 0 and lsgan(zeros, False) == 0
    assert lsgan(zeros, True) == 1 and lsgan(ones, False) == 1
    assert lsgan(halves, True) == pytest.approx(0.25) and lsgan(halves, False) == pytest.approx(0.25)
    # the mean of the squared distances: (-0.5², 0.5², 1.5²) from 1, and (0.5², 1.5², 2.5²) from 0
    logits = torch.tensor([0.5, 1.5, 2.5])
    assert lsgan(logits, True) == pytest.approx((0.25 + 0.25 + 2.25) / 3)
    assert lsgan(logits, False) == pytest.approx((0.25 + 2.25 + 6.25) / 3)
    # a discriminator's loss is half on each side; a perfect one scores 0, one that says 0.5 to everything 0.25
    assert discriminator_lsgan(ones, zeros) == 0 and discriminator_lsgan(halves, halves) == pytest.approx(0.25)
    assert discriminator_lsgan(zeros, ones) == 1
    # bf16 predictions are scored in fp32 (a bf16 mean of many patches would round away small differences)
    assert lsgan(halves.bfloat16(), True).dtype == torch.float32


def tiny_config(data, out, **options) -> TrainConfig:
    """The smallest networks, the published learning rate held constant, no history pool, fp32."""
    return TrainConfig(
        data=str(data),
        out=str(out),
        size=32,
        ngf=4,
        n_blocks=1,
        ndf=4,
        epochs=100,
        epochs_decay=0,
        steps_per_epoch=1,
        precision="fp32",
        pool_size=0,
        **options,
    )


def test_the_trainer_scores_its_generators_against_1_and_its_discriminators_real_1_fake_0(tiny_dataset, tmp_path):
    """The step's logged losses are the least-squares targets applied to the networks as they were before it."""
    trainer = Trainer(tiny_config(tiny_dataset, tmp_path / "run", lambda_identity=0), device="cpu", num_workers=0)
    real_a, real_b = trainer.sample_A[:1], trainer.sample_B[:1]
    with torch.no_grad():
        G, D = trainer.G, trainer.D
        fake_a, fake_b = G.G_B(real_b), G.G_A(real_a)
        expected = {
            "G_B": lsgan(D.D_B(fake_a), True),
            "G_A": lsgan(D.D_A(fake_b), True),
            "D_B": 0.5 * (lsgan(D.D_B(real_a), True) + lsgan(D.D_B(fake_a), False)),
            "D_A": 0.5 * (lsgan(D.D_A(real_b), True) + lsgan(D.D_A(fake_b), False)),
            "cycle_B": 10 * (G.G_A(fake_a) - real_b).abs().mean(),
        }
    losses = trainer.train_step(real_a, real_b)
    for name, value in expected.items():
        assert losses[name] == pytest.approx(float(value), rel=1e-5), name
    assert losses["idt_A"] == losses["idt_B"] == 0  # --lambda-identity 0


class ScriptedRandom:
    """Stands in for the pool's RNG: ``random()`` and ``randrange()`` answer from the given lists, in order."""

    def __init__(self, draws: list[float], slots: list[int]) -> None:
        self.draws, self.slots = list(draws), list(slots)

    def random(self) -> float:
        return self.draws.pop(0)

    def randrange(self, stop: int) -> int:
        slot = self.slots.pop(0)
        assert 0 <= slot < stop
        return slot


def image(value: float) -> torch.Tensor:
    return torch.full((1, 1, 2, 2), float(value))


def test_history_pool_keeps_the_first_images_then_swaps_on_heads_and_passes_through_on_tails():
    pool = ImagePool(size=2, seed=0)
    pool.rng = ScriptedRandom(draws=[0.7, 0.3, 0.9, 0.2], slots=[1, 0])
    # below its size the pool returns each new image and keeps a copy; no draw is made
    assert torch.equal(pool.query(image(0)), image(0)) and torch.equal(pool.query(image(1)), image(1))
    assert [float(x.mean()) for x in pool.images] == [0.0, 1.0]
    # full: a draw above 1/2 returns the stored image of the drawn slot and stores the new one in its place
    assert torch.equal(pool.query(image(2)), image(1))
    assert [float(x.mean()) for x in pool.images] == [0.0, 2.0]
    # a draw at or below 1/2 returns the new image and leaves the pool as it was
    assert torch.equal(pool.query(image(3)), image(3))
    assert [float(x.mean()) for x in pool.images] == [0.0, 2.0]
    # a batch is handled image by image; what the pool keeps is its own copy, whatever happens to the tensors after
    batch = torch.cat([image(4), image(5)])
    out = pool.query(batch)
    assert torch.equal(out, torch.cat([image(0), image(5)])) and pool.rng.draws == pool.rng.slots == []
    batch.add_(100), out.add_(100)
    assert [float(x.mean()) for x in pool.images] == [4.0, 2.0]
    assert torch.equal(ImagePool(size=0, seed=0).query(image(7)), image(7))  # size 0: no history


def test_history_pool_swaps_half_the_time_with_its_seeded_rng_and_the_same_seed_repeats():
    def swaps(seed: int) -> list[bool]:
        pool = ImagePool(size=3, seed=seed)
        for i in range(3):
            pool.query(image(-1 - i))
        return [not torch.equal(pool.query(image(i)), image(i)) for i in range(400)]

    first = swaps(0)
    assert 160 <= sum(first) <= 240  # p = 1/2 over 400 queries: 200 ± 20 is one standard deviation of two
    assert swaps(0) == first and swaps(1) != first


def test_cycle_loss_halves_within_fifty_steps_on_two_fixed_images(tiny_dataset, tmp_path):
    """Plumbing tests pass for a trainer that learns nothing; this one needs the gradients to reach the generators."""
    trainer = Trainer(tiny_config(tiny_dataset, tmp_path / "run"), device="cpu", num_workers=0)
    real_a, real_b = trainer.sample_A[:1], trainer.sample_B[:1]
    cycles = []
    for _ in range(50):
        losses = trainer.train_step(real_a, real_b)
        cycles.append(losses["cycle_A"] + losses["cycle_B"])
    start, end = sum(cycles[:3]) / 3, sum(cycles[-5:]) / 5
    assert end <= 0.5 * start, f"cycle L1 {start:.3f} -> {end:.3f}"
