"""`simpsonize predict INPUT... --output PATH`: the Simpsonizer on files, for people and scripts.

Exit codes: 0 all written; 1 some inputs failed (each named, the others still written); 2 nothing could run
(bad arguments, missing or broken weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from simpsonize.model.errors import SimpsonizeError, WeightsError
from simpsonize.model.imaging import IMAGE_SUFFIXES

PROGRESS_THRESHOLD = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="photo files or folders of photos")
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        help="output PNG for one input; a folder for several inputs or a folder input",
    )
    parser.add_argument("--weights", type=Path, default=None, help="generator weights (default: weights/ shipped)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--side-by-side", action="store_true", help="write the face crop and the result together")
    parser.add_argument(
        "--composite",
        action="store_true",
        help="write the whole photo with every drawn head pasted back; with several faces, each "
        "face's drawing goes beside it as NAME_face1.png, NAME_face2.png, ...",
    )
    parser.add_argument(
        "--min-face",
        type=float,
        default=64.0,
        metavar="PX",
        help="draw faces whose box is at least PX pixels (the largest is always drawn; default 64)",
    )
    parser.add_argument("--max-faces", type=int, default=8, metavar="N", help="draw at most N faces (default 8)")


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


def drawn(face, side_by_side: bool):
    """A face's drawing, or with ``side_by_side`` its crop and drawing together."""
    if not side_by_side:
        return face.image
    from PIL import Image

    pair = Image.new("RGB", (face.image.width * 2, face.image.height))
    pair.paste(face.face_crop, (0, 0))
    pair.paste(face.image, (face.image.width, 0))
    return pair


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

    from simpsonize.model.composite import FaceSelection
    from simpsonize.model.pipeline import Simpsonizer

    try:
        # Without --composite only the largest face is drawn, as before (and no time goes on the others).
        faces = FaceSelection(min_face=args.min_face, max_faces=args.max_faces if args.composite else 1)
        simpsonizer = Simpsonizer(
            weights=args.weights,
            device=None if args.device == "auto" else args.device,
            faces=faces,
            composite=args.composite,
        )
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
        target.parent.mkdir(parents=True, exist_ok=True)
        if args.composite:
            result.composite.save(target, format="PNG")
            if len(result.faces) > 1:
                for n, face in enumerate(result.faces, start=1):
                    drawn(face, args.side_by_side).save(target.with_name(f"{target.stem}_face{n}.png"), format="PNG")
        else:
            drawn(result, args.side_by_side).save(target, format="PNG")
        written += 1
        if not many:
            t = result.timings
            faces_text = f"{len(result.faces)} faces" if len(result.faces) > 1 else "face"
            print(
                f"wrote {target} ({faces_text} found in {t['detect']:.2f} s, generated in {t['generate']:.2f} s "
                f"on {simpsonizer.device.type})"
            )
    for path, reason in failures:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    if many or failures:
        print(
            f"simpsonized {written} of {len(files)} photos in {time.perf_counter() - started:.1f} s"
            f"{f'; {len(failures)} failed' if failures else ''} -> {args.output}"
        )
    return 1 if failures else 0
