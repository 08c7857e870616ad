"""The run folder: everything a run writes, and everything ``--resume`` and ``--init-from`` read back.

``RUN/config.json`` (the ``TrainConfig``), ``checkpoint.pt`` (all a resume needs to continue exactly: networks,
optimisers, schedules, history pools, every RNG state, the precision and layout chosen), ``losses.csv``, ``losses.png``,
``samples/step_*.png``, ``snapshots/step_*`` (both generators as served-weights files, for picking the best) and
``sessions.json`` (where and how each stretch of training ran; the model card reports the hardware).
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simpsonize.cpu import cpu_model_name
from simpsonize.model.errors import WeightsError
from simpsonize.model.networks import ResnetGenerator
from simpsonize.model.weights import load_generator, save_generator
from simpsonize.removed_options import removed_generator_option
from simpsonize.training.config import TrainConfig, check_removed_options
from simpsonize.training.losses import LOSS_NAMES
from simpsonize.training.precision import hardware_name

# Architecture fields that must match for another run's networks to load into this one.
NETWORK_FIELDS = ("ngf", "n_blocks", "upsampling", "ndf")


def read_checkpoint(out: Path) -> dict:
    """A run's checkpoint, for ``--resume``: ValueError (one sentence) if it is missing or uses a removed option."""
    path = out / "checkpoint.pt"
    if not path.exists():
        raise ValueError(f"--resume was given but {path} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=False)
    check_removed_options(state["config"])
    return state


def write_config(out: Path, config: TrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))


def record_session(
    out: Path,
    start_step: int,
    device: torch.device,
    world_size: int,
    bf16: bool,
    precision_reason: str,
    channels_last: bool,
    layout_reason: str,
) -> None:
    """Append where and how this stretch of training ran (the precision and memory layout, each with its reason)."""
    path = out / "sessions.json"
    sessions = json.loads(path.read_text()) if path.exists() else []
    sessions.append(
        {
            "start_step": start_step,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "device": f"{device.type}: {hardware_name(device)}",
            "threads": torch.get_num_threads(),
            "world_size": world_size,
            "precision": "bf16" if bf16 else "fp32",
            "precision_reason": precision_reason,
            "layout": "channels_last" if channels_last else "contiguous",
            "layout_reason": layout_reason,
            "torch": torch.__version__,
        }
    )
    path.write_text(json.dumps(sessions, indent=2))


def device_description(device: torch.device) -> str:
    return cpu_model_name() if device.type == "cpu" else str(device)


# ------------------------------------------------------------------------------------------ checkpoint.pt
def save_checkpoint(out: Path, state: dict) -> Path:
    path = out / "checkpoint.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind
    return path


def rng_state() -> dict:
    """Every RNG a step draws from (DiffAugment and the initial weights: torch's; the pools have their own)."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def read_source(source: str | Path, config: TrainConfig) -> dict:
    """The checkpoint of another run (a run folder or its checkpoint.pt) for ``--init-from``: ValueError (one
    sentence) if it is missing or its networks are not this config's."""
    path = Path(source)
    path = path / "checkpoint.pt" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"{path} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=False)
    theirs = state.get("config") or {}
    ours = config.to_dict()
    different = [
        f"{name} {theirs.get(name)!r} (this run {ours[name]!r})"
        for name in NETWORK_FIELDS
        if theirs.get(name, ours[name]) != ours[name]
    ]
    if theirs.get("landmark_maps"):  # a removed option that gave G_B five more input channels
        different.append("landmark_maps True (this trainer has none)")
    if theirs.get("spectral_norm"):  # a removed option that changed the discriminators' layers
        different.append("spectral_norm True (this trainer has none)")
    if different:
        raise ValueError(f"{path} has a different architecture: {', '.join(different)}.")
    return state


def load_run_generators(run: Path, snapshot: str | None = None) -> tuple[ResnetGenerator, ResnetGenerator, dict]:
    """A run's two generators, for measuring or exporting them: from ``snapshots/SNAPSHOT`` when given, else from
    its last checkpoint; and what they are (config, step, source)."""
    if snapshot:
        folder = run / "snapshots" / snapshot
        g_a, _ = load_generator(folder / "G_A.safetensors")
        g_b, meta = load_generator(folder / "G_B.safetensors")
        config = json.loads((run / "config.json").read_text())
        return g_a, g_b, {"config": config, "step": meta.get("step"), "source": str(folder)}
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    refusal = removed_generator_option(state["config"], run)
    if refusal:
        raise WeightsError(refusal)
    config = TrainConfig.from_dict(state["config"])
    g_a, g_b = ResnetGenerator(config.generator_config()), ResnetGenerator(config.generator_config())
    g_a.load_state_dict(state["G_A"])
    g_b.load_state_dict(state["G_B"])
    return g_a.eval(), g_b.eval(), {"config": state["config"], "step": state["step"], "source": "checkpoint.pt"}


def continue_optimiser(optimizer: torch.optim.Optimizer, scheduler, state: dict) -> None:
    """Another run's Adam moments, at this run's learning rate (its schedule, not the end of the other run's)."""
    optimizer.load_state_dict(state)
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr
        group["initial_lr"] = scheduler.base_lrs[0]


# ---------------------------------------------------------------------------------------- snapshots, losses
def save_generators(folder: Path, generators: nn.Module, size: int, meta: dict) -> None:
    """Both generators as served-weights files (``test --all-snapshots`` ranks them, ``export`` ships one)."""
    for name, generator, direction in (("G_A", generators.G_A, "AtoB"), ("G_B", generators.G_B, "BtoA")):
        save_generator(
            folder / f"{name}.safetensors", generator, input_size=size, extra={"direction": direction, **meta}
        )


class LossLog:
    """Appends one CSV row per step; on resume, rows past the checkpoint are dropped so the log stays exact."""

    def __init__(self, path: Path, resume_step: int) -> None:
        columns = ["step", "epoch", "lr", *LOSS_NAMES, "seconds"]
        rows = []
        if path.exists() and resume_step > 0:
            with path.open() as handle:
                # Columns of removed tricks (an older run's log) are dropped: they were 0 while the trick was off.
                # Columns of terms added since the run began are 0 in its rows: those terms were not in its objective.
                rows = [
                    {**dict.fromkeys(LOSS_NAMES, f"{0:.5f}"), **{k: v for k, v in r.items() if k in columns}}
                    for r in csv.DictReader(handle)
                    if int(r["step"]) <= resume_step
                ]
        self.handle = path.open("w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=columns)
        self.writer.writeheader()
        self.writer.writerows(rows)

    def write(self, step: int, epoch: float, lr: float, losses: dict[str, float], seconds: float) -> None:
        self.writer.writerow(
            {
                "step": step,
                "epoch": f"{epoch:.4f}",
                "lr": f"{lr:.3e}",
                **{k: f"{v:.5f}" for k, v in losses.items()},
                "seconds": f"{seconds:.3f}",
            }
        )
        if step % 10 == 0:
            self.handle.flush()

    def close(self) -> None:
        self.handle.close()
