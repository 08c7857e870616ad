"""Encode time and bytes of one 256x256 result as PNG (compress_level 1..6), WebP and JPEG.

    simpsonize bench encode [--weights W] [--crop-only] [--repeat 30]

The worker encodes two PNGs per job (the result, which is the download and must stay lossless, and the face crop);
this prints what each format would cost, so the choice is measured. The image is a real result: the shipped model on
skimage's astronaut photo (or its face crop with --crop-only, which needs no generator run).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

FORMATS: list[tuple[str, str, dict]] = [
    *[(f"PNG level {level}", "PNG", {"compress_level": level}) for level in range(1, 7)],
    ("PNG level 6 (Pillow default)", "PNG", {}),
    ("WebP lossless", "WEBP", {"lossless": True, "method": 0}),
    ("WebP q90", "WEBP", {"quality": 90, "method": 4}),
    ("JPEG q90", "JPEG", {"quality": 90}),
]


def sample_image(weights: str | None, crop_only: bool) -> Image.Image:
    from skimage import data

    from simpsonize.model.face import crop_face

    photo = Image.fromarray(data.astronaut())
    if crop_only:
        return crop_face(photo, size=256).image
    from simpsonize.model.pipeline import Simpsonizer

    return Simpsonizer(weights=weights, device="cpu", num_threads=1)(photo).image


def measure(image: Image.Image, repeat: int) -> list[tuple[str, float, int, bool]]:
    rows = []
    for name, fmt, options in FORMATS:
        times, data = [], b""
        for _ in range(repeat):
            buffer = io.BytesIO()
            started = time.perf_counter()
            image.save(buffer, format=fmt, **options)
            times.append(time.perf_counter() - started)
            data = buffer.getvalue()
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        lossless = bool(np.array_equal(decoded, np.asarray(image.convert("RGB"))))
        rows.append((name, sorted(times)[len(times) // 2], len(data), lossless))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="Generator weights (default: the shipped ones).")
    parser.add_argument("--crop-only", action="store_true", help="Encode the face crop instead of a model result.")
    parser.add_argument("--repeat", type=int, default=30, help="Encodes per format; the median is shown.")


def run(args: argparse.Namespace) -> int:
    image = sample_image(args.weights, args.crop_only)
    print(f"{image.size[0]}x{image.size[1]} {'face crop' if args.crop_only else 'result'}, median of {args.repeat}")
    print(f"| {'format':<28} | encode ms | bytes | lossless |")
    print(f"| {'-' * 28} | --------: | ----: | -------- |")
    for name, seconds, size, lossless in measure(image, args.repeat):
        print(f"| {name:<28} | {seconds * 1000:9.2f} | {size:5d} | {'yes' if lossless else 'no':<8} |")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
