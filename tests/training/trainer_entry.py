"""A few steps of a trainer (this one, or an earlier commit's in its own process), for tests that compare the weights
and losses of two trainers to the bit: ``python trainer_entry.py MODULE OPTIONS_JSON STEPS MODE THREADS RESULT``."""

import csv
import importlib
import json
import sys
from pathlib import Path

import torch


def loss_rows(run: Path) -> list[dict[str, str]]:
    with (run / "losses.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def exercise(module, options: dict, steps: int, mode: str) -> tuple[dict, list]:
    """``module``'s TrainConfig(**options) and Trainer on the CPU: ``steps`` of ``fit`` (through the data loader, as
    a run trains; the checkpoint and the loss log's rows) or of ``train_step`` on the fixed samples (the trainer's
    state and each step's losses)."""
    trainer = module.Trainer(module.TrainConfig(**options), device="cpu", num_workers=0)
    out = Path(options["out"])
    out.mkdir(parents=True)
    if mode == "fit":
        trainer.fit(max_steps=steps)
        return torch.load(out / "checkpoint.pt", weights_only=False), loss_rows(out)
    losses = [trainer.train_step(trainer.sample_A[:1], trainer.sample_B[:1]) for _ in range(steps)]
    return trainer.state_dict(), losses


if __name__ == "__main__":
    name, options, steps, mode, threads, result = sys.argv[1:]
    torch.set_num_threads(int(threads))  # the comparing process's: kernels may split work by thread count
    module = importlib.import_module(name)
    print(f"trainer: {module.__file__}")  # the caller checks that it ran the code it meant
    torch.save(exercise(module, json.loads(options), int(steps), mode), result)
