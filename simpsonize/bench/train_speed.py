"""`simpsonize bench train`: images per second of a training step, per setting, and where a step's time goes.

Every variant trains the same networks on the same synthetic images (or `--data`) in a fresh child process
(``simpsonize.bench.train_speed_child``), so that thread settings, compile caches and allocator state never leak
from one variant into the next. The first variant is the README's training command (2 DDP processes x 1 thread,
batch 1 each, bf16); every other one changes one thing from it: the batch, the process/thread split, the precision,
channels_last, torch.compile. Figures that matter are the ratios to the baseline, which runs first and again last in
the same invocation so that a machine whose speed drifts shows up as a baseline that disagrees with itself (its two
medians are both printed).

The breakdown splits one process's step with torch.profiler: each network's forward (ranges opened and closed by
module hooks), the autograd backward, the optimisers, DDP's all-reduce, and the rest (losses, image pools, casts).
The data loader's share is timed apart: how long `UnpairedFaces` takes to make one step's images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from simpsonize.cpu import cpu_name

RECIPES = {
    # The shipped model's networks (weights/README.md) and the quality issue's candidate: the same networks with the
    # Projected GAN judge beside the PatchGAN.
    "shipped": dict(size=128, ngf=32, n_blocks=6, ndf=64, d_projected="off"),
    "projected": dict(size=128, ngf=32, n_blocks=6, ndf=64, d_projected="with-patch"),
}
QUICK_NETWORKS = dict(size=32, ngf=4, n_blocks=1, ndf=4)


@dataclass(frozen=True)
class Variant:
    """How one training step runs: ``procs`` DDP processes of ``threads`` threads, each with a batch of ``batch``."""

    recipe: str = "shipped"
    batch: int = 1
    procs: int = 2
    threads: int = 1
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = False

    @property
    def label(self) -> str:
        layout = f"{self.procs} DDP x {self.threads} thr" if self.procs > 1 else f"1 proc x {self.threads} thr"
        return (
            f"{self.recipe}, batch {self.batch}, {layout}, {self.precision}"
            f"{', channels_last' if self.channels_last else ''}{', compiled' if self.compile else ''}"
        )

    @property
    def images_per_step(self) -> int:
        return self.batch * self.procs


BASELINE = Variant()  # README: torchrun --nproc-per-node 2, OMP_NUM_THREADS=1, batch 1, --precision bf16


def variants(
    recipes: tuple[str, ...] = ("shipped", "projected"), batches: tuple[int, ...] = (1, 2, 4, 8), compile_: bool = True
) -> list[Variant]:
    """The baseline, then one change at a time from it, for each recipe."""
    out = [BASELINE]
    for recipe in recipes:
        base = replace(BASELINE, recipe=recipe)
        if recipe != BASELINE.recipe:
            out.append(base)
        out += [replace(base, batch=b) for b in batches if b != base.batch]
        one_process = replace(base, procs=1, threads=2)
        out += [one_process, *[replace(one_process, batch=b) for b in batches if b in (4, 8)]]
        out += [replace(base, precision="fp32", channels_last=False), replace(base, channels_last=False)]
        if compile_:
            out.append(replace(base, compile=True))
    return out


# ----------------------------------------------------------------------------------------------- the parent side
def measure(
    chosen: list[Variant],
    steps: int = 6,
    warmup: int = 2,
    quick: bool = False,
    data: str | None = None,
    profile: bool = True,
    profile_steps: int = 3,
    timeout: float = 1800,
) -> dict:
    """Run each variant in its own child process (the baseline again at the end, to show drift; not in the quick
    plumbing run of the tests, where it would be a third of the time) and collect their figures."""
    rows = []
    for i, variant in enumerate(chosen if quick else [*chosen, chosen[0]]):
        # Profiled: the baseline (DDP, so the all-reduce shows) and the same step in one process.
        profiled = i == 0 or variant == replace(BASELINE, procs=1, threads=2) or quick and i == 1
        spec = {
            "variant": asdict(variant),
            "steps": steps,
            "warmup": warmup,
            "quick": quick,
            "data": data,
            "profile": profile and profiled,
            "profile_steps": profile_steps,
        }
        env = {**os.environ, "OMP_NUM_THREADS": str(variant.threads), "OMP_WAIT_POLICY": "PASSIVE"}
        done = subprocess.run(
            [sys.executable, "-m", "simpsonize.bench.train_speed_child", "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"bench train: {variant.label} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    baseline_again = rows[0] if quick else rows.pop()
    base = statistics.mean([rows[0]["images_per_second"], baseline_again["images_per_second"]])
    for row in rows:
        row["ratio_to_baseline"] = row["images_per_second"] / base
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": _torch_version(),
        "quick": quick,
        "steps": steps,
        "warmup": warmup,
        "baseline": rows[0]["label"],
        "baseline_images_per_second_first_last": [rows[0]["images_per_second"], baseline_again["images_per_second"]],
        "rows": rows,
    }


def _torch_version() -> str:
    import torch

    return torch.__version__


def markdown(report: dict) -> str:
    first, last = report["baseline_images_per_second_first_last"]
    lines = [
        f"CPU: {report['cpu']}, {report['cores']} cores, torch {report['torch']}; medians of "
        f"{report['steps']} steps after {report['warmup']} warm-up; baseline (the README's command) "
        f"{first:.2f} images/s first, {last:.2f} last",
        "",
        "| variant | s / step | images / s | ratio to baseline | first step s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['label']} | {row['seconds_per_step']:.3f} | {row['images_per_second']:.2f} | "
            f"{row['ratio_to_baseline']:.2f} | {row['first_step_seconds']:.2f} |"
        )
    for row in report["rows"]:
        if row["breakdown_ms"]:
            parts = row["breakdown_ms"]
            lines += [
                "",
                f"Where a step goes ({row['label']}; data made apart: "
                f"{row['data_seconds_per_step'] * 1000:.1f} ms per step)",
                "",
                "| part | ms / step | share |",
                "| --- | --- | --- |",
            ]
            for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
                if part != "step":
                    lines.append(f"| {part} | {ms:.1f} | {ms / parts['step']:.0%} |")
            lines.append(f"| whole step (profiled) | {parts['step']:.1f} | 100% |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipes",
        default="shipped,projected",
        help="comma-separated: shipped, projected (the shipped networks + the Projected GAN judge)",
    )
    parser.add_argument("--batches", default="1,2,4,8", help="comma-separated batch sizes per process")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (slow to build)")
    parser.add_argument("--data", default=None, help="a prepared dataset instead of synthetic images")
    parser.add_argument("--quick", action="store_true", help="tiny networks at 32 px, few variants (the tests)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")


def run(args: argparse.Namespace) -> int:
    recipes = tuple(r for r in args.recipes.split(",") if r)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        print(f"error: unknown recipe {', '.join(unknown)}; choose from {', '.join(RECIPES)}.")
        return 2
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        print(f"error: --batches takes whole numbers separated by commas, not {args.batches!r}.")
        return 2
    if args.quick:
        chosen = [BASELINE, Variant(batch=2, procs=1, threads=1, precision="fp32", channels_last=False)]
        report = measure(chosen, steps=2, warmup=1, quick=True, data=args.data, profile_steps=1)
    else:
        chosen = variants(recipes, batches, compile_=not args.no_compile)
        report = measure(chosen, steps=args.steps, warmup=args.warmup, data=args.data)
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
