"""The show's eye locator and the eye-consistency term (`train --eye-consistency WEIGHT`): issue 27 §2's last lever.

Landmark Assisted CycleGAN (Wu et al., 2019) keeps a cartoon's landmarks where the photo's were with a
landmark-consistency loss: a landmark regressor trained on cartoons looks at the generated cartoon, and its landmarks
are pulled onto the photo's. Here the landmarks are the two eyes (our worst defect: blank white patches, no pupils)
and the regressor is a heat map:

- **the locator** (``EyeLocator``): Lite0's frozen ImageNet features at strides 4, 8 and 16 and a small trained head,
  giving a map at stride 4 of logits for "the centre of a show eye *with a pupil* is here";
- **its labels** are the rule-based finder's eyes with a pupil (training/eyes.py), on three kinds of image: the show's
  crops, real photos, and the shipped model's translations of real photos. The translations are the hard negatives:
  their blank white discs are exactly what the locator must not call an eye (where the finder does find a pupil in
  one, about one face in seven, that eye is a positive like the show's);
- **the term**: binary cross-entropy between the locator's map of G_B(photo) and Gaussians at the person's two eye
  positions (prepare's MTCNN landmarks through the crop's geometry, following each sample's crop and flip). It is
  differentiable in the image through the frozen networks, so G_B is pushed to draw pupilled show eyes where the
  person's eyes are, and nowhere else.

Unlike the eye judge (a local GAN; it won outright within 600 steps and G_B learnt nothing from it), the locator is
fixed while G_B trains: it cannot win, only point. `simpsonize eye-locator --data DATA` fits it once per dataset
(DATA/eye_locator.safetensors) and prints how well it agrees with the finder on held-out images of each kind.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

LOCATOR_FILE = "eye_locator.safetensors"
SIMPSONS_EYES = "simpsons_eyes.json"  # the finder's eyes with a pupil in every Simpsons training crop
CACHE_VERSION = 1
STRIDE = 4  # the map's cell, in px of the image: Lite0's finest feature stride
TAPS = 3  # the features at strides 4, 8 and 16 (stride 32 is 4 x 4 at 128 px: too coarse to place an eye)
SIGMA = 1.0  # the Gaussians' spread, in cells (4 px at 128 px: a show eye's white is 10-25 px across)
# Positives are about 2 x 6 of 1,024 cells: weighted up, so that "no eye anywhere" is not the easy optimum. Not too
# far: at 20 the fitted locator also fired on 39 % of the shipped model's blank-eyed translations (held out); at 5, see
# docs/experiments.md (twentieth session).
POSITIVE_WEIGHT = 5.0
PEAK = 0.5  # a cell whose probability passes this is a found eye centre


@dataclass(frozen=True)
class LocatorConfig:
    hidden: int = 32  # channels of the head
    size: int = 128  # px of the images it is fitted on (the training size)


# ------------------------------------------------------------------------------------------------ the network
def lite0_trunk() -> nn.Module:
    """Lite0's pretrained features, frozen (tests replace this function with a tiny random trunk)."""
    from simpsonize.training.lite0 import Lite0Features
    from simpsonize.training.projected import freeze

    return freeze(Lite0Features(input_size=None)).eval()


