"""Unpaired A/B image sampling for CycleGAN training.

Sample ``k`` (a global counter over the whole run) is a pure function of ``(seed, k)``: which A and B image,
the random crop and the flip. That makes resuming exact and lets DDP ranks draw disjoint samples without
any sampler state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from simpsonize.model.imaging import to_tensor
from simpsonize.training.prepare import list_images


def load_size_for(size: int) -> int:
    """The reference recipe resizes to 286 before a 256 random crop; keep that ratio at any size."""
    return int(round(size * 286 / 256))


class UnpairedFaces(Dataset):
    """Item ``k`` -> {"A": (3,size,size), "B": (3,size,size)} in [-1, 1], with resize + random crop + flip."""

    def __init__(
        self, root: str | Path, phase: str = "train", size: int = 128, seed: int = 0, augment: bool = True
    ) -> None:
        root = Path(root)
        self.files_a = list_images(root / f"{phase}A")
        self.files_b = list_images(root / f"{phase}B")
        if not self.files_a or not self.files_b:
            raise FileNotFoundError(f"{root} has no images in {phase}A/ or {phase}B/: run `simpsonize prepare` first.")
        self.size, self.seed, self.augment = size, seed, augment
        # How `prepare` cropped the real faces; snapshots carry it so serving crops the same way.
        info = root / "dataset.json"
        self.framing = json.loads(info.read_text()).get("framing") if info.exists() else None
        self.load_size = load_size_for(size) if augment else size

    def __len__(self) -> int:
        return max(len(self.files_a), len(self.files_b))

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(k)])
        a = self._load(self.files_a[rng.integers(len(self.files_a))], rng)
        b = self._load(self.files_b[rng.integers(len(self.files_b))], rng)
        return {"A": a, "B": b}

    def _load(self, path: Path, rng: np.random.Generator) -> torch.Tensor:
        with Image.open(path) as im:
            image = im.convert("RGB").resize((self.load_size, self.load_size), Image.BICUBIC)
        if self.augment:
            x, y = (int(v) for v in rng.integers(0, self.load_size - self.size + 1, size=2))
            image = image.crop((x, y, x + self.size, y + self.size))
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor([image])[0]


def load_fixed(files: list[Path], size: int, keep: float = 1.0) -> torch.Tensor:
    """Images resized to ``size`` without augmentation, stacked (for sample grids and evaluation).

    ``keep`` < 1 keeps only the central fraction of each side, cropped from the stored image before the one resize,
    so that a tighter framing costs no sharpness (a zoom of an already resized image would be an upscale).
    """
    images = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if keep < 1.0:
                side = min(im.size)
                crop = max(1, round(side * keep))
                left, top = (im.size[0] - crop) // 2, (im.size[1] - crop) // 2
                im = im.crop((left, top, left + crop, top + crop))
            images.append(im.resize((size, size), Image.BICUBIC))
    return to_tensor(images)


class StepBatches:
    """Batch sampler: the indices of every sample from ``start_step`` to ``end_step`` for one DDP rank."""

    def __init__(self, start_step: int, end_step: int, batch_size: int, world_size: int = 1, rank: int = 0) -> None:
        self.start_step, self.end_step = start_step, end_step
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank

    def __iter__(self):
        per_step = self.batch_size * self.world_size
        for step in range(self.start_step, self.end_step):
            first = step * per_step + self.rank * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)
