import numpy as np
import pytest
import torch
from PIL import Image

SPLITS = ("trainA", "trainB", "testA", "testB")


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


def assert_same_networks(first: dict, second: dict, names) -> None:
    """Two checkpoints hold identical weights for the named networks (an exact resume)."""
    for name in names:
        for key in first[name]:
            assert torch.equal(first[name][key], second[name][key]), f"{name}.{key} differs after resume"


TINY_TRAIN = ["--size", "32", "--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--epochs", "1",
              "--epochs-decay", "1", "--steps-per-epoch", "2", "--device", "cpu", "--num-workers", "0",
              "--precision", "fp32"]


@pytest.fixture(autouse=True)
def quick_c2st(monkeypatch):
    """The C2ST's own tests check its figures; elsewhere a few classifier steps are enough to test the plumbing."""
    import training.c2st

    monkeypatch.setattr(training.c2st, "STEPS", 20)
