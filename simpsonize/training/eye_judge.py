"""The eye judge (`train --eye-judge WEIGHT`): a local discriminator of the eyes, the first lever of issue 27 §2.

Landmark Assisted CycleGAN (Wu et al., 2019) gets artist-like cartoon faces from unpaired data partly with local
discriminators on the eyes, nose and mouth. Our worst defect is the eyes (blank white patches, no pupils), so this
judge looks only there: **the generated eyes, cut from G_B's real->Simpsons translation at the person's eye
positions, against the show's eye patches**, with the least-squares loss of the main judges.

Where the eyes are:

- **real side**: from the MTCNN landmarks that `prepare` already found for every photo (DATA/faces.json). `prepare`
  cropped each photo with `simpsonize.model.face.align_crop`, which levels the eyes and puts their midpoint at
  (0.5, eye_line) of the crop, at a side of ``framing.scale`` x mean(eye distance, eye-to-mouth distance): so the
  eyes' place in the stored crop follows exactly from the landmarks, with no second detector pass and no model run.
  (A cached MTCNN pass over the stored crops would cost minutes per dataset and find the same points, less exactly:
  on the 256 px crop instead of the photo.) Photos without a record get the framing's typical eye distance.
  Cached in DATA/real_eyes.json (fractions of the stored crop's side).
- **Simpsons side**: the show's eye finder (training/eyes.py) on every Simpsons training crop; only eyes with a pupil
  are kept, since those are what we want drawn. Cached in DATA/simpsons_eyes.json.

The data loader resizes each image to ``load_size`` and takes a random crop, flipped half the time
(training/data.py). A box placed from the stored crop without that transform was up to 8 px off in an earlier
attempt; here the dataset returns each sample's crop offset and flip (``UnpairedFaces(..., positions=True)``), and
``eye_boxes`` maps every eye through them.

Patches are cut with torchvision's ``roi_align`` (differentiable in the image, so the judge's push reaches G_B) at
``EyeJudgeConfig.patch`` px. The judge itself (``EyePatchDiscriminator``) is a small PatchGAN. Its fakes come
straight from this step's translation (not the history pool: the pool keeps images without their eye positions).

The module is self-contained (no import of training/train.py) so it can be tested alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

REAL_EYES = "real_eyes.json"
SIMPSONS_EYES = "simpsons_eyes.json"
CACHE_VERSION = 1


@dataclass(frozen=True)
class EyeJudgeConfig:
    patch: int = 32  # px of the square patches the judge sees (a show eye is 10-25 px across at 128 px)
    ndf: int = 32
    # Half the side of a show eye's box, in its white's inscribed radii: the white disc, its outline and a little
    # skin around it (the finder's radius excludes the outline).
    box_radii: float = 1.4
    # The radius the show would give a person's eye, in eye distances (the show draws big eyes, nearly touching):
    # measured with the finder on every 10th show crop where it found two eyes with pupils (191), the white's
    # inscribed radius over the distance between the two whites' centres has median 0.37, upper quartile 0.41.
    real_radius: float = 0.4


# ------------------------------------------------------------------------------------------------- caches
def _source_of(file: Path, by_stem: dict[str, str]) -> str | None:
    """`prepare` names a crop NNNNNN_<source stem>.png (training/prepare.py); the source's record in faces.json."""
    parts = file.stem.split("_", 1)
    return by_stem.get(parts[1]) if len(parts) == 2 else None


def eyes_framing(framing: dict | None):
    """The dataset's framing, which must place the eyes alike in every crop (the eyes framing)."""
    from simpsonize.model.framing import Framing

    frame = Framing.from_dict(framing)
    if frame.mode != "eyes":
        raise ValueError(
            "--eye-judge needs a dataset cropped with the eyes framing: a head framing places each "
            "face's eyes from its own head, which this judge does not record."
        )
    return frame


