"""Metrics per direction on the test splits (`simpsonize test --run`): cycle L1 and the domain classifiers' scores
of every test image's translation, with its grids and gallery; B->A also gets the C2ST on the whole pool."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from simpsonize.model.networks import ResnetGenerator
from simpsonize.training.c2st import SEEDS
from simpsonize.training.data import load_fixed
from simpsonize.training.domain_classifier import DomainClassifier, get_classifier, is_simpsons
from simpsonize.training.galleries import write_direction, write_index
from simpsonize.training.measures import c2st_of_generator
from simpsonize.training.prepare import list_images
from simpsonize.training.quality_pool import QualityPool

DIRECTIONS = ("AtoB", "BtoA")


@dataclass
class DirectionResult:
    direction: str
    count: int
    cycle_l1: float
    domain_score: float
    domain_score_colour: float

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "cycle_l1": round(self.cycle_l1, 4),
            "domain_score": round(self.domain_score, 4),
            "domain_score_colour": round(self.domain_score_colour, 4),
        }


def target_share(classifier: DomainClassifier, images: torch.Tensor, target_is_simpsons: bool) -> float:
    called_simpsons = is_simpsons(classifier, images)
    hits = called_simpsons if target_is_simpsons else ~called_simpsons
    return float(hits.float().mean())


@torch.no_grad()
def evaluate_direction(
    forward: ResnetGenerator,
    backward: ResnetGenerator,
    images: torch.Tensor,
    classifiers: tuple[DomainClassifier, DomainClassifier],
    target_is_simpsons: bool,
    batch: int = 16,
) -> tuple[DirectionResult, torch.Tensor, torch.Tensor]:
    fakes, recs = [], []
    for i in range(0, len(images), batch):
        fake = forward(images[i : i + batch]).clamp(-1, 1)
        fakes.append(fake)
        recs.append(backward(fake).clamp(-1, 1))
    fake, rec = torch.cat(fakes), torch.cat(recs)
    cycle_l1 = float((rec - images).abs().mean() / 2)  # [-1, 1] range -> pixel fraction
    structure, colour = classifiers
    result = DirectionResult(
        "",
        len(images),
        cycle_l1,
        target_share(structure, fake, target_is_simpsons),
        target_share(colour, fake, target_is_simpsons),
    )
    return result, fake, rec


def evaluate(
    g_a: ResnetGenerator,
    g_b: ResnetGenerator,
    data: Path,
    size: int,
    directions=DIRECTIONS,
    out: Path | None = None,
    c2st_pool: QualityPool | None = None,
    seeds=SEEDS,
) -> dict:
    """Metrics for the requested directions; with ``out``, also grids and a gallery there. With ``c2st_pool``,
    B->A also gets the C2ST on the whole pool."""
    structure, accuracy = get_classifier(data, grayscale=True)
    colour, colour_accuracy = get_classifier(data, grayscale=False)
    classifiers = (structure, colour)
    metrics: dict = {
        "classifier_test_accuracy": round(accuracy, 4),
        "classifier_colour_test_accuracy": round(colour_accuracy, 4),
    }
    pages = []
    for direction in directions:
        source = "testA" if direction == "AtoB" else "testB"
        files = list_images(data / source)
        if not files:
            continue
        images = load_fixed(files, size)
        forward, backward = (g_a, g_b) if direction == "AtoB" else (g_b, g_a)
        result, fake, rec = evaluate_direction(
            forward, backward, images, classifiers, target_is_simpsons=direction == "BtoA"
        )
        result.direction = direction
        metrics[direction] = result.to_dict()
        if direction == "BtoA" and c2st_pool is not None:
            row, _ = c2st_of_generator(g_b, c2st_pool, size, g_a, seeds=seeds)
            metrics[direction].update({k: v for k, v in row.items() if k != "cycle_l1"})
            metrics[direction]["pool_cycle_l1"] = row["cycle_l1"]
        if out is not None:
            pages.append(write_direction(out / direction, direction, files, images, fake, rec, result))
    if out is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_index(out, metrics, pages)
    return metrics
