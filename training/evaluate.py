"""`simpsonize test`: translate the test splits both ways, write grids + an index.html gallery, and metrics.

Metrics per direction:
- ``cycle_l1``: mean absolute error between a test image and its reconstruction (X -> Y -> X), pixels in [0, 1].
- ``domain_score``: share of translated test images that a small Simpsons-vs-real classifier calls the target
  domain. The classifier is trained on the train splits only and sees **grey-scale** images, so it has to judge
  drawing-like structure (flat shading, outlines, eye shapes): measured on our first run, a colour classifier
  called every translated face "Simpsons" from step 250 on, once the skin had turned yellow, and so could not
  rank checkpoints. The colour classifier's verdict is reported too, as ``domain_score_colour``. Both
  classifiers' accuracies on the test splits are reported beside the scores.

``--all-snapshots`` ranks the run's snapshots (``train --snapshot-every``) on B->A and names the best one:
among snapshots whose domain score is within 0.05 of the best score, the lowest B->A cycle L1 (most of the
person kept) wins.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.networks import ResnetGenerator
from model.weights import load_generator
from training.data import load_fixed
from training.prepare import list_images
from training.visuals import save_grid

CLASSIFIER_SIZE = 64
DIRECTIONS = ("AtoB", "BtoA")


# --------------------------------------------------------------------------------- domain classifier
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
    return torch.cat([classifier(images[i:i + batch]) > 0 for i in range(0, len(images), batch)])


def train_classifier(data: Path, grayscale: bool = True, steps: int = 400, seed: int = 0
                     ) -> tuple[DomainClassifier, float]:
    """Fit on trainA/trainB (balanced batches, flips); return it and its accuracy on testA/testB."""
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


# ---------------------------------------------------------------------------------------- evaluation
@dataclass
class DirectionResult:
    direction: str
    count: int
    cycle_l1: float
    domain_score: float
    domain_score_colour: float

    def to_dict(self) -> dict:
        return {"count": self.count, "cycle_l1": round(self.cycle_l1, 4), "domain_score": round(self.domain_score, 4),
                "domain_score_colour": round(self.domain_score_colour, 4)}


def target_share(classifier: DomainClassifier, images: torch.Tensor, target_is_simpsons: bool) -> float:
    called_simpsons = is_simpsons(classifier, images)
    hits = called_simpsons if target_is_simpsons else ~called_simpsons
    return float(hits.float().mean())


@torch.no_grad()
def evaluate_direction(forward: ResnetGenerator, backward: ResnetGenerator, images: torch.Tensor,
                       classifiers: tuple[DomainClassifier, DomainClassifier], target_is_simpsons: bool,
                       batch: int = 16) -> tuple[DirectionResult, torch.Tensor, torch.Tensor]:
    fakes, recs = [], []
    for i in range(0, len(images), batch):
        fake = forward(images[i:i + batch]).clamp(-1, 1)
        fakes.append(fake)
        recs.append(backward(fake).clamp(-1, 1))
    fake, rec = torch.cat(fakes), torch.cat(recs)
    cycle_l1 = float((rec - images).abs().mean() / 2)  # [-1, 1] range -> pixel fraction
    structure, colour = classifiers
    result = DirectionResult("", len(images), cycle_l1, target_share(structure, fake, target_is_simpsons),
                             target_share(colour, fake, target_is_simpsons))
    return result, fake, rec


def evaluate(g_a: ResnetGenerator, g_b: ResnetGenerator, data: Path, size: int, directions=DIRECTIONS,
             out: Path | None = None) -> dict:
    """Metrics for the requested directions; with ``out``, also grids and a gallery there."""
    structure, accuracy = get_classifier(data, grayscale=True)
    colour, colour_accuracy = get_classifier(data, grayscale=False)
    classifiers = (structure, colour)
    metrics: dict = {"classifier_test_accuracy": round(accuracy, 4),
                     "classifier_colour_test_accuracy": round(colour_accuracy, 4)}
    pages = []
    for direction in directions:
        source = "testA" if direction == "AtoB" else "testB"
        files = list_images(data / source)
        if not files:
            continue
        images = load_fixed(files, size)
        forward, backward = (g_a, g_b) if direction == "AtoB" else (g_b, g_a)
        result, fake, rec = evaluate_direction(forward, backward, images, classifiers,
                                               target_is_simpsons=direction == "BtoA")
        result.direction = direction
        metrics[direction] = result.to_dict()
        if out is not None:
            pages.append(_write_direction(out / direction, direction, files, images, fake, rec, result))
    if out is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        _write_index(out, metrics, pages)
    return metrics


def _write_direction(folder: Path, direction: str, files, images, fake, rec, result) -> tuple[str, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, path in enumerate(files):
        name = f"{path.stem}.png"
        save_grid(folder / name, {"real": images[i:i + 1], "fake": fake[i:i + 1], "rec": rec[i:i + 1]})
        names.append(f"{direction}/{name}")
    overview = {"real": images[:8], "translated": fake[:8], "reconstructed": rec[:8]}
    save_grid(folder.parent / f"{direction}_overview.png", overview)
    return direction, names


def _write_index(out: Path, metrics: dict, pages) -> None:
    parts = ["<!doctype html><meta charset='utf-8'><title>simpsonize test</title>",
             "<style>body{font-family:sans-serif} img{image-rendering:pixelated;margin:2px;border:1px solid #ccc}</style>",
             "<h1>Test-split translations</h1>",
             f"<p>Domain classifier accuracy on the test splits: {metrics['classifier_test_accuracy']:.1%} (grey-scale), "
             f"{metrics['classifier_colour_test_accuracy']:.1%} (colour)</p>"]
    for direction, names in pages:
        m = metrics[direction]
        parts.append(f"<h2>{direction} ({'Simpsons → real' if direction == 'AtoB' else 'real → Simpsons'})</h2>")
        parts.append(f"<p>{m['count']} images · domain score {m['domain_score']:.1%} (grey-scale classifier; "
                     f"colour classifier {m['domain_score_colour']:.1%}) · cycle L1 {m['cycle_l1']:.4f}"
                     "<br>each image: real | translated | reconstructed</p>")
        parts += [f"<img src='{html.escape(n)}' alt='{html.escape(n)}'>" for n in names]
    (out / "index.html").write_text("\n".join(parts))


# ---------------------------------------------------------------------------------------- snapshots
def rank_snapshots(run: Path, data: Path, size: int) -> list[dict]:
    rows = []
    for folder in sorted((run / "snapshots").glob("step_*")):
        g_a, _ = load_generator(folder / "G_A.safetensors")
        g_b, meta = load_generator(folder / "G_B.safetensors")
        metrics = evaluate(g_a, g_b, data, size, directions=("BtoA",))
        rows.append({"snapshot": folder.name, "step": meta.get("step"),
                     "domain_score": metrics["BtoA"]["domain_score"],
                     "domain_score_colour": metrics["BtoA"]["domain_score_colour"],
                     "cycle_l1": metrics["BtoA"]["cycle_l1"]})
    return rows


def pick_best(rows: list[dict], tolerance: float = 0.05) -> dict | None:
    if not rows:
        return None
    top = max(r["domain_score"] for r in rows)
    return min((r for r in rows if r["domain_score"] >= top - tolerance), key=lambda r: r["cycle_l1"])


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="run folder from `simpsonize train`")
    parser.add_argument("--direction", choices=("AtoB", "BtoA", "both"), default="both")
    parser.add_argument("--data", type=Path, default=None, help="dataset (default: the one the run trained on)")
    parser.add_argument("--snapshot", default=None, help="evaluate snapshots/STEP instead of the last checkpoint")
    parser.add_argument("--all-snapshots", action="store_true", help="rank every snapshot on B->A, name the best")


def load_run_generators(run: Path, snapshot: str | None = None) -> tuple[ResnetGenerator, ResnetGenerator, dict]:
    from training.train import TrainConfig

    if snapshot:
        folder = run / "snapshots" / snapshot
        g_a, _ = load_generator(folder / "G_A.safetensors")
        g_b, meta = load_generator(folder / "G_B.safetensors")
        config = json.loads((run / "config.json").read_text())
        return g_a, g_b, {"config": config, "step": meta.get("step"), "source": str(folder)}
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(state["config"])
    g_a, g_b = ResnetGenerator(config.generator_config()), ResnetGenerator(config.generator_config())
    g_a.load_state_dict(state["G_A"])
    g_b.load_state_dict(state["G_B"])
    return g_a.eval(), g_b.eval(), {"config": state["config"], "step": state["step"], "source": "checkpoint.pt"}


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run
    if not (run_dir / "config.json").exists():
        print(f"error: {run_dir} is not a training run (no config.json).")
        return 2
    config = json.loads((run_dir / "config.json").read_text())
    data = args.data or Path(config["data"])
    if not (data / "testA").is_dir():
        print(f"error: {data} has no testA/ testB/ splits.")
        return 2
    size = int(config["size"])
    if args.all_snapshots:
        rows = rank_snapshots(run_dir, data, size)
        if not rows:
            print(f"error: {run_dir / 'snapshots'} holds no snapshots (train with --snapshot-every).")
            return 2
        out = run_dir / "test"
        out.mkdir(exist_ok=True)
        with (out / "snapshots.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        best = pick_best(rows)
        (out / "best_snapshot.json").write_text(json.dumps(best, indent=2))
        print(f"test: ranked {len(rows)} snapshots; best {best['snapshot']} (domain score {best['domain_score']:.1%}, "
              f"cycle L1 {best['cycle_l1']:.4f}); table {out / 'snapshots.csv'}")
        return 0
    try:
        g_a, g_b, info = load_run_generators(run_dir, args.snapshot)
    except FileNotFoundError as exc:
        print(f"error: {exc}")
        return 2
    directions = DIRECTIONS if args.direction == "both" else (args.direction,)
    out = run_dir / "test" / (args.snapshot or f"step_{int(info['step']):07d}")
    metrics = evaluate(g_a, g_b, data, size, directions, out=out)
    metrics["step"] = info["step"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    summary = "; ".join(f"{d}: domain score {metrics[d]['domain_score']:.1%}, cycle L1 {metrics[d]['cycle_l1']:.4f}"
                        for d in directions if d in metrics)
    print(f"test: step {info['step']}: {summary} (classifier accuracy {metrics['classifier_test_accuracy']:.1%}); "
          f"gallery {out / 'index.html'}")
    return 0