def eyes_from_landmarks(landmarks, framing: dict | None) -> list[list[float]]:
    """Where ``align_crop`` puts the two eyes of a face with these MTCNN landmarks (left eye, right eye, nose, mouth
    left, mouth right; photo px), as [x, y] fractions of the crop side, left first."""
    import numpy as np

    frame = eyes_framing(framing)
    left, right, _nose, mouth_left, mouth_right = (np.asarray(p, dtype=np.float64) for p in landmarks)
    eyes, mouth = (left + right) / 2, (mouth_left + mouth_right) / 2
    distance = float(np.linalg.norm(right - left))
    side = max((distance + float(np.linalg.norm(mouth - eyes))) / 2 * frame.scale, 8.0)  # as align_crop
    half = distance / side / 2
    return [[0.5 - half, frame.eye_line], [0.5 + half, frame.eye_line]]


def default_eyes(framing: dict | None) -> list[list[float]]:
    """A photo without a landmark record: eye distance equal to the eye-to-mouth distance (UTKFace's mean)."""
    frame = eyes_framing(framing)
    half = 1 / frame.scale / 2
    return [[0.5 - half, frame.eye_line], [0.5 + half, frame.eye_line]]


def real_eyes(data: Path, files: list[Path]) -> list[list[list[float]]]:
    """Each real training crop's two eyes ([x, y] fractions), in the order of ``files``; cached in the dataset."""
    data = Path(data)
    info = json.loads((data / "dataset.json").read_text()) if (data / "dataset.json").exists() else {}
    framing = info.get("framing")
    eyes_framing(framing)  # before the cache: a cache left from another framing must not hide a head framing
    cache = data / REAL_EYES
    names = [f.name for f in files]
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("version") == CACHE_VERSION and all(n in stored["eyes"] for n in names):
            return [stored["eyes"][n] for n in names]
    faces = json.loads((data / "faces.json").read_text()) if (data / "faces.json").exists() else {}
    by_stem = {Path(k).stem: k for k, v in faces.items() if v}
    eyes, found = {}, 0
    for file in files:
        source = _source_of(file, by_stem)
        if source is not None:
            eyes[file.name] = eyes_from_landmarks(faces[source]["landmarks"], framing)
            found += 1
        else:
            eyes[file.name] = default_eyes(framing)
    cache.write_text(json.dumps({"version": CACHE_VERSION, "from_landmarks": found, "eyes": eyes}))
    return [eyes[n] for n in names]


def simpsons_eyes(data: Path, files: list[Path]) -> list[list[dict]]:
    """The finder's eyes with a pupil in each Simpsons training crop (``Eye.to_dict()``), in the order of ``files``;
    cached in the dataset (the finder takes ~0.1 s a crop)."""
    from PIL import Image

    from simpsonize.training.eyes import find_eyes

    cache = Path(data) / SIMPSONS_EYES
    names = [f.name for f in files]
    stored = json.loads(cache.read_text()) if cache.exists() else {}
    if stored.get("version") != CACHE_VERSION:
        stored = {"version": CACHE_VERSION, "eyes": {}}
    missing = [f for f in files if f.name not in stored["eyes"]]
    for file in missing:
        with Image.open(file) as image:
            stored["eyes"][file.name] = [e.to_dict() for e in find_eyes(image) if e.pupil]
    if missing:
        cache.write_text(json.dumps(stored))
    return [stored["eyes"][n] for n in names]


# --------------------------------------------------------------------------------------------- positions
def to_crop(x: float, y: float, crop: torch.Tensor, load_size: int, size: int) -> tuple[float, float]:
    """A point at fractions (x, y) of a stored image, in px of the training crop that the dataset cut from it:
    resized to ``load_size``, cropped at (crop[0], crop[1]), mirrored when crop[2]."""
    u, v = x * load_size - float(crop[0]), y * load_size - float(crop[1])
    if bool(crop[2]):
        u = size - u
    return u, v


