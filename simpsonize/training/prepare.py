"""`simpsonize prepare`: photo folders -> a CycleGAN dataset (trainA/ trainB/ testA/ testB/) + preview.png.

A = Simpsons faces (used as they are, squared and resized), B = real faces, cropped with the serving
crop (``simpsonize.model.face.crop_face``) so that train and serve frame faces identically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from simpsonize.model.errors import NoFaceFound, SimpsonizeError
from simpsonize.model.framing import CROP_SCALE, EYE_LINE, FRAMING_MODES, Framing
from simpsonize.model.imaging import IMAGE_SUFFIXES, open_image

SPLITS = ("trainA", "trainB", "testA", "testB")


class CropOutsidePhoto(SimpsonizeError):
    """The framing asks for more of the head than the photo shows."""


@dataclass
class DomainReport:
    found: int = 0
    duplicates: int = 0
    unreadable: int = 0
    no_face: int = 0
    outside: int = 0  # crop ran past the photo's edge more than --max-outside allows
    kept: list[Path] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--simpsons", type=Path, required=True, help="folder of Simpsons face images (domain A)")
    parser.add_argument(
        "--real",
        type=Path,
        action="append",
        required=True,
        help="folder of real photos (domain B); repeat for several folders",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--size", type=int, default=256, choices=(64, 128, 256), help="side of the stored squares")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of each domain held out for test")
    parser.add_argument("--test-max", type=int, default=25, help="at most this many test images per domain")
    parser.add_argument(
        "--test-max-real",
        type=int,
        default=None,
        help="at most this many real test images (default: --test-max); the real test split is "
        "the evaluation pool of `simpsonize test`, so it wants a few hundred",
    )
    parser.add_argument(
        "--framing",
        choices=FRAMING_MODES,
        default="eyes",
        help="eyes: a fixed multiple of the eye and mouth distances (--framing-scale, --eye-line); "
        "head: the whole head, hair to chin, from MediaPipe's face mesh and person mask (tight "
        "source crops such as UTKFace's then run far past their edges: see --max-outside)",
    )
    parser.add_argument(
        "--framing-scale",
        type=float,
        default=CROP_SCALE,
        help="crop side / mean(eye distance, eye-to-mouth distance); larger shows more head and hair",
    )
    parser.add_argument("--eye-line", type=float, default=EYE_LINE, help="height of the eyes in the crop (0-1)")
    parser.add_argument(
        "--max-outside",
        type=float,
        default=1.0,
        help="skip real photos whose crop runs past the photo's edge by more than this share of the "
        "crop (tight source crops get flat borders at loose framings)",
    )
    parser.add_argument(
        "--faces-from",
        type=Path,
        default=None,
        help="faces.json of an earlier prepare: reuse its detections instead of running MTCNN "
        "(a new framing of the same photos costs seconds, not minutes)",
    )
    parser.add_argument(
        "--hold-out-from",
        type=Path,
        default=None,
        metavar="DATA",
        help="hold out exactly the photos that an earlier prepare held out (its DATA/dataset.json), "
        "and train on all others: a dataset with more photos keeps the same test pool, so models "
        "trained on either are scored against the same faces",
    )
    parser.add_argument("--limit", type=int, default=None, help="use at most this many photos per domain (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for face detection")


def run(args: argparse.Namespace) -> int:
    for folder in [args.simpsons, *args.real]:
        if not folder.is_dir():
            print(f"error: {folder} is not a folder.")
            return 2
    if not 0 <= args.test_fraction < 1:
        print("error: --test-fraction must be in [0, 1).")
        return 2
    started = time.time()
    if args.faces_from is not None and not args.faces_from.is_file():
        print(f"error: {args.faces_from} does not exist.")
        return 2
    held_out = None
    if args.hold_out_from is not None:
        info = args.hold_out_from / "dataset.json"
        if not info.is_file() or "test_sources" not in json.loads(info.read_text()):
            print(f"error: {info} is not the dataset.json of a prepare that recorded its test photos.")
            return 2
        held_out = json.loads(info.read_text())["test_sources"]
    summary = prepare(
        args.simpsons,
        args.real,
        args.out,
        size=args.size,
        test_fraction=args.test_fraction,
        test_max=args.test_max,
        test_max_real=args.test_max_real,
        limit=args.limit,
        seed=args.seed,
        device=args.device,
        framing=Framing(args.framing_scale, args.eye_line, mode=args.framing),
        faces_from=args.faces_from,
        max_outside=args.max_outside,
        held_out=held_out,
    )
    counts = summary["counts"]
    print(
        f"prepared {args.out}: trainA {counts['trainA']}, trainB {counts['trainB']}, testA {counts['testA']}, "
        f"testB {counts['testB']}; skipped {summary['real']['no_face']} real photos without a face, "
        f"{summary['simpsons']['duplicates'] + summary['real']['duplicates']} duplicates, "
        f"{summary['simpsons']['unreadable'] + summary['real']['unreadable']} unreadable "
        f"({time.time() - started:.0f} s)"
    )
    if counts["trainA"] == 0 or counts["trainB"] == 0:
        print("error: a domain has no training images.")
        return 1
    return 0


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_count(n: int, fraction: float, maximum: int) -> int:
    """The reference recipe's rule: ``fraction`` of the domain, at most ``maximum``, and never all of it."""
    return max(0, min(round(n * fraction), maximum, n - 1))


