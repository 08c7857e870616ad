"""The run folder: everything a run writes, and everything ``--resume`` and ``--init-from`` read back.

``RUN/config.json`` (the ``TrainConfig``), ``checkpoint.pt`` (all a resume needs to continue exactly: networks,
optimisers, schedules, history pools, every RNG state, the precision chosen), ``losses.csv``, ``losses.png``,
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
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from simpsonize.model.weights import save_generator
from simpsonize.training.config import TrainConfig, check_removed_options
from simpsonize.training.losses import LOSS_NAMES
from simpsonize.training.precision import cpu_name, hardware_name

if TYPE_CHECKING:
    from simpsonize.training.trainer import Trainer

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


def record_session(out: Path, trainer: Trainer, start_step: int) -> None:
    """Append where and how this stretch of training ran."""
    path = out / "sessions.json"
    sessions = json.loads(path.read_text()) if path.exists() else []
    device = trainer.device
    sessions.append({"start_step": start_step, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "device": f"{device.type}: {hardware_name(device)}", "threads": torch.get_num_threads(),
                     "world_size": trainer.dist.world_size, "precision": "bf16" if trainer.bf16 else "fp32",
                     "precision_reason": trainer.precision_reason, "torch": torch.__version__})
    path.write_text(json.dumps(sessions, indent=2))


def device_description(device: torch.device) -> str:
    return cpu_name() if device.type == "cpu" else str(device)


# ------------------------------------------------------------------------------------------ checkpoint.pt
def trainer_state(trainer: Trainer) -> dict:
    """Everything needed to continue ``trainer`` exactly where it is."""
    t, D = trainer, trainer.D
    state = {
        "config": t.config.to_dict(),
        "step": t.step,
        "precision": {"bf16": t.bf16, "reason": t.precision_reason, "hardware": hardware_name(t.device)},
        "G_A": t.G.G_A.state_dict(), "G_B": t.G.G_B.state_dict(), "D_A": D.D_A.state_dict(), "D_B": D.D_B.state_dict(),
        "opt_G": t.opt_G.state_dict(), "opt_D": t.opt_D.state_dict(),
        "sched_G": t.sched_G.state_dict(), "sched_D": t.sched_D.state_dict(),
        "pool_A": t.pool_A.state_dict(), "pool_B": t.pool_B.state_dict(),
    }
    if t.G_ema is not None:
        state["G_ema"] = t.G_ema.state_dict()
    if t.projected:
        state.update(D_B_projected=D.D_B_projected[0].trained_state_dict(),
                     opt_D_projected=t.opt_D_projected.state_dict(), sched_D_projected=t.sched_D_projected.state_dict())
    if t.eye_judge is not None:
        state.update(D_eye=t.eye_judge.state_dict(), opt_D_eye=t.opt_D_eye.state_dict(),
                     sched_D_eye=t.sched_D_eye.state_dict())
    state["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    return state


def restore(trainer: Trainer, state: dict) -> None:
    """Put ``trainer`` back where ``trainer_state`` found it (the same run, resumed)."""
    t = trainer
    t.step = int(state["step"])
    for name, module in _networks(t):
        module.load_state_dict(state[name])
    t.opt_G.load_state_dict(state["opt_G"])
    t.opt_D.load_state_dict(state["opt_D"])
    t.sched_G.load_state_dict(state["sched_G"])
    t.sched_D.load_state_dict(state["sched_D"])
    t.pool_A.load_state_dict(state["pool_A"], t.device)
    t.pool_B.load_state_dict(state["pool_B"], t.device)
    if t.G_ema is not None and "G_ema" in state:  # without it (--ema-decay added on resume) it starts here
        t.G_ema.load_state_dict(state["G_ema"])
    if t.projected:
        t.D.D_B_projected[0].load_trained_state_dict(state["D_B_projected"])
        t.opt_D_projected.load_state_dict(state["opt_D_projected"])
        t.sched_D_projected.load_state_dict(state["sched_D_projected"])
    if t.eye_judge is not None:
        t.eye_judge.load_state_dict(state["D_eye"])
        t.opt_D_eye.load_state_dict(state["opt_D_eye"])
        t.sched_D_eye.load_state_dict(state["sched_D_eye"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_checkpoint(trainer: Trainer) -> Path:
    path = trainer.out / "checkpoint.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(trainer_state(trainer), tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind
    return path


def load_networks(trainer: Trainer, source: str | Path) -> int:
    """Start from the four networks of another run (a run folder or its checkpoint.pt); return its step.

    Fine-tuning a trained run with a changed objective costs a fraction of training from scratch, and gives an
    ablation that compares changes from the same starting point. Adam's moments come along, so the optimisation
    continues rather than restarts; the learning rates follow this run's schedule, not the end of the other run's.
    (Both with and without the moments, a trained CycleGAN diverged within five steps when its rate jumped to 2e-4;
    5e-5 held.)
    """
    path = Path(source)
    path = path / "checkpoint.pt" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"{path} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=False)
    theirs = state.get("config") or {}
    ours = trainer.config.to_dict()
    different = [f"{name} {theirs.get(name)!r} (this run {ours[name]!r})"
                 for name in NETWORK_FIELDS if theirs.get(name, ours[name]) != ours[name]]
    if theirs.get("spectral_norm"):  # a removed option that changed the discriminators' layers
        different.append("spectral_norm True (this trainer has none)")
    if different:
        raise ValueError(f"{path} has a different architecture: {', '.join(different)}.")
    for name, module in _networks(trainer):
        module.load_state_dict(state[name])
    parts = [(trainer.opt_G, trainer.sched_G, "opt_G"), (trainer.opt_D, trainer.sched_D, "opt_D")]
    # A run with the projected judge continued: its heads too; from a run without one they start fresh.
    if trainer.projected and "D_B_projected" in state:
        trainer.D.D_B_projected[0].load_trained_state_dict(state["D_B_projected"])
        parts.append((trainer.opt_D_projected, trainer.sched_D_projected, "opt_D_projected"))
    for optimizer, scheduler, name in parts:
        optimizer.load_state_dict(state[name])
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
            group["initial_lr"] = scheduler.base_lrs[0]
    return int(state["step"])


def _networks(trainer: Trainer) -> tuple[tuple[str, nn.Module], ...]:
    return (("G_A", trainer.G.G_A), ("G_B", trainer.G.G_B), ("D_A", trainer.D.D_A), ("D_B", trainer.D.D_B))


# ---------------------------------------------------------------------------------------- snapshots, losses
def save_snapshot(trainer: Trainer) -> Path:
    """Both generators at this step, as served-weights files, so `test --all-snapshots` can rank them; with
    --ema-decay their moving average too, in a folder of its own (step_N_ema), ranked beside them."""
    folder = trainer.out / "snapshots" / f"step_{trainer.step:07d}"
    _save_generators(trainer, folder, trainer.G)
    if trainer.G_ema is not None:
        _save_generators(trainer, folder.with_name(folder.name + "_ema"), trainer.G_ema.module,
                         {"ema_decay": trainer.config.ema_decay})
    return folder


def _save_generators(trainer: Trainer, folder: Path, generators: nn.Module, extra: dict | None = None) -> None:
    for name, generator, direction in (("G_A", generators.G_A, "AtoB"), ("G_B", generators.G_B, "BtoA")):
        meta = {"direction": direction, "step": trainer.step,
                "epoch": round(trainer.step / trainer.steps_per_epoch, 4), "run": str(trainer.out),
                "framing": trainer.dataset.framing, **(extra or {})}
        save_generator(folder / f"{name}.safetensors", generator, input_size=trainer.config.size, extra=meta)


class LossLog:
    """Appends one CSV row per step; on resume, rows past the checkpoint are dropped so the log stays exact."""

    def __init__(self, path: Path, resume_step: int) -> None:
        columns = ["step", "epoch", "lr", *LOSS_NAMES, "seconds"]
        rows = []
        if path.exists() and resume_step > 0:
            with path.open() as handle:
                # Columns of removed tricks (an older run's log) are dropped: they were 0 while the trick was off.
                rows = [{k: v for k, v in r.items() if k in columns} for r in csv.DictReader(handle)
                        if int(r["step"]) <= resume_step]
        self.handle = path.open("w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=columns)
        self.writer.writeheader()
        self.writer.writerows(rows)

    def write(self, step: int, epoch: float, lr: float, losses: dict[str, float], seconds: float) -> None:
        self.writer.writerow({"step": step, "epoch": f"{epoch:.4f}", "lr": f"{lr:.3e}",
                              **{k: f"{v:.5f}" for k, v in losses.items()}, "seconds": f"{seconds:.3f}"})
        if step % 10 == 0:
            self.handle.flush()

    def close(self) -> None:
        self.handle.close()