class EyeLocator(nn.Module):
    """Images in [-1, 1] (N, 3, S, S) -> logits (N, 1, S/4, S/4). Only the head has parameters; the trunk's weights
    are buffers (they come from their package, not from the locator's file) and stay in eval mode."""

    def __init__(self, config: LocatorConfig = LocatorConfig(), trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.trunk = trunk if trunk is not None else lite0_trunk()
        channels = sum(self.trunk.channels[:TAPS])
        self.head = nn.Sequential(
            nn.Conv2d(channels, config.hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(config.hidden, config.hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(config.hidden, 1, 3, padding=1),
        )

    def train(self, mode: bool = True) -> EyeLocator:
        super().train(mode)
        self.trunk.eval()  # its batch norms keep ImageNet's statistics
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's first ``TAPS`` maps (strides 4, 8, 16)."""
        return self.trunk(images)[:TAPS]

    def from_features(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The head on the maps, the coarser ones upsampled to stride 4 and stacked with the finest."""
        side = maps[0].shape[-1]
        upsampled = [F.interpolate(m, size=(side, side), mode="bilinear", align_corners=False) for m in maps[1:]]
        return self.head(torch.cat([maps[0], *upsampled], dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(images))


def save_locator(locator: EyeLocator, path: Path, report: dict) -> str:
    """The head's weights (the trunk comes from its package) and what fitted them; returns the file's sha256."""
    from safetensors.torch import save_file

    metadata = {"config": json.dumps(asdict(locator.config)), "report": json.dumps(report)}
    save_file({k: v.contiguous() for k, v in locator.head.state_dict().items()}, str(path), metadata=metadata)
    return file_sha256(path)


def load_locator(path: Path, trunk: nn.Module | None = None) -> EyeLocator:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: fit the eye locator first with `simpsonize eye-locator --data {path.parent}`."
        )
    with safe_open(str(path), "pt") as handle:
        config = LocatorConfig(**json.loads(handle.metadata()["config"]))
    locator = EyeLocator(config, trunk)
    locator.head.load_state_dict(load_file(str(path)))
    for parameter in locator.parameters():  # fixed while G_B trains: it points, it does not learn
        parameter.requires_grad_(False)
    return locator.eval()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ the maps
def gaussian_maps(centres: list[list[tuple[float, float]]], side: int, device=None) -> torch.Tensor:
    """(N, 1, side, side) targets: for image i, the maximum of Gaussians (``SIGMA`` cells) at ``centres[i]``, each a
    point in px of the image (cell j covers px [4j, 4j + 4), so its centre is at 4j + 2)."""
    grid = (torch.arange(side, dtype=torch.float32, device=device) + 0.5) * STRIDE
    maps = torch.zeros((len(centres), 1, side, side), device=device)
    for i, points in enumerate(centres):
        for u, v in points:
            dx = ((grid - u) / STRIDE) ** 2
            dy = ((grid - v) / STRIDE) ** 2
            maps[i, 0] = torch.maximum(maps[i, 0], torch.exp(-(dy[:, None] + dx[None, :]) / (2 * SIGMA**2)))
    return maps


def map_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against soft targets, positives weighted by ``POSITIVE_WEIGHT``, in fp32."""
    weight = torch.tensor(POSITIVE_WEIGHT, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight)


def peaks(probabilities: torch.Tensor) -> list[list[tuple[float, float]]]:
    """Each image's found eye centres, in px: cells above ``PEAK`` that are their 3 x 3 neighbourhood's maximum."""
    pooled = F.max_pool2d(probabilities, 3, stride=1, padding=1)
    found = (probabilities >= PEAK) & (probabilities == pooled)
    out = []
    for image in found[:, 0]:
        rows, cols = torch.nonzero(image, as_tuple=True)
        out.append([((c.item() + 0.5) * STRIDE, (r.item() + 0.5) * STRIDE) for r, c in zip(rows, cols)])
    return out


# ------------------------------------------------------------------------------------ the person's eye positions
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
            "--eye-consistency needs a dataset cropped with the eyes framing: a head framing places each "
            "face's eyes from its own head, which is not recorded."
        )
    return frame


def eyes_from_landmarks(landmarks, framing: dict | None) -> list[list[float]]:
    """Where ``model.face.align_crop`` puts the two eyes of a face with these MTCNN landmarks (left eye, right eye,
    nose, mouth left, mouth right; photo px), as [x, y] fractions of the crop side, left first."""
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
    """Each real training crop's two eyes ([x, y] fractions), in the order of ``files``. Not cached: it is geometry on
    prepare's landmarks (faces.json), milliseconds for the whole dataset."""
    data = Path(data)
    info = json.loads((data / "dataset.json").read_text()) if (data / "dataset.json").exists() else {}
    framing = info.get("framing")
    eyes_framing(framing)
    faces = json.loads((data / "faces.json").read_text()) if (data / "faces.json").exists() else {}
    by_stem = {Path(k).stem: k for k, v in faces.items() if v}
    eyes = []
    for file in files:
        source = _source_of(file, by_stem)
        eyes.append(
            eyes_from_landmarks(faces[source]["landmarks"], framing) if source is not None else default_eyes(framing)
        )
    return eyes


def to_crop(x: float, y: float, crop, load_size: int, size: int) -> tuple[float, float]:
    """A point at fractions (x, y) of a stored image, in px of the training crop the dataset cut from it: resized to
    ``load_size``, cropped at (crop[0], crop[1]), mirrored when crop[2]."""
    u, v = x * load_size - float(crop[0]), y * load_size - float(crop[1])
    if bool(crop[2]):
        u = size - u
    return u, v


class EyeConsistency(nn.Module):
    """The term for a batch: the locator's map of G_B's translations against Gaussians at the photos' eyes."""

    def __init__(
        self, locator: EyeLocator, data: Path, files_b: list[Path], load_size: int, size: int, sha256: str = ""
    ) -> None:
        super().__init__()
        self.locator, self.load_size, self.size, self.sha256 = locator, load_size, size, sha256
        self.person = real_eyes(data, files_b)

    def targets(self, indices: torch.Tensor, crops: torch.Tensor, device=None) -> torch.Tensor:
        centres = [
            [to_crop(x, y, crop, self.load_size, self.size) for x, y in self.person[int(i)]]
            for i, crop in zip(indices, crops)
        ]
        return gaussian_maps(centres, self.size // STRIDE, device)

    def forward(self, fake: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return map_loss(self.locator(fake), targets)


def build_consistency(data: Path, files_b: list[Path], load_size: int, size: int, device) -> EyeConsistency:
    path = Path(data) / LOCATOR_FILE
    locator = load_locator(path)
    if locator.config.size != size:
        raise ValueError(
            f"{path} was fitted on {locator.config.size} px images and this run trains at {size} px: "
            f"fit it again with `simpsonize eye-locator --data {data} --size {size}`."
        )
    return EyeConsistency(locator, data, files_b, load_size, size, file_sha256(path)).to(device)


# ------------------------------------------------------------------------------------------------ fitting
def simpsons_eyes(data: Path, files: list[Path]) -> list[list[dict]]:
    """The finder's eyes with a pupil in each Simpsons training crop, in the order of ``files``; cached in the
    dataset (the finder takes ~0.1 s a crop)."""
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


def finder_centres(images: torch.Tensor) -> list[list[tuple[float, float]]]:
    """The finder's eyes with a pupil in each image of a batch ([-1, 1]), as centres in px of the image."""
    from simpsonize.model.imaging import to_images
    from simpsonize.training.eyes import find_eyes

    side = images.shape[-1]
    return [[(e.x * side, e.y * side) for e in find_eyes(im) if e.pupil] for im in to_images(images)]


@dataclass
class LabelledImages:
    """One kind of image for fitting: the images ([-1, 1]) and the finder's eye centres in each (px)."""

    kind: str
    images: torch.Tensor
    centres: list[list[tuple[float, float]]]


def fitting_sets(data: Path, size: int, weights: Path, per_kind: int, seed: int = 0) -> list[LabelledImages]:
    """The show's crops (all, labels from the cached finder), ``per_kind`` real photos and the shipped model's
    translations of ``per_kind`` other real photos (labels from the finder, run here)."""
    import numpy as np

    from simpsonize.model.weights import load_generator
    from simpsonize.training.data import load_fixed
    from simpsonize.training.prepare import list_images

    data = Path(data)
    files_a, files_b = list_images(data / "trainA"), list_images(data / "trainB")
    show = load_fixed(files_a, size)
    show_centres = [[(e["x"] * size, e["y"] * size) for e in eyes] for eyes in simpsons_eyes(data, files_a)]
    order = np.random.default_rng(seed).permutation(len(files_b))
    photos = load_fixed([files_b[i] for i in order[:per_kind]], size)
    sources = load_fixed([files_b[i] for i in order[per_kind : 2 * per_kind]], size)
    generator, _ = load_generator(weights)
    with torch.no_grad():
        drawn = torch.cat([generator(sources[i : i + 32]).float().clamp(-1, 1) for i in range(0, len(sources), 32)])
    return [
        LabelledImages("show", show, show_centres),
        LabelledImages("photo", photos, finder_centres(photos)),
        LabelledImages("shipped model", drawn, finder_centres(drawn)),
    ]


def split(sets: list[LabelledImages], every: int = 10) -> tuple[list[LabelledImages], list[LabelledImages]]:
    """Every ``every``-th image of each kind is held out, the rest fits."""

    def pick(s: LabelledImages, held: bool) -> LabelledImages:
        keep = [i for i in range(len(s.images)) if (i % every == 0) == held]
        return LabelledImages(s.kind, s.images[keep], [s.centres[i] for i in keep])

    return [pick(s, False) for s in sets], [pick(s, True) for s in sets]


@torch.no_grad()
def agreement(locator: EyeLocator, held: LabelledImages, batch: int = 64) -> dict:
    """How the locator's peaks agree with the finder's eyes on held-out images: ``hit``, the share of the finder's
    eyes with a peak within 2 cells (8 px at 128); ``false``, the share of images with a peak farther than that
    from every finder eye."""
    locator.eval()
    found = []
    for i in range(0, len(held.images), batch):
        found += peaks(torch.sigmoid(locator(held.images[i : i + batch])))
    near = 2 * STRIDE
    eyes = sum(len(c) for c in held.centres)
    hits = sum(
        any((u - p) ** 2 + (v - q) ** 2 <= near**2 for p, q in peaks_i)
        for c, peaks_i in zip(held.centres, found)
        for u, v in c
    )
    false = sum(
        any(all((u - p) ** 2 + (v - q) ** 2 > near**2 for u, v in c) for p, q in peaks_i)
        for c, peaks_i in zip(held.centres, found)
    )
    return {
        "kind": held.kind,
        "images": len(held.images),
        "finder_eyes": eyes,
        "hit": round(hits / eyes, 4) if eyes else None,
        "false": round(false / max(1, len(held.images)), 4),
    }


def fit(
    locator: EyeLocator,
    sets: list[LabelledImages],
    epochs: int = 12,
    batch: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train the head on the trunk's features (computed once, with each image's mirror image, kept in fp16); the
    mean loss of each epoch."""
    side = locator.config.size // STRIDE
    features, targets = [[] for _ in range(TAPS)], []
    with torch.no_grad():
        locator.eval()
        for s in sets:
            for flip in (False, True):
                images = s.images.flip(-1) if flip else s.images
                centres = [[(s.images.shape[-1] - u, v) for u, v in c] for c in s.centres] if flip else s.centres
                for i in range(0, len(images), 64):
                    for tap, m in enumerate(locator.features(images[i : i + 64])):
                        features[tap].append(m.half())
                targets.append(gaussian_maps(centres, side))
    features, targets = [torch.cat(f) for f in features], torch.cat(targets)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(locator.head.parameters(), lr=lr)
    history = []
    locator.train()
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=generator)
        total = 0.0
        for i in range(0, len(order), batch):
            pick = order[i : i + batch]
            loss = map_loss(locator.from_features([f[pick].float() for f in features]), targets[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(pick)
        history.append(total / len(order))
    return history


# ------------------------------------------------------------------------------------------------ the command
def add_arguments(parser) -> None:
    from simpsonize.resources import SHIPPED_WEIGHTS

    parser.add_argument("--data", required=True, help="a prepared dataset (simpsonize prepare), eyes framing")
    parser.add_argument("--size", type=int, default=128, help="px of the training crops it will judge")
    parser.add_argument(
        "--weights",
        default=str(SHIPPED_WEIGHTS),
        help="the model whose translations are the hard negatives (default: the shipped one)",
    )
    parser.add_argument("--per-kind", type=int, default=1000, help="real photos, and translations, to fit on")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def run(args) -> int:
    data = Path(args.data)
    if not (data / "trainA").is_dir() or not (data / "trainB").is_dir():
        print(f"error: {data} is not a prepared dataset (no trainA/ and trainB/): run `simpsonize prepare` first.")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        info = json.loads((data / "dataset.json").read_text()) if (data / "dataset.json").exists() else {}
        eyes_framing(info.get("framing"))
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    started, cpu_started = time.time(), time.process_time()
    torch.manual_seed(0)
    locator = EyeLocator(LocatorConfig(size=args.size))
    sets = fitting_sets(data, args.size, Path(args.weights), args.per_kind)
    fitting, held = split(sets)
    history = fit(locator, fitting, epochs=args.epochs)
    report = {
        "fitted_on": {s.kind: len(s.images) for s in fitting},
        "finder_eyes": {s.kind: sum(len(c) for c in s.centres) for s in fitting},
        "loss_by_epoch": [round(v, 4) for v in history],
        "held_out": [agreement(locator, s) for s in held],
        "weights": str(args.weights),
        "cpu_minutes": round((time.process_time() - cpu_started) / 60, 2),
        "minutes": round((time.time() - started) / 60, 2),
    }
    sha = save_locator(locator, data / LOCATOR_FILE, report)
    print(json.dumps(report, indent=2))
    print(f"wrote {data / LOCATOR_FILE} (sha256 {sha[:12]})")
    return 0
