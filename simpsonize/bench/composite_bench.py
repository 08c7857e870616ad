"""`simpsonize bench composite`: what the composite costs, on a 12 MP photo with 1, 4 and 8 faces.

The photo (4000x3000) is built from skimage's astronaut (public domain): one big portrait for 1 face, a grid of
tiles for 4 and 8 (the other tiles are her background, faceless). It goes through the worker's path: the web
process's ``normalise`` (at most ``SIMPSONIZE_MAX_SIDE``, 1600 px: the worker never sees more), then the shipped
``Simpsonizer`` and the worker's ``encode_result`` pieces. With ``--full-size`` it also runs the library/CLI path on
the 12 MP photo itself. Each case runs in a fresh process (so its peak memory is its own), medians of ``--repeats``
after one warm-up:

- detect (decode + MTCNN + alignment), generate (all faces, one batch), composite (pasting back), and encode: the
  drawings' and crops' PNGs, the composite as JPEG q90 and as PNG (zlib level 1, the worker's), each timed alone;
- the composite's bytes as PNG (levels 1 and 6) and JPEG q90;
- the worker's peak RSS (ru_maxrss) after loading and warming up the model, and after the case: the case's own peak
  is the rise (the photos are made beforehand, in the parent process).

And a single selfie (1 face) with the composite off, to show what the composite adds to it. Figures measured on a
busy machine are for ratios within the run only.

    simpsonize bench composite [--repeats 3] [--faces 1,4,8] [--full-size] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDE = (4000, 3000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--faces", default="1,4,8", help="comma-separated face counts (1 to 12)")
    parser.add_argument("--full-size", action="store_true", help="also the library/CLI path on the 12 MP photo")
    parser.add_argument("--weights", default=None, help="generator weights (default: the shipped ones)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: one worker's share)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def photo(faces: int):
    """A 4000x3000 photo with ``faces`` faces: 1 a portrait 3000 px high; else a 4x3 grid of 1000 px tiles, the first
    ``faces`` (in a spread order) the astronaut, the rest her background without her."""
    from PIL import Image
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    background = astronaut.crop((330, 0, 512, 182)).resize((1000, 1000), Image.BICUBIC)  # shuttle and sky, no face
    canvas = Image.new("RGB", SIDE)
    for x in range(0, SIDE[0], 1000):
        for y in range(0, SIDE[1], 1000):
            canvas.paste(background, (x, y))
    if faces == 1:
        canvas.paste(astronaut.resize((3000, 3000), Image.BICUBIC), (500, 0))
        return canvas
    tile = astronaut.resize((1000, 1000), Image.BICUBIC)
    order = [0, 2, 5, 7, 8, 10, 1, 3, 4, 6, 9, 11]  # 4 faces: spread over the grid, not one row
    for cell in order[:faces]:
        canvas.paste(tile, ((cell % 4) * 1000, (cell // 4) * 1000))
    return canvas


def write_photos(counts: list[int], folder: Path) -> None:
    """For each face count, the 12 MP photo as a phone's JPEG (``N.jpg``) and as the web process hands it to the
    worker (``N_worker.jpg``: ``simpsonize.web.uploads.normalise``). Made here, not in the measured process, so that
    building them does not count in its peak memory."""
    from simpsonize.settings import Settings
    from simpsonize.web.uploads import normalise

    settings = Settings()
    for n in counts:
        buffer = io.BytesIO()
        photo(n).save(buffer, format="JPEG", quality=92)
        (folder / f"{n}.jpg").write_bytes(buffer.getvalue())
        worker = normalise(buffer.getvalue(), max_pixels=settings.max_pixels, max_side=settings.max_side)
        (folder / f"{n}_worker.jpg").write_bytes(worker.jpeg)


def child(spec: str, repeats: int, weights: str | None, threads: int) -> dict:
    """One case in this (fresh) process: ``spec`` = FACES:PATH:COMPOSITE:FOLDER (PATH worker|full, COMPOSITE 1|0)."""
    import resource

    faces_text, path, composite_text, folder = spec.split(":", 3)
    faces, with_composite = int(faces_text), composite_text == "1"
    from simpsonize.imaging import jpeg_bytes, png_bytes
    from simpsonize.model.composite import FaceSelection
    from simpsonize.model.pipeline import Simpsonizer
    from simpsonize.worker.jobs import COMPOSITE_JPEG_QUALITY, PNG_LEVEL

    model = Simpsonizer(
        weights=weights, device="cpu", num_threads=threads, faces=FaceSelection(), composite=with_composite
    )
    model.warm_up()
    source = (Path(folder) / (f"{faces}_worker.jpg" if path == "worker" else f"{faces}.jpg")).read_bytes()
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows: dict[str, list[float]] = {
        k: [] for k in ("detect", "generate", "composite", "encode_faces", "encode_jpeg", "encode_png")
    }
    sizes: dict[str, int] = {}
    drawn = 0
    for attempt in range(repeats + 1):
        result = model.simpsonize(source)
        drawn = result.face_count
        started = time.perf_counter()
        for face in result.faces:
            png_bytes(face.image, PNG_LEVEL), png_bytes(face.face_crop, PNG_LEVEL)
        encode_faces = time.perf_counter() - started
        jpeg = png = b""
        encode_jpeg = encode_png = 0.0
        if result.composite is not None:
            started = time.perf_counter()
            jpeg = jpeg_bytes(result.composite, COMPOSITE_JPEG_QUALITY)
            encode_jpeg = time.perf_counter() - started
            started = time.perf_counter()
            png = png_bytes(result.composite, PNG_LEVEL)
            encode_png = time.perf_counter() - started
            if attempt == 0:
                sizes = {
                    "jpeg_q90": len(jpeg),
                    "png_level1": len(png),
                    "png_level6": len(png_bytes(result.composite, 6)),
                    "width": result.composite.width,
                    "height": result.composite.height,
                }
        if attempt == 0:
            continue  # the warm-up
        for key, value in (
            ("detect", result.timings["detect"]),
            ("generate", result.timings["generate"]),
            ("composite", result.timings["composite"]),
            ("encode_faces", encode_faces),
            ("encode_jpeg", encode_jpeg),
            ("encode_png", encode_png),
        ):
            rows[key].append(value)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "faces": faces,
        "drawn": drawn,
        "path": path,
        "composite": with_composite,
        "seconds": {k: statistics.median(v) for k, v in rows.items()},
        "bytes": sizes,
        "rss_mb": {
            "after_model": round(baseline_kb / 1024),
            "peak": round(peak_kb / 1024),
            "case": round((peak_kb - baseline_kb) / 1024),
        },
    }


def run(args: argparse.Namespace) -> int:
    if args.child:
        print(json.dumps(child(args.child, args.repeats, args.weights, args.threads)))
        return 0
    from simpsonize.cpu import cpu_name

    counts = [int(n) for n in args.faces.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="composite-bench-"))
    write_photos(counts, folder)
    specs = [f"{n}:worker:1:{folder}" for n in counts] + [f"1:worker:0:{folder}"]
    if args.full_size:
        specs += [f"{n}:full:1:{folder}" for n in counts]
    results = []
    for spec in specs:
        command = [
            sys.executable,
            "-m",
            "simpsonize.cli",
            "bench",
            "composite",
            "--child",
            spec,
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
        ]
        if args.weights:
            command += ["--weights", args.weights]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  done {spec}", file=sys.stderr)
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()

    print(f"{cpu_name()}, {args.threads} torch thread(s), medians of {args.repeats}")
    print(
        "| photo | faces drawn | detect | generate | composite | encode: faces / composite JPEG / composite PNG "
        "| composite JPEG q90 / PNG level 1 / PNG level 6 | peak RSS (after model: +case) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    kb = lambda n: f"{n / 1024:.0f} KB" if n < 1024 * 1024 else f"{n / 1048576:.2f} MB"  # noqa: E731
    for r in results:
        s, b = r["seconds"], r["bytes"]
        where = ("12 MP as the worker gets it" if r["path"] == "worker" else "12 MP, library/CLI") + (
            f" ({b['width']}x{b['height']})" if b else ", composite off"
        )
        sizes = f"{kb(b['jpeg_q90'])} / {kb(b['png_level1'])} / {kb(b['png_level6'])}" if b else "-"
        print(
            f"| {where} | {r['drawn']} of {r['faces']} | {ms(s['detect'])} | {ms(s['generate'])} | "
            f"{ms(s['composite'])} | {ms(s['encode_faces'])} / {ms(s['encode_jpeg'])} / {ms(s['encode_png'])} | "
            f"{sizes} | {r['rss_mb']['peak']} MB ({r['rss_mb']['after_model']} +{r['rss_mb']['case']}) |"
        )
    base = next((r for r in results if r["path"] == "worker" and not r["composite"]), None)
    one = next((r for r in results if r["path"] == "worker" and r["composite"] and r["faces"] == 1), None)
    if base and one:
        total = lambda r: sum(r["seconds"].values())  # noqa: E731
        print(
            f"\nA single selfie: {total(one) / total(base):.2f}x the time without the composite "
            f"({total(one) - total(base):+.3f} s; the composite's own cost: pasting "
            f"{one['seconds']['composite'] * 1000:.0f} ms, encoding JPEG + PNG "
            f"{(one['seconds']['encode_jpeg'] + one['seconds']['encode_png']) * 1000:.0f} ms)."
        )
    if args.json:
        print(json.dumps(results, indent=1))
    return 0
