"""The objective's building blocks, tested directly, and a trainer that learns rather than merely runs."""

import pytest
import torch

from simpsonize.training.train import ImagePool, TrainConfig, Trainer, lsgan


def test_lsgan_pulls_real_to_one_and_fake_to_zero():
    ones, zeros, halves = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3), torch.full((2, 1, 3, 3), 0.5)
    assert lsgan(ones, True) == 0 and lsgan(zeros, False) == 0
    assert lsgan(zeros, True) == 1 and lsgan(ones, False) == 1
    assert lsgan(halves, True) == pytest.approx(0.25) and lsgan(halves, False) == pytest.approx(0.25)
    # bf16 predictions are scored in fp32 (a bf16 mean of many patches would round away small differences)
    assert lsgan(halves.bfloat16(), True).dtype == torch.float32


def test_history_pool_fills_then_swaps_about_half_the_time():
    pool = ImagePool(size=3, seed=0)
    first = [torch.full((1, 1, 2, 2), float(i)) for i in range(3)]
    for image in first:  # while filling, every image goes straight through and is kept
        assert torch.equal(pool.query(image), image)
    assert sorted(float(x.mean()) for x in pool.images) == [0.0, 1.0, 2.0]
    swapped = 0
    for i in range(3, 203):
        new = torch.full((1, 1, 2, 2), float(i))
        out = pool.query(new)
        if torch.equal(out, new):
            continue
        swapped += 1
        # an older image came out, and the newest took its place in the history
        assert float(out.mean()) < i and any(torch.equal(kept, new) for kept in pool.images)
    assert 70 <= swapped <= 130  # p = 0.5 over 200 queries
    assert len(pool.images) == 3
    assert torch.equal(ImagePool(size=0, seed=0).query(first[1]), first[1])  # size 0: no history


def test_cycle_loss_halves_within_fifty_steps_on_two_fixed_images(tiny_dataset, tmp_path):
    """Plumbing tests pass for a trainer that learns nothing; this one needs the gradients to reach the generators."""
    # The smallest networks, the published learning rate held constant (the tiny schedules of other tests decay
    # it to 0 within a few steps), no history pool: nothing but the objective itself.
    config = TrainConfig(data=str(tiny_dataset), out=str(tmp_path / "run"), size=32, ngf=4, n_blocks=1, ndf=4,
                         epochs=100, epochs_decay=0, steps_per_epoch=1, precision="fp32", pool_size=0)
    trainer = Trainer(config, device="cpu", num_workers=0)
    real_a, real_b = trainer.sample_A[:1], trainer.sample_B[:1]
    cycles = []
    for _ in range(50):
        losses = trainer.train_step(real_a, real_b)
        cycles.append(losses["cycle_A"] + losses["cycle_B"])
    start, end = sum(cycles[:3]) / 3, sum(cycles[-5:]) / 5
    assert end <= 0.5 * start, f"cycle L1 {start:.3f} -> {end:.3f}"
