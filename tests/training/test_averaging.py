"""`train --ema-decay`: a moving average of the generators' weights, kept beside them, saved with every snapshot."""

import pytest
import torch

from simpsonize.cli import main
from simpsonize.model.weights import load_generator
from simpsonize.training.averaging import ema_decay_at
from simpsonize.training.checkpoint import load_run_generators
from tests.training.conftest import TINY_TRAIN, tiny_trainer


def weights(module):
    return [p.detach().clone() for p in module.parameters()]


def test_the_decay_warms_up_then_holds():
    # AveragedModel's first update copies; the second (after 1) keeps only 2/11 of the average so far
    assert ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay_at(100_000, 0.999) == 0.999
    assert ema_decay_at(100_000, 0.9) == 0.9


def test_the_average_is_the_warm_exponential_average_of_the_trained_weights(tiny_dataset, tmp_path):
    decay = 0.5
    t = tiny_trainer(tiny_dataset, tmp_path / "t", steps_per_epoch=4, ema_decay=decay)
    history = []
    for _ in range(3):
        t.train_step(t.sample_A[:1], t.sample_B[:1])
        t.G_ema.update_parameters(t.G)
        history.append(weights(t.G))
    expected = history[0]  # the first update copies
    for n, current in enumerate(history[1:], start=1):
        d = ema_decay_at(n, decay)
        expected = [d * e + (1 - d) * c for e, c in zip(expected, current)]
    for average, want, _last in zip(t.G_ema.module.parameters(), expected, history[-1]):
        assert torch.allclose(average, want, atol=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(t.G_ema.module.parameters(), history[-1]))


def test_keeping_an_average_does_not_change_training(tiny_dataset, tmp_path):
    plain = tiny_trainer(tiny_dataset, tmp_path / "plain")
    averaged = tiny_trainer(tiny_dataset, tmp_path / "averaged", ema_decay=0.9)
    assert plain.G_ema is None
    for _ in range(2):
        for t in (plain, averaged):
            t.train_step(t.sample_A[:1], t.sample_B[:1])
            if t.G_ema is not None:
                t.G_ema.update_parameters(t.G)
    assert all(torch.equal(a, b) for a, b in zip(plain.G.parameters(), averaged.G.parameters()))


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, *extra])


def test_snapshots_carry_the_average_beside_the_trained_weights_and_load_as_a_run_snapshot(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_dataset, run, "--ema-decay", "0.9", "--snapshot-every", "2") == 0
    names = sorted(p.name for p in (run / "snapshots").iterdir())
    assert names == ["step_0000002", "step_0000002_ema", "step_0000004", "step_0000004_ema"]
    raw, raw_meta = load_generator(run / "snapshots" / "step_0000004" / "G_B.safetensors")
    ema, ema_meta = load_generator(run / "snapshots" / "step_0000004_ema" / "G_B.safetensors")
    assert ema_meta["step"] == raw_meta["step"] == 4 and ema_meta["ema_decay"] == 0.9 and "ema_decay" not in raw_meta
    assert any(not torch.equal(a, b) for a, b in zip(raw.parameters(), ema.parameters()))
    # what `test --snapshot` and `export --snapshot` load
    _, g_b, info = load_run_generators(run, "step_0000004_ema")
    assert info["step"] == 4
    assert all(torch.equal(a, b) for a, b in zip(g_b.parameters(), ema.parameters()))


def test_resume_continues_the_average_exactly(tiny_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny_dataset, straight, "--ema-decay", "0.9") == 0
    assert train(tiny_dataset, resumed, "--ema-decay", "0.9", "--max-steps", "2") == 0
    assert main(["train", "--out", str(resumed), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["G_ema"]
    b = torch.load(resumed / "checkpoint.pt", weights_only=False)["G_ema"]
    assert int(a["n_averaged"]) == int(b["n_averaged"]) == 4
    for key in a:
        assert torch.equal(a[key], b[key]), f"G_ema.{key} differs after resume"


@pytest.mark.parametrize("decay", ["1", "-0.5", "1.5"])
def test_a_decay_outside_0_to_1_is_a_clear_error(tiny_dataset, tmp_path, capsys, decay):
    assert train(tiny_dataset, tmp_path / "run", "--ema-decay", decay) == 2
    assert "--ema-decay must be 0 (off) or between 0 and 1" in capsys.readouterr().out
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
