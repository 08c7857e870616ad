"""`simpsonize bench projected`: what the Projected GAN judge (`train --d-projected`) costs per training step.

One process trains the shipped recipe's networks (ngf 32 / 6 blocks / ndf 64 at 128 px, batch 1, resize-conv) both
ways, `--d-projected off` and `with-patch`, on random images, and times their steps interleaved (one step of each
arm per round, after warm-up steps), so that a machine whose speed drifts slows every arm alike. The figure
that matters is the ratio of each arm's median step to the `off` arm's: an ablation at equal CPU time gives an arm
that costs 1.5x per step two thirds of the steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from simpsonize.bench.common import noise_dataset

ARMS = ("off", "with-patch")


@contextmanager
def _feature_side(side: int | None):
    """Resize to ``side`` px before the pretrained network instead of its ImageNet 224 (None: leave it)."""
    import simpsonize.training.projected

    original = simpsonize.training.projected.pretrained_features
    if side:
        simpsonize.training.projected.pretrained_features = lambda input_size=None: original(side)
    try:
        yield
    finally:
        simpsonize.training.projected.pretrained_features = original


def measure(
    size: int = 128,
    ngf: int = 32,
    n_blocks: int = 6,
    ndf: int = 64,
    rounds: int = 5,
    warmup: int = 2,
    precision: str = "fp32",
    feature_side: int | None = None,
    threads: int = 1,
    arms: tuple[str, ...] = ARMS,
) -> dict:
    """Median seconds of one training step per arm, and each arm's ratio to the first."""
    from simpsonize.training.config import TrainConfig
    from simpsonize.training.trainer import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp, _feature_side(feature_side):
        data = noise_dataset(Path(tmp) / "data", size, 4)
        trainers = {}
        for arm in arms:
            config = TrainConfig(
                data=str(data),
                out=str(Path(tmp) / arm),
                size=size,
                ngf=ngf,
                n_blocks=n_blocks,
                ndf=ndf,
                upsampling="resize_conv",
                epochs=1,
                epochs_decay=0,
                steps_per_epoch=1000,
                precision=precision,
                d_projected=arm,
            )
            trainers[arm] = Trainer(config, device="cpu", num_workers=0)
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for round_ in range(warmup + rounds):
            for arm, trainer in trainers.items():
                started = time.perf_counter()
                trainer.train_step(trainer.sample_A[:1], trainer.sample_B[:1])
                if round_ >= warmup:
                    times[arm].append(time.perf_counter() - started)
    medians = {arm: statistics.median(t) for arm, t in times.items()}
    base = medians[arms[0]]
    return {
        "size": size,
        "ngf": ngf,
        "n_blocks": n_blocks,
        "ndf": ndf,
        "batch": 1,
        "threads": threads,
        "precision": precision,
        "feature_side": feature_side or 224,
        "rounds": rounds,
        "seconds": medians,
        "ratio": {arm: m / base for arm, m in medians.items()},
        "all_seconds": times,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per arm (after 2 warm-up steps)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument(
        "--feature-side",
        type=int,
        default=None,
        metavar="PX",
        help="resize to PX before EfficientNet-Lite0 instead of its ImageNet 224 (what a cheaper judge would cost)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny networks at 32 px (the tests)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    sizes = dict(size=32, ngf=4, n_blocks=1, ndf=4, rounds=1, warmup=1) if args.quick else dict(rounds=args.rounds)
    result = measure(precision=args.precision, feature_side=args.feature_side, threads=args.threads, **sizes)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"training step, ngf {result['ngf']} / {result['n_blocks']} blocks / ndf {result['ndf']} at "
        f"{result['size']} px, batch 1, {result['threads']} thread(s), {result['precision']}, Lite0 at "
        f"{result['feature_side']} px; medians of {result['rounds']} interleaved steps"
    )
    print("| --d-projected | s / step | ratio to off |\n| --- | --- | --- |")
    for arm, seconds in result["seconds"].items():
        print(f"| {arm} | {seconds:.3f} | {result['ratio'][arm]:.2f} |")
    return 0
