"""The one functional core: photo in, Simpsons face out. The CLI, the RQ job and the tests all call it."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from simpsonize.model.composite import FaceSelection, composite
from simpsonize.model.detection import detect_faces, find_faces, get_detector
from simpsonize.model.device import detector_device_for, pick_device
from simpsonize.model.errors import SimpsonizeError
from simpsonize.model.face import FaceCrop, Framing, align_crop
from simpsonize.model.imaging import ImageSource, to_images, to_tensor
from simpsonize.model.weights import DEFAULT_WEIGHTS, load_generator

MIN_OUTPUT_SIZE = 256
PRECISIONS = ("fp32", "bf16", "auto")
# bf16 serves only a generator whose bf16 output stays this close to its fp32 output (PSNR in dB, on a fixed input,
# checked once when the Simpsonizer is built): 40 dB is an RMS error of 1 % of the range, under 3 of 255 levels.
BF16_MIN_PSNR = 40.0
MAX_GENERATOR_BATCH = 64  # crops per generator call; more are run in chunks

log = logging.getLogger("simpsonize.pipeline")


@dataclass(frozen=True)
class DrawnFace:
    """One face of a photo: the aligned crop that was translated and its drawing."""

    image: Image.Image  # the Simpsonized face, RGB, ``output_size`` square
    face_crop: Image.Image  # the aligned real face that was translated, same size
    crop: FaceCrop  # detection and alignment details (box, landmarks, angle)


@dataclass(frozen=True)
class SimpsonizeResult:
    """A photo's outcome. ``image``, ``face_crop`` and ``crop`` are the largest face's (what a single-face client
    has always read); ``faces`` holds every face drawn, largest first, and ``composite`` the photo with their drawn
    heads pasted back (None when the Simpsonizer was built with ``composite=False``)."""

    image: Image.Image  # the largest face, Simpsonized, RGB, ``output_size`` square
    face_crop: Image.Image  # the aligned real face that was translated, same size
    crop: FaceCrop  # detection and alignment details (box, landmarks, angle, other faces)
    timings: dict[str, float]  # seconds: detect, generate, composite, total
    faces: tuple[DrawnFace, ...] = ()
    composite: Image.Image | None = None

    @property
    def face_count(self) -> int:
        return max(1, len(self.faces))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixels)."""
        summary = {
            "face": self.crop.to_dict(),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "size": list(self.image.size),
            "face_count": self.face_count,
            "faces_found": 1 + len(self.crop.other_faces),
            "faces": [{"box": f.crop.face.to_dict()["box"], "angle": round(f.crop.angle, 2)} for f in self.faces],
        }
        if self.composite is not None:
            summary["composite_size"] = list(self.composite.size)
        return summary


