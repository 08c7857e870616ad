"""Where the model runs: the one rule for the pipeline, the worker, the benchmarks and the tools."""

from __future__ import annotations

import torch

from simpsonize.model.errors import SimpsonizeError


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """``None``, "" or "auto": CUDA when a GPU is there, else the CPU. Anything else as asked; CUDA asked for on a
    machine without it is a ``SimpsonizeError`` with a sentence (not a crash on the first tensor moved)."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SimpsonizeError("CUDA was requested but no CUDA GPU is available; use --device cpu.")
    return device


def detector_device_for(device: torch.device) -> str:
    """Where MTCNN runs: the generator's own GPU (a worker started with ``--device cuda:1`` must not put its
    detector on GPU 0 beside another worker's model), else the CPU."""
    return str(device) if device.type == "cuda" else "cpu"