def eye_boxes(
    eyes: list[list[tuple[float, float, float]]], crops: torch.Tensor, load_size: int, size: int
) -> torch.Tensor:
    """(K, 5) boxes for ``roi_align``: [image index, x1, y1, x2, y2] in training-crop px. ``eyes[i]``: image i's
    eyes as (x, y, half side), x and y fractions of the stored image, the half side a fraction of it too."""
    rows = []
    for i, (image_eyes, crop) in enumerate(zip(eyes, crops)):
        for x, y, half in image_eyes:
            u, v = to_crop(x, y, crop, load_size, size)
            h = half * load_size
            rows.append([float(i), u - h, v - h, u + h, v + h])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def cut_patches(images: torch.Tensor, boxes: torch.Tensor, patch: int) -> torch.Tensor:
    """The boxes' contents at ``patch`` x ``patch`` px (bilinear, differentiable in ``images``)."""
    from torchvision.ops import roi_align

    if len(boxes) == 0:
        return images.new_zeros((0, images.shape[1], patch, patch))
    return roi_align(
        images.float(),
        boxes.to(images.device),
        output_size=(patch, patch),
        spatial_scale=1.0,
        sampling_ratio=2,
        aligned=True,
    )


# --------------------------------------------------------------------------------------------- the judge
class EyePatchDiscriminator(nn.Module):
    """A small PatchGAN for eye patches: 32 px -> a 6 x 6 map of logits, each seeing about 22 px of the patch."""

    def __init__(self, ndf: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1),
            nn.InstanceNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, stride=1, padding=1),
            nn.InstanceNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, 1, 4, stride=1, padding=1),
        )
        for module in self.modules():  # the reference CycleGAN's init: N(0, 0.02)
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches)


def lsgan(prediction: torch.Tensor, is_real: bool) -> torch.Tensor:
    """The least-squares GAN loss, as the main judges'."""
    return F.mse_loss(prediction.float(), torch.full_like(prediction.float(), 1.0 if is_real else 0.0))


class EyeJudge(nn.Module):
    """The judge with the dataset's eye positions: boxes for a batch from the samples' file indices and crops."""

    def __init__(
        self,
        data: Path,
        files_a: list[Path],
        files_b: list[Path],
        load_size: int,
        size: int,
        config: EyeJudgeConfig = EyeJudgeConfig(),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.config, self.load_size, self.size = config, load_size, size
        # Built from its own seed, so every other network of the run starts as without it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.D = EyePatchDiscriminator(config.ndf)
        self.show = [
            [(e["x"], e["y"], config.box_radii * e["r"]) for e in eyes] for eyes in simpsons_eyes(data, files_a)
        ]

        def half(eyes):
            return config.box_radii * config.real_radius * abs(eyes[1][0] - eyes[0][0])

        self.person = [[(x, y, half(eyes)) for x, y in eyes] for eyes in real_eyes(data, files_b)]

    def show_boxes(self, indices: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        return eye_boxes([self.show[int(i)] for i in indices], crops, self.load_size, self.size)

    def person_boxes(self, indices: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        return eye_boxes([self.person[int(i)] for i in indices], crops, self.load_size, self.size)

    def generator_loss(self, fake: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """G_B's loss: its eyes at the person's eye positions should pass for the show's."""
        return lsgan(self.D(cut_patches(fake, boxes, self.config.patch)), True)

    def discriminator_loss(
        self, real: torch.Tensor, real_boxes: torch.Tensor, fake: torch.Tensor, fake_boxes: torch.Tensor
    ) -> torch.Tensor:
        """Half on the show's eye patches, half on the generated ones; 0 when the batch's Simpsons faces have no
        eye the finder found (about one in eight), so the judge never learns from fakes alone."""
        if len(real_boxes) == 0:
            return real.new_zeros(())
        patch = self.config.patch
        return 0.5 * (
            lsgan(self.D(cut_patches(real, real_boxes, patch)), True)
            + lsgan(self.D(cut_patches(fake.detach(), fake_boxes, patch)), False)
        )