def prepare(
    simpsons: Path,
    real: list[Path],
    out: Path,
    *,
    size: int = 256,
    test_fraction: float = 0.1,
    test_max: int = 25,
    test_max_real: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    framing: Framing = Framing(),
    faces_from: Path | None = None,
    max_outside: float = 1.0,
    held_out: dict[str, list[str]] | None = None,
) -> dict:
    from simpsonize.model.detection import Face, detect_faces
    from simpsonize.model.face import align_crop

    # Detections keyed by source path: a later prepare with another framing reuses them (MTCNN is the slow part).
    known_faces: dict[str, dict | None] = json.loads(faces_from.read_text()) if faces_from else {}
    faces_seen: dict[str, dict | None] = {}

    def crop_real(path: Path) -> Image.Image:
        key = str(path.resolve())
        image = open_image(path)
        if key in known_faces:
            found = known_faces[key]
            face = (
                Face(
                    box=tuple(found["box"]),
                    confidence=found["confidence"],
                    landmarks=tuple(tuple(p) for p in found["landmarks"]),
                )
                if found
                else None
            )
        else:
            faces = detect_faces(image, device=device)
            face = faces[0] if faces else None
        faces_seen[key] = (
            None
            if face is None
            else {"box": list(face.box), "confidence": face.confidence, "landmarks": [list(p) for p in face.landmarks]}
        )
        if face is None:
            raise NoFaceFound()
        crop = align_crop(image, face, size, framing=framing)
        if crop.outside > max_outside:
            raise CropOutsidePhoto()
        return crop.image

    rng = random.Random(seed)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        for stale in (out / split).iterdir():
            stale.unlink()

    def sources(folders: list[Path]) -> list[Path]:
        paths = [p for folder in folders for p in list_images(folder)]
        rng.shuffle(paths)
        return paths[:limit] if limit else paths

    reports = {}
    origin: dict[Path, Path] = {}
    test_sources: dict[
        str, list[str]
    ] = {}  # test split -> source photos, so `test` can re-crop them at another framing
    for domain, folders, is_real in (("A", [simpsons], False), ("B", real, True)):
        paths = sources(folders)
        report = DomainReport(found=len(paths))
        seen: set[str] = set()
        written = 0
        staging = out / f".{domain}"
        staging.mkdir(exist_ok=True)
        for path in tqdm(
            paths,
            desc=f"domain {domain} ({'real, cropping faces' if is_real else 'Simpsons'})",
            unit="img",
            leave=False,
        ):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                report.duplicates += 1
                continue
            seen.add(digest)
            try:
                image = crop_real(path) if is_real else square(open_image(path), size)
            except SimpsonizeError as exc:
                if isinstance(exc, NoFaceFound):
                    report.no_face += 1
                elif isinstance(exc, CropOutsidePhoto):
                    report.outside += 1
                else:
                    report.unreadable += 1
                continue
            target = staging / f"{written:06d}_{path.stem}.png"
            image.save(target)
            origin[target] = path.resolve()
            report.kept.append(target)
            written += 1
        # The split is drawn after filtering so that test sizes follow the rule on usable images. The test images
        # are the *last* of the seeded shuffle, so a run prepared with --limit never trained on them either.
        if held_out is not None:
            # The earlier dataset's test photos, wherever the new shuffle put them; everything else trains.
            listed = set(held_out.get(f"test{domain}", []))
            is_test = [str(origin[staged]) in listed for staged in report.kept]
        else:
            cap = test_max_real if (is_real and test_max_real is not None) else test_max
            n_test = split_count(len(report.kept), test_fraction, cap)
            is_test = [i >= len(report.kept) - n_test for i in range(len(report.kept))]
        test_sources[f"test{domain}"] = [str(origin[s]) for s, test in zip(report.kept, is_test) if test]
        for staged, test in zip(report.kept, is_test):
            split = f"test{domain}" if test else f"train{domain}"
            staged.rename(out / split / staged.name)
        staging.rmdir()
        reports[domain] = report

    counts = {split: len(list((out / split).iterdir())) for split in SPLITS}
    summary = {
        "counts": counts,
        "size": size,
        "seed": seed,
        "test_fraction": test_fraction,
        "test_max": test_max,
        "sources": {"A": [str(simpsons)], "B": [str(p) for p in real]},
        "simpsons": _report_dict(reports["A"]),
        "real": _report_dict(reports["B"]),
        "crop": "simpsonize.model.face.align_crop",
        "framing": framing.to_dict(),
        "max_outside": max_outside,
        "held_out_like": held_out is not None,
        "test_sources": test_sources,
    }
    (out / "faces.json").write_text(json.dumps(faces_seen))
    (out / "dataset.json").write_text(json.dumps(summary, indent=2))
    write_preview(out, counts, rng)
    return summary


def square(image: Image.Image, size: int) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def write_preview(out: Path, counts: dict[str, int], rng: random.Random, per_row: int = 8, thumb: int = 64) -> Path:
    """One row of random thumbnails per split, titled with the split's image count."""
    title_h = 18
    sheet = Image.new("RGB", (per_row * thumb, len(SPLITS) * (thumb + title_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, split in enumerate(SPLITS):
        y = row * (thumb + title_h)
        draw.text((4, y + 3), f"{split}: {counts[split]} images", fill="black")
        files = sorted((out / split).iterdir())
        for col, path in enumerate(rng.sample(files, min(per_row, len(files)))):
            with Image.open(path) as im:
                sheet.paste(im.convert("RGB").resize((thumb, thumb)), (col * thumb, y + title_h))
    path = out / "preview.png"
    sheet.save(path)
    return path


def _report_dict(report: DomainReport) -> dict:
    return {
        "found": report.found,
        "duplicates": report.duplicates,
        "unreadable": report.unreadable,
        "no_face": report.no_face,
        "outside": report.outside,
        "kept": len(report.kept),
    }
