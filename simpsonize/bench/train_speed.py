"""`simpsonize bench train`: images per second of a training step, per setting, and where a step's time goes.

Every variant trains the same networks on the same synthetic images (or `--data`) in a fresh child process, so that
thread settings, compile caches and allocator state never leak from one variant into the next. The first variant is
the README's training command (2 DDP processes x 1 thread, batch 1 each, bf16); every other one changes one thing
from it: the batch, the process/thread split, the precision, channels_last, torch.compile. Figures that matter are
the ratios to the baseline, which runs first and again last in the same invocation so that a machine whose speed
drifts shows up as a baseline that disagrees with itself (its two medians are both printed).

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
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from simpsonize.bench.common import free_port
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


# ------------------------------------------------------------------------------------------------ the child side
def _synthetic_dataset(root: Path, size: int) -> Path:
    """Eight noise images per domain: the step's cost does not depend on what the pixels show."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("trainA", "trainB"):
        (root / split).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    return root


def _make_trainer(variant: Variant, data: Path, out: Path, networks: dict, dist_info=None):
    from simpsonize.training.config import TrainConfig
    from simpsonize.training.trainer import Trainer

    config = TrainConfig(
        data=str(data),
        out=str(out),
        upsampling="resize_conv",
        epochs=1,
        epochs_decay=0,
        steps_per_epoch=1000,
        batch_size=variant.batch,
        precision=variant.precision,
        channels_last="on" if variant.channels_last else "off",
        **{**RECIPES[variant.recipe], **networks},
    )
    trainer = Trainer(
        config, device="cpu", num_workers=0, dist_info=dist_info, precision=(variant.precision == "bf16", "bench")
    )
    if variant.compile:
        for network in (trainer.G.G_A, trainer.G.G_B, trainer.D.D_A, trainer.D.D_B):
            network.compile()  # in place: the trainer calls these modules as before
    return trainer


def _batches(trainer, batch: int, count: int, rank: int = 0, procs: int = 1):
    """``count`` batches of the trainer's own dataset, made before timing (their making is timed apart); each rank
    gets its own samples, as `StepBatches` deals them."""
    from torch.utils.data import default_collate

    started = time.perf_counter()
    out = []
    for i in range(count):
        items = [trainer.dataset[(i * procs + rank) * batch + j] for j in range(batch)]
        out.append(default_collate(items))
    return out, (time.perf_counter() - started) / count


def _time_steps(trainer, batches, warmup: int, barrier=None) -> tuple[list[float], float]:
    """Seconds of each timed step, and of the first (where torch.compile compiles)."""
    times, first = [], 0.0
    for i, batch in enumerate(batches):
        if barrier:
            barrier()
        started = time.perf_counter()
        trainer.train_step(batch["A"], batch["B"])
        if barrier:
            barrier()
        seconds = time.perf_counter() - started
        if i == 0:
            first = seconds
        if i >= warmup:
            times.append(seconds)
    return times, first


def _breakdown(trainer, batches) -> dict[str, float]:
    """Milliseconds per step in each part of a step, from torch.profiler over ``batches``."""
    from torch.profiler import ProfilerActivity, profile, record_function

    networks = {
        "forward G_A": trainer.G.G_A,
        "forward G_B": trainer.G.G_B,
        "forward D_A": trainer.D.D_A,
        "forward D_B": trainer.D.D_B,
    }
    if trainer.projected:
        networks["forward D_B projected"] = trainer.D.D_B_projected
    handles, open_ranges = [], []
    for name, module in networks.items():

        def enter(_module, _inputs, name=name):
            scope = record_function(name)
            scope.__enter__()
            open_ranges.append(scope)

        def leave(_module, _inputs, _output):
            open_ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches:
                with record_function("step"):
                    trainer.train_step(batch["A"], batch["B"])
        wall = (time.perf_counter() - started) / len(batches)
    finally:
        for handle in handles:
            handle.remove()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        key = event.key
        if key in networks or key == "step":
            part = key
        elif key.startswith("autograd::engine::evaluate_function"):
            part = "backward (all networks)"
        elif key.startswith("Optimizer."):
            part = "optimizers"
        elif "all_reduce" in key or key.startswith(("gloo", "c10d")):
            part = "DDP all-reduce"
        else:
            continue
        totals[part] = totals.get(part, 0.0) + event.cpu_time_total / 1000 / len(batches)
    step = totals.pop("step", wall * 1000)
    # A forward range also holds the backward of nothing and the casts it makes; what the named parts leave is the
    # losses, the image pools, autocast's casts outside the networks and Python.
    totals["other (losses, pools, casts)"] = max(0.0, step - sum(totals.values()))
    totals["step"] = step
    return totals


def _child(spec: dict) -> dict:
    import torch

    variant = Variant(**spec["variant"])
    torch.set_num_threads(variant.threads)
    networks = QUICK_NETWORKS if spec["quick"] else {}
    size = networks.get("size", RECIPES[variant.recipe]["size"])
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(spec["data"]) if spec["data"] else _synthetic_dataset(Path(tmp) / "data", size)
        steps, warmup = spec["steps"], spec["warmup"]
        if variant.procs == 1:
            trainer = _make_trainer(variant, data, Path(tmp) / "out", networks)
            batches, data_s = _batches(trainer, variant.batch, warmup + steps)
            times, first = _time_steps(trainer, batches, warmup)
            breakdown = _breakdown(trainer, batches[: spec["profile_steps"]]) if spec["profile"] else None
        else:
            times, first, data_s, breakdown = _ddp(spec, variant, data, Path(tmp), networks)
    median = statistics.median(times)
    return {
        "variant": asdict(variant),
        "label": variant.label,
        "seconds_per_step": median,
        "images_per_second": variant.images_per_step / median,
        "step_times": times,
        "first_step_seconds": first,
        "compile_seconds": max(0.0, first - median) if variant.compile else None,
        "data_seconds_per_step": data_s,
        "breakdown_ms": breakdown,
    }


def _ddp_rank(rank: int, spec: dict, variant: Variant, data: Path, tmp: Path, networks: dict, port: int, queue):
    import torch
    import torch.distributed as dist

    from simpsonize.training.ddp import Distributed

    torch.set_num_threads(variant.threads)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(variant.procs),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    dist.init_process_group("gloo")
    try:
        trainer = _make_trainer(variant, data, tmp / f"out{rank}", networks, Distributed(variant.procs, rank, rank))
        batches, data_s = _batches(trainer, variant.batch, spec["warmup"] + spec["steps"], rank, variant.procs)
        times, first = _time_steps(trainer, batches, spec["warmup"], barrier=dist.barrier)
        breakdown = None
        if spec["profile"]:
            profiled = batches[: spec["profile_steps"]]
            if rank == 0:
                breakdown = _breakdown(trainer, profiled)
            else:  # the other ranks step alongside, or rank 0's all-reduce would wait for ever
                for batch in profiled:
                    trainer.train_step(batch["A"], batch["B"])
        if rank == 0:
            queue.put((times, first, data_s, breakdown))
    finally:
        dist.destroy_process_group()


def _ddp(spec: dict, variant: Variant, data: Path, tmp: Path, networks: dict):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.spawn(_ddp_rank, args=(spec, variant, data, tmp, networks, free_port(), queue), nprocs=variant.procs)
    return queue.get()


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
    """Run each variant in its own child process (the baseline again at the end) and collect their figures."""
    rows = []
    for i, variant in enumerate([*chosen, chosen[0]]):
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
            [sys.executable, "-m", "simpsonize.bench.train_speed", "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"bench train: {variant.label} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    baseline_again = rows.pop()
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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
