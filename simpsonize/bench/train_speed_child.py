"""The child side of `simpsonize bench train`: one variant's steps timed in this fresh process (or in its DDP
ranks), and where a step's time goes. ``simpsonize.bench.train_speed`` starts it as
``python -m simpsonize.bench.train_speed_child --child SPEC`` and reads the JSON line it prints."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from simpsonize.bench.common import free_port, noise_dataset
from simpsonize.bench.train_speed import QUICK_NETWORKS, RECIPES, Variant


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
        data = Path(spec["data"]) if spec["data"] else noise_dataset(Path(tmp) / "data", size, 8)
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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
