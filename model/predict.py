"""`simpsonize predict INPUT... --output PATH`: the Simpsonizer on files, for people and scripts.

Exit codes: 0 all written; 1 some inputs failed (each named, the others still written); 2 nothing could run
(bad arguments, missing or broken weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from model.errors import SimpsonizeError, WeightsError
from model.imaging import IMAGE_SUFFIXES
PROGRESS_THRESHOLD = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="photo files or folders of photos")
    parser.add_argument("--output", "-o", type=Path, required=True,
                        help="output PNG for one input; a folder for several inputs or a folder input")
    parser.add_argument("--weights", type=Path, default=None, help="generator weights (default: weights/ shipped)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--side-by-side", action="store_true", help="write the face crop and the result together")


def expand_inputs(inputs: list[Path]) -> tuple[list[Path], bool]:
    """Files to process, and whether the output must be a folder."""
    files: list[Path] = []
    many = len(inputs) > 1
    for path in inputs:
        if path.is_dir():
            many = True
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)  # a missing file is reported per input, not as a crash
    return files, many


def run(args: argparse.Namespace) -> int:
    files, many = expand_inputs(args.inputs)
    if not files:
        print("error: no images found in the given inputs.", file=sys.stderr)
        return 2
    if many and args.output.suffix.lower() == ".png" and not args.output.is_dir():
        print(f"error: several inputs need --output to be a folder, not {args.output}.", file=sys.stderr)
        return 2
    if not many and args.output.is_dir():
        args.output = args.output / f"{files[0].stem}.png"

    from model.pipeline import Simpsonizer

    try:
        simpsonizer = Simpsonizer(weights=args.weights, device=None if args.device == "auto" else args.device)
    except WeightsError as exc:
        hint = "" if args.weights else " Train and export a model (see README) or pass --weights FILE."
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    except SimpsonizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if many:
        args.output.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[Path, str]] = []
    written = 0
    started = time.perf_counter()
    iterator = files
    if len(files) > PROGRESS_THRESHOLD:
        from tqdm import tqdm

        iterator = tqdm(files, desc="simpsonize", unit="photo")
    for path in iterator:
        target = args.output / f"{path.stem}.png" if many else args.output
        try:
            result = simpsonizer.simpsonize(path)
        except SimpsonizeError as exc:
            failures.append((path, str(exc)))
            continue
        image = result.image
        if args.side_by_side:
            from PIL import Image

            pair = Image.new("RGB", (image.width * 2, image.height))
            pair.paste(result.face_crop, (0, 0))
            pair.paste(image, (image.width, 0))
            image = pair
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, format="PNG")
        written += 1
        if not many:
            t = result.timings
            print(f"wrote {target} (face found in {t['detect']:.2f} s, generated in {t['generate']:.2f} s "
                  f"on {simpsonizer.device.type})")
    for path, reason in failures:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    if many or failures:
        print(f"simpsonized {written} of {len(files)} photos in {time.perf_counter() - started:.1f} s"
              f"{f'; {len(failures)} failed' if failures else ''} -> {args.output}")
    return 1 if failures else 0
