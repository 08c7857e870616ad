"""Data-parallel training under ``torchrun``: which process this is, the process group, and agreeing on a choice or to
stop.

Hugging Face ``accelerate`` would wrap DDP, autocast and the RNG state for us, but it is not adopted: the trainer's
exact resume depends on which RNG states are saved and restored and in what order (tested to the last digit), and
its single-process CPU path chooses bf16 autocast per machine, both of which it would take out of our hands. What it
would replace here is this file's few lines of ``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Distributed:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """The process's place as ``torchrun`` sets it (one process without it)."""
        return cls(
            int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
        )


@contextmanager
def process_group(info: Distributed, device: str) -> Iterator[None]:
    """The process group of a run with more than one process (nccl on CUDA, else gloo); nothing for one process."""
    if info.world_size > 1:
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
    try:
        yield
        if dist.is_initialized():
            # Rank 0 still writes the last checkpoint and its summary when the others are done; a rank that tears its
            # gloo group down while a peer is still connected can abort in gloo's threads ("terminate called without
            # an active exception", seen once in CI). All ranks leave together.
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def wrap(module: nn.Module, device: torch.device, broadcast_buffers: bool = True) -> nn.Module:
    """``module`` under DDP: its gradients are averaged over the processes in its backward."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=broadcast_buffers)


def any_rank(flag: bool, info: Distributed, device: torch.device) -> bool:
    """Whether ``flag`` holds on any process, so that every rank stops on the same step."""
    if info.world_size == 1:
        return flag
    total = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(total)
    return bool(total.item() > 0)


def main_rank_choice(choice: tuple[bool, str], info: Distributed, device: torch.device) -> tuple[bool, str]:
    """Rank 0's ``(flag, why)`` on every process: each rank times its own probe (training/precision.py), which can
    differ on a busy machine, and the ranks must agree: DDP refuses parameters whose strides differ between processes
    (one memory layout), and one precision keeps the ranks' steps alike. Only rank 0 reports the reason."""
    if info.world_size == 1:
        return choice
    flag = torch.tensor([1.0 if choice[0] else 0.0], device=device)
    dist.broadcast(flag, src=0)
    chosen = bool(flag.item() > 0)
    return chosen, choice[1] if chosen == choice[0] else f"rank 0's choice (this rank's probe: {choice[1]})"
