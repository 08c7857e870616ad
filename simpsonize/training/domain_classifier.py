"""The small Simpsons-vs-real classifier behind ``domain_score`` (`simpsonize test --run`): trained on the train
splits only and cached beside the dataset; grey-scale by default (why: ``simpsonize.training.evaluate``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from simpsonize.training.data import load_fixed
from simpsonize.training.prepare import list_images

CLASSIFIER_SIZE = 64
CLASSIFIER_STEPS = 400  # batches of 64; a module constant so the plumbing tests can take a few


class DomainClassifier(nn.Module):
    """Tiny CNN: logit > 0 means 'Simpsons' (domain A). ``grayscale`` hides colour from it."""

    def __init__(self, grayscale: bool = True) -> None:
        super().__init__()
        self.grayscale = grayscale
        layers: list[nn.Module] = []
        channels = 1 if grayscale else 3
        for width in (16, 32, 64, 64):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="bilinear", align_corners=False)
        if self.grayscale:
            x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


@torch.no_grad()
def is_simpsons(classifier: DomainClassifier, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    classifier.eval()
    return torch.cat([classifier(images[i : i + batch]) > 0 for i in range(0, len(images), batch)])


def train_classifier(
    data: Path, grayscale: bool = True, steps: int | None = None, seed: int = 0
) -> tuple[DomainClassifier, float]:
    """Fit on trainA/trainB (balanced batches, flips); return it and its accuracy on testA/testB."""
    steps = CLASSIFIER_STEPS if steps is None else steps
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train_a = load_fixed(list_images(data / "trainA"), CLASSIFIER_SIZE)
    train_b = load_fixed(list_images(data / "trainB"), CLASSIFIER_SIZE)
    model = DomainClassifier(grayscale)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    half = 32
    for _ in range(steps):
        a = train_a[torch.randint(len(train_a), (half,), generator=generator)]
        b = train_b[torch.randint(len(train_b), (half,), generator=generator)]
        x = torch.cat([a, b])
        flip = torch.rand(len(x), generator=generator) < 0.5
        x[flip] = x[flip].flip(-1)
        y = torch.cat([torch.ones(half), torch.zeros(half)])
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    test_a = load_fixed(list_images(data / "testA"), CLASSIFIER_SIZE)
    test_b = load_fixed(list_images(data / "testB"), CLASSIFIER_SIZE)
    correct = int(is_simpsons(model, test_a).sum()) + int((~is_simpsons(model, test_b)).sum())
    accuracy = correct / max(1, len(test_a) + len(test_b))
    return model.eval(), accuracy


def get_classifier(data: Path, grayscale: bool = True) -> tuple[DomainClassifier, float]:
    """Train once per dataset and kind, and cache beside the dataset (its splits fully determine it)."""
    from safetensors.torch import load_file, save_file

    stem = data / f"domain_classifier_{'gray' if grayscale else 'colour'}"
    weights, info = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if weights.exists() and info.exists():
        model = DomainClassifier(grayscale)
        model.load_state_dict(load_file(str(weights)))
        return model.eval(), float(json.loads(info.read_text())["test_accuracy"])
    model, accuracy = train_classifier(data, grayscale)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    info.write_text(json.dumps({"test_accuracy": accuracy, "grayscale": grayscale, "trained_on": ["trainA", "trainB"]}))
    return model, accuracy
