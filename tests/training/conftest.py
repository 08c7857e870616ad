import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SPLITS = ("trainA", "trainB", "testA", "testB")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A prepared-dataset layout with 6 train and 3 test images per domain, 40x40, distinguishable domains."""
    root = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(0)
    for split in SPLITS:
        (root / split).mkdir()
        n = 6 if split.startswith("train") else 3
        for i in range(n):
            base = np.array([230, 200, 40]) if split.endswith("A") else np.array([150, 110, 90])
            pixels = np.clip(base + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"{i}.png")
    return root


def tiny_trainer(data, out, size: int = 32, steps_per_epoch: int = 2, **options):
    """A Trainer on the tiny dataset with the smallest networks, fp32, on the CPU; ``options`` go to TrainConfig."""
    from simpsonize.training.config import TrainConfig
    from simpsonize.training.trainer import Trainer

    config = TrainConfig(
        data=str(data),
        out=str(out),
        size=size,
        ngf=4,
        n_blocks=1,
        ndf=4,
        epochs=1,
        epochs_decay=1,
        steps_per_epoch=steps_per_epoch,
        precision="fp32",
        **options,
    )
    return Trainer(config, device="cpu", num_workers=0)


def assert_simpsons_judge_learns_and_pushes_only_g_b(make_trainer, judge) -> None:
    """One training step of two identical trainers, except that ``judge(trainer)`` (a Simpsons-side discriminator)
    is scaled in the second: that judge learns, and it changes G_B's step but not G_A's (it sees only Simpsons)."""
    first, second = make_trainer(), make_trainer()  # same seed: identical networks
    with torch.no_grad():
        for parameter in judge(second).parameters():
            parameter.mul_(3.0)
    before = [p.detach().clone() for p in judge(first).parameters()]
    for t in (first, second):
        t.train_step(t.sample_A[:1], t.sample_B[:1])
    assert all(not torch.equal(a, b) for a, b in zip(before, judge(first).parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(first.G.G_B.parameters(), second.G.G_B.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(first.G.G_A.parameters(), second.G.G_A.parameters()))


def assert_same_networks(first: dict, second: dict, names) -> None:
    """Two checkpoints hold identical weights for the named networks (an exact resume)."""
    for name in names:
        for key in first[name]:
            assert torch.equal(first[name][key], second[name][key]), f"{name}.{key} differs after resume"


TINY_TRAIN = [
    "--size",
    "32",
    "--ngf",
    "4",
    "--n-blocks",
    "1",
    "--ndf",
    "4",
    "--epochs",
    "1",
    "--epochs-decay",
    "1",
    "--steps-per-epoch",
    "2",
    "--device",
    "cpu",
    "--num-workers",
    "0",
    "--precision",
    "fp32",
]


def fake_probe(monkeypatch, seconds: dict) -> list[list[tuple[bool, bool]]]:
    """The timing probe of training/precision.py replaced by ``seconds`` per (bf16, channels_last) variant; returns
    the variants it is asked to time, a list per probe. A variant not in ``seconds`` fails the test: it should not have
    been timed."""
    from simpsonize.training import precision

    calls = []

    def probe(config, device, variants, steps=3):
        calls.append(list(variants))
        missing = [variant for variant in variants if variant not in seconds]
        assert not missing, f"the probe should not have timed {missing}"
        return tuple(seconds[variant] for variant in variants)

    monkeypatch.setattr(precision, "probe_step_seconds", probe)
    return calls


@pytest.fixture(autouse=True)
def quick_c2st(monkeypatch):
    """The C2ST's own tests check its figures; elsewhere a few classifier steps are enough to test the plumbing (the
    tiny domains differ in colour, so the domain classifier separates them in 40)."""
    import simpsonize.training.c2st
    import simpsonize.training.domain_classifier

    monkeypatch.setattr(simpsonize.training.c2st, "STEPS", 20)
    monkeypatch.setattr(simpsonize.training.domain_classifier, "CLASSIFIER_STEPS", 40)


class TinyFeatures(torch.nn.Module):
    """A stand-in for the pretrained feature network of `--d-projected` (training/projected.py): four random conv
    stages at strides 4, 8, 16 and 32, with batch norms (whose statistics must stay frozen), at a 64 px input."""

    channels = (4, 6, 8, 10)
    input_size = 64

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        generator = torch.Generator().manual_seed(0)
        stages, previous = [], 3
        for channels, stride in zip(self.channels, (4, 2, 2, 2)):
            conv = nn.Conv2d(previous, channels, 3, stride=stride, padding=1)
            norm = nn.BatchNorm2d(channels)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
                norm.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
            stages.append(nn.Sequential(conv, norm, nn.ReLU()))
            previous = channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


@pytest.fixture
def tiny_projected_features(monkeypatch):
    """`--d-projected` judges through TinyFeatures instead of the real Lite0 weights (one test loads those)."""
    import simpsonize.training.projected

    monkeypatch.setattr(simpsonize.training.projected, "pretrained_features", lambda input_size=None: TinyFeatures())


def checkout_of(commit: str, scratch: Path) -> tuple[Path, str]:
    """The training code of an earlier ``commit`` (`git archive`, into ``scratch``) and its trainer's module name:
    ``simpsonize.training.train`` since the package move, ``training.train`` before it. Skips the test when the
    commit is not in this clone's history."""

    def has(path: str) -> bool:
        found = subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=REPO, capture_output=True)
        return found.returncode == 0

    if has("simpsonize/training/train.py"):
        paths, module = ["simpsonize"], "simpsonize.training.train"
    elif has("training/train.py"):
        paths, module = ["model", "training"], "training.train"
    else:
        pytest.skip(f"commit {commit} is not in this clone's history")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, *paths], cwd=REPO, capture_output=True, check=True
    ).stdout
    root = scratch / f"code_{commit}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root, module


def run_in_checkout(
    root: Path, argv: list[str], timeout: int = 280, also: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess:
    """``python ARGV`` with ``root``'s code first on the path (over this checkout's and the installed package), then
    the folders ``also`` (e.g. this checkout, for its ``tests`` helpers)."""
    path = os.pathsep.join(str(p) for p in (root, *also))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train_at_commit(commit: str, options: dict, steps: int, mode: str, scratch: Path) -> tuple[dict, list]:
    """``trainer_entry.exercise`` with the trainer of an earlier ``commit``, in a process of its own."""
    root, module = checkout_of(commit, scratch)
    result = scratch / f"result_{commit}.pt"
    done = run_in_checkout(
        root,
        [
            str(Path(__file__).with_name("trainer_entry.py")),
            module,
            json.dumps(options),
            str(steps),
            mode,
            str(torch.get_num_threads()),
            str(result),
        ],
    )
    assert f"trainer: {root}" in done.stdout, done.stdout  # the earlier commit's code, not this checkout's
    return torch.load(result, weights_only=False)
