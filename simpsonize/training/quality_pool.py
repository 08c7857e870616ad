"""The test pool every model is measured on (`simpsonize test`): the real test photos (``testB``), as many Simpsons
reference faces and as many other Simpsons faces for the sanity rows, loaded alike and cached; ``recrop`` crops the
same photos again at another framing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from simpsonize.training.c2st import ZOOM_KEEP
from simpsonize.training.data import load_fixed
from simpsonize.training.eyes import eyes_share
from simpsonize.training.prepare import list_images

POOL_SIZE = 300  # translated test faces against as many Simpsons faces
GALLERY_FACES = 16  # the first test photos of the pool, shown for every model in the galleries


@dataclass
class QualityPool:
    """What every model is measured against: the same faces, in the same order, every time.

    Every set goes through the same resampling: loaded at the model's size (as training and serving feed it), then
    the C2ST's own downscale. A first version loaded the Simpsons reference straight at 64 px and everything else
    at full size: Simpsons against other Simpsons then scored 0.66, because the classifier saw the resampling.
    """

    reference_files: list[Path]  # Simpsons faces (trainA, seeded draw)
    other_files: list[Path]  # as many other Simpsons faces (for the sanity rows)
    photo_files: list[Path]  # the real test pool (testB)
    data: Path
    framing: dict | None = None  # how the dataset cropped them

    def __post_init__(self) -> None:
        self._cache: dict = {}

    def _load(self, name: str, files: list[Path], size: int) -> torch.Tensor:
        if (name, size) not in self._cache:
            self._cache[(name, size)] = load_fixed(files, size)
        return self._cache[(name, size)]

    def photos(self, size: int) -> torch.Tensor:
        return self._load("photos", self.photo_files, size)

    def photos_framed(self, framing: dict | None, size: int) -> torch.Tensor:
        """The same test photos, cropped from their sources at another framing (a model trained on another
        framing is measured on the crop it was trained for, of the very same photos)."""
        from simpsonize.model.face import Framing

        wanted = Framing.from_dict(framing)
        if wanted == Framing.from_dict(self.framing):
            return self.photos(size)
        key = ("framed", wanted, size)
        if key not in self._cache:
            self._cache[key] = recrop(self.data, self.photo_files, wanted, size)
        return self._cache[key]

    def reference(self, size: int) -> torch.Tensor:
        return self._load("reference", self.reference_files, size)

    def eyes_show(self, size: int) -> float:
        """The eyes row's show figure: the share of the reference faces with an eye with a pupil, at ``size``."""
        key = ("eyes_show", size)
        if key not in self._cache:
            self._cache[key] = round(eyes_share(self.reference(size)), 3)
        return self._cache[key]

    def others(self, size: int) -> torch.Tensor:
        return self._load("others", self.other_files, size)

    def others_zoomed(self, size: int, keep: float = ZOOM_KEEP) -> torch.Tensor:
        """The other Simpsons faces framed tighter, cropped from the stored files: as sharp as the reference at every
        size. Zooming the ``size``-pixel images instead was an upscale, and at 64 px the classifier saw its blur
        (0.98 against 0.73-0.75 at 96 and 128 px)."""
        key = ("others_zoomed", keep, size)
        if key not in self._cache:
            self._cache[key] = load_fixed(self.other_files, size, keep=keep)
        return self._cache[key]


def load_pool(data: Path, n: int = POOL_SIZE, seed: int = 0) -> QualityPool:
    photo_files = list_images(data / "testB")[:n]
    if not photo_files:
        raise FileNotFoundError(f"{data / 'testB'} holds no images: run `simpsonize prepare` first.")
    simpsons = list_images(data / "trainA")
    order = torch.randperm(len(simpsons), generator=torch.Generator().manual_seed(seed)).tolist()
    n_ref = min(len(photo_files), len(simpsons) // 2)
    info = json.loads((data / "dataset.json").read_text()) if (data / "dataset.json").exists() else {}
    return QualityPool(
        [simpsons[i] for i in order[:n_ref]],
        [simpsons[i] for i in order[n_ref : 2 * n_ref]],
        photo_files,
        data,
        info.get("framing"),
    )


def recrop(data: Path, files: list[Path], framing, size: int) -> torch.Tensor:
    """Crop the source photos of ``files`` (testB images) again at ``framing``, from `prepare`'s detections."""
    from simpsonize.model.detection import Face
    from simpsonize.model.face import align_crop
    from simpsonize.model.imaging import open_image, to_tensor

    info = json.loads((data / "dataset.json").read_text())
    faces = json.loads((data / "faces.json").read_text())
    sources = info.get("test_sources", {}).get("testB")
    if not sources:  # datasets prepared before test_sources was recorded: match by file stem
        by_stem = {Path(k).stem: k for k, v in faces.items() if v}
        sources = [by_stem[f.stem.split("_", 1)[1]] for f in files]
    images = []
    for source in sources[: len(files)]:
        found = faces[str(source)]
        face = Face(tuple(found["box"]), found["confidence"], tuple(tuple(p) for p in found["landmarks"]))
        images.append(align_crop(open_image(Path(source)), face, size, framing=framing).image)
    return to_tensor(images)