class Simpsonizer:
    """Loads the B->A (real -> Simpsons) generator once; each call detects, crops and translates.

    ``num_threads`` bounds torch's CPU threads (set it to cores / worker processes when several run).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | None = None,
        output_size: int | None = None,
        num_threads: int | None = None,
        precision: str = "fp32",
        faces: FaceSelection = FaceSelection(),
        composite: bool = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise SimpsonizeError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
        self.device = pick_device(device)
        self.selection = faces
        self.make_composite = composite
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, num_threads or len(os.sched_getaffinity(0))))
        self.weights_path = Path(weights) if weights else DEFAULT_WEIGHTS
        self.generator, self.metadata = load_generator(self.weights_path, device=self.device)
        self.input_size = int(self.metadata.get("input_size", 256))
        # Crop as the training data was cropped (older weights carry no framing: the default one trained them).
        self.framing = Framing.from_dict(self.metadata.get("framing"))
        self.output_size = max(output_size or self.input_size, MIN_OUTPUT_SIZE)
        self.detector_device = detector_device_for(self.device)
        get_detector(self.detector_device)  # built once per process, here rather than on the first photo
        if self.device.type == "cuda":
            # Fixed crop size: cuDNN picks its fastest kernels once per batch shape (``_padded`` keeps them few), and
            # channels_last is the layout its bf16 convolutions want.
            torch.backends.cudnn.benchmark = True
            self.generator = self.generator.to(memory_format=torch.channels_last)
        # The generator's precision: fp32, or bf16 autocast where it stays within BF16_MIN_PSNR of fp32 ("auto": bf16
        # is tried on CUDA only; on a CPU without AMX it is slower). MTCNN always runs in fp32: its landmarks place
        # the crop.
        self.bf16_psnr: float | None = None
        self.precision = "fp32"
        if precision == "bf16" or (precision == "auto" and self.device.type == "cuda"):
            self.bf16_psnr = bf16_psnr(self.generator, self.input_size, self.device)
            if self.bf16_psnr >= BF16_MIN_PSNR:
                self.precision = "bf16"
            else:
                log.warning(
                    "bf16 output is %.1f dB from fp32 (< %.0f dB): the generator runs in fp32.",
                    self.bf16_psnr,
                    BF16_MIN_PSNR,
                )

    def warm_up(self, batch_size: int = 1) -> None:
        """One detection and a generator pass per batch shape up to ``batch_size`` on a blank image, so the first
        real photos are not the slow ones."""
        blank = Image.new("RGB", (self.input_size, self.input_size), (128, 128, 128))
        detect_faces(blank, device=self.detector_device)
        sizes = {1, self._padded(min(batch_size, MAX_GENERATOR_BATCH))}
        if self.device.type == "cuda":
            sizes |= {2**k for k in range(int(math.log2(max(sizes))) + 1)}
        for n in sorted(sizes):
            self.translate([blank] * n)

    def __call__(self, image: ImageSource) -> SimpsonizeResult:
        return self.simpsonize(image)

    def simpsonize(self, image: ImageSource) -> SimpsonizeResult:
        """One photo. Raises ``NoFaceFound`` / ``UnreadableImage`` with a user-facing sentence."""
        result = self.simpsonize_many([image])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def simpsonize_many(self, images: list[ImageSource]) -> list[SimpsonizeResult | SimpsonizeError]:
        """Several photos at once: MTCNN batched over the photos of one size, one generator pass over all the faces
        of all the photos (those ``self.selection`` picks), then each photo's composite.

        A photo the model rejects (unreadable, no face) yields its ``SimpsonizeError`` in its slot; the others are
        unaffected. Anything else (a bug, out of memory) raises for the whole call: the worker then runs the photos
        one by one, so that only the photo that causes it fails.
        """
        found, detect_times = find_faces(images, device=self.detector_device)
        photos: list[tuple[Image.Image, list[FaceCrop]] | SimpsonizeError] = []
        for i, item in enumerate(found):
            if isinstance(item, SimpsonizeError):
                photos.append(item)
                continue
            started = time.perf_counter()
            image, faces = item
            picked = self.selection.pick(faces)
            crops = [
                align_crop(
                    image,
                    face,
                    self.input_size,
                    other_faces=tuple(f for f in faces if f is not face),
                    framing=self.framing,
                )
                for face in picked
            ]
            photos.append((image, crops))
            detect_times[i] += time.perf_counter() - started

        all_crops = [c for item in photos if not isinstance(item, SimpsonizeError) for c in item[1]]
        started = time.perf_counter()
        translated = self.translate([c.image for c in all_crops]) if all_crops else []
        generate_each = (time.perf_counter() - started) / max(1, len(all_crops))  # per face

        results: list[SimpsonizeResult | SimpsonizeError] = []
        outputs = iter(translated)
        for item, detect_time in zip(photos, detect_times):
            if isinstance(item, SimpsonizeError):
                results.append(item)
                continue
            image, crops = item
            drawn = []
            for crop in crops:
                face_crop = crop.image
                if face_crop.size[0] != self.output_size:
                    face_crop = face_crop.resize((self.output_size, self.output_size), Image.LANCZOS)
                drawn.append(DrawnFace(image=next(outputs), face_crop=face_crop, crop=crop))
            started = time.perf_counter()
            pasted = composite(image, [(d.image, d.crop) for d in drawn]) if self.make_composite else None
            composite_time = time.perf_counter() - started
            generate_time = generate_each * len(drawn)
            timings = {
                "detect": detect_time,
                "generate": generate_time,
                "composite": composite_time,
                "total": detect_time + generate_time + composite_time,
            }
            first = drawn[0]
            results.append(
                SimpsonizeResult(
                    image=first.image,
                    face_crop=first.face_crop,
                    crop=first.crop,
                    timings=timings,
                    faces=tuple(drawn),
                    composite=pasted,
                )
            )
        return results

    simpsonize_batch = simpsonize_many  # the earlier name

    @torch.inference_mode()
    def translate(self, faces: list[Image.Image]) -> list[Image.Image]:
        """Aligned face crops (``input_size`` square) -> Simpsonized faces at ``output_size``.

        In chunks of at most ``MAX_GENERATOR_BATCH``; on CUDA each chunk is padded to a power of two (the generator
        treats every crop on its own, instance norm included, so padding changes no output).
        """
        out: list[Image.Image] = []
        for first in range(0, len(faces), MAX_GENERATOR_BATCH):
            chunk = faces[first : first + MAX_GENERATOR_BATCH]
            batch = to_tensor(chunk)
            if (padded := self._padded(len(chunk))) > len(chunk):
                batch = torch.cat([batch, batch[-1:].expand(padded - len(chunk), -1, -1, -1)])
            out += to_images(self.generate(batch.to(self.device))[: len(chunk)])
        if self.output_size != self.input_size:
            out = [im.resize((self.output_size, self.output_size), Image.LANCZOS) for im in out]
        return out

    def generate(self, batch: torch.Tensor) -> torch.Tensor:
        """The generator on a batch in [-1, 1], at this Simpsonizer's precision; fp32 out."""
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"),
        ):
            return self.generator(batch).float()

    def _padded(self, n: int) -> int:
        return 2 ** math.ceil(math.log2(n)) if self.device.type == "cuda" and n > 1 else n


def psnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    """PSNR in dB of ``other`` against ``reference``, both in [-1, 1] (the generator's range): inf when equal."""
    mse = float(((reference.detach().float() - other.detach().float()) / 2).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def check_input(size: int, count: int = 2) -> torch.Tensor:
    """The fixed input of the bf16 check: smooth random shapes plus fine detail, seeded, in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, 8, 8, generator=g) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.randn(count, 3, size, size, generator=g)).clamp(-1, 1)


@torch.inference_mode()
def bf16_psnr(generator: torch.nn.Module, size: int, device: torch.device) -> float:
    """How close the generator's bf16-autocast output stays to its fp32 output on ``check_input`` (dB)."""
    x = check_input(size).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    reference = generator(x).float()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        low = generator(x).float()
    return psnr(reference, low)
