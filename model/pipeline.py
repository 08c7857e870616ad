"""The one functional core: photo in, Simpsons face out. The CLI, the RQ job and the tests all call it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from model.errors import SimpsonizeError
from model.face import FaceCrop, Framing, crop_face, detect_faces, get_detector
from model.imaging import ImageSource, to_images, to_tensor
from model.weights import DEFAULT_WEIGHTS, load_generator

MIN_OUTPUT_SIZE = 256


@dataclass(frozen=True)
class SimpsonizeResult:
    image: Image.Image  # the Simpsonized face, RGB, ``output_size`` square
    face_crop: Image.Image  # the aligned real face that was translated, same size
    crop: FaceCrop  # detection and alignment details (box, landmarks, angle, other faces)
    timings: dict[str, float]  # seconds: detect, generate, total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixels)."""
        return {"face": self.crop.to_dict(), "timings": {k: round(v, 4) for k, v in self.timings.items()},
                "size": list(self.image.size)}


def pick_device(requested: str | None = None) -> torch.device:
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SimpsonizeError("CUDA was requested but no CUDA GPU is available; use --device cpu.")
    return device


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
    ) -> None:
        self.device = pick_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, num_threads or len(os.sched_getaffinity(0))))
        self.weights_path = Path(weights) if weights else DEFAULT_WEIGHTS
        self.generator, self.metadata = load_generator(self.weights_path, device=self.device)
        self.input_size = int(self.metadata.get("input_size", 256))
        # Crop as the training data was cropped (older weights carry no framing: the default one trained them).
        self.framing = Framing.from_dict(self.metadata.get("framing"))
        self.output_size = max(output_size or self.input_size, MIN_OUTPUT_SIZE)
        self.detector_device = "cuda" if self.device.type == "cuda" else "cpu"
        get_detector(self.detector_device)  # built once per process, here rather than on the first photo

    def warm_up(self) -> None:
        """One detection and one generator pass on a blank image, so the first real photo is not the slow one."""
        blank = Image.new("RGB", (self.input_size, self.input_size), (128, 128, 128))
        detect_faces(blank, device=self.detector_device)
        self.translate([blank])

    def __call__(self, image: ImageSource) -> SimpsonizeResult:
        return self.simpsonize(image)

    def simpsonize(self, image: ImageSource) -> SimpsonizeResult:
        """One photo. Raises ``NoFaceFound`` / ``UnreadableImage`` with a user-facing sentence."""
        result = self.simpsonize_batch([image])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def simpsonize_batch(self, images: list[ImageSource]) -> list[SimpsonizeResult | SimpsonizeError]:
        """Several photos, one generator pass. A photo that fails yields its error in its slot."""
        crops: list[FaceCrop | SimpsonizeError] = []
        detect_times: list[float] = []
        for image in images:
            started = time.perf_counter()
            try:
                crops.append(crop_face(image, size=self.input_size, device=self.detector_device,
                                       framing=self.framing))
            except SimpsonizeError as exc:
                crops.append(exc)
            detect_times.append(time.perf_counter() - started)
        good = [c for c in crops if isinstance(c, FaceCrop)]
        started = time.perf_counter()
        translated = self.translate([c.image for c in good]) if good else []
        generate_each = (time.perf_counter() - started) / max(1, len(good))

        results: list[SimpsonizeResult | SimpsonizeError] = []
        outputs = iter(translated)
        for crop, detect_time in zip(crops, detect_times):
            if not isinstance(crop, FaceCrop):
                results.append(crop)
                continue
            face_crop = crop.image
            if face_crop.size[0] != self.output_size:
                face_crop = face_crop.resize((self.output_size, self.output_size), Image.LANCZOS)
            timings = {"detect": detect_time, "generate": generate_each, "total": detect_time + generate_each}
            results.append(SimpsonizeResult(image=next(outputs), face_crop=face_crop, crop=crop, timings=timings))
        return results

    @torch.inference_mode()
    def translate(self, faces: list[Image.Image]) -> list[Image.Image]:
        """Aligned face crops (``input_size`` square) -> Simpsonized faces at ``output_size``."""
        batch = to_tensor(faces).to(self.device)
        out = to_images(self.generator(batch))
        if self.output_size != self.input_size:
            out = [im.resize((self.output_size, self.output_size), Image.LANCZOS) for im in out]
        return out
