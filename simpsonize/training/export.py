"""`simpsonize export`: the run's real->Simpsons generator (G_B) as served weights, with a full model card block.

fp16 storage halves the file; it is used only when the fp16 weights reproduce the fp32 outputs on the
test faces at PSNR >= 40 dB (``--precision auto``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
from pathlib import Path

import torch

from simpsonize.model.errors import WeightsError
from simpsonize.model.networks import ResnetGenerator
from simpsonize.model.pipeline import psnr
from simpsonize.model.weights import load_generator, load_reference_state_dict, save_generator
from simpsonize.training.data import load_fixed
from simpsonize.training.prepare import list_images

MIN_FP16_PSNR = 40.0
DATA_LICENCE = (
    "Trained on Simpsons frames (copyright of their owner), UTKFace (non-commercial research only) and "
    "selfie2anime selfies (no clear licence): these weights are for non-commercial use only."
)
REFERENCE_FILES = ("latest_net_G_B.pth", "latest_net_G.pth")


@torch.no_grad()
def fp16_psnr(generator: ResnetGenerator, images: torch.Tensor) -> float:
    """How closely fp16-rounded weights reproduce the fp32 outputs (computed in fp32 either way)."""
    reference = generator(images)
    rounded = ResnetGenerator(generator.config)
    rounded.load_state_dict({k: v.half().float() for k, v in generator.state_dict().items()})
    return psnr(reference, rounded.eval()(images))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, help="run folder from `simpsonize train`")
    parser.add_argument(
        "--from-reference",
        type=Path,
        metavar="DIR",
        help="import a reference CycleGAN checkpoint folder (latest_net_G_B.pth) instead of a run",
    )
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.safetensors)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--snapshot", help="export snapshots/STEP instead of the last checkpoint")
    which.add_argument(
        "--best", action="store_true", help="export the snapshot `simpsonize test --all-snapshots` ranked best"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp16", "fp32"),
        default="auto",
        help=f"auto: fp16 when it matches fp32 at PSNR >= {MIN_FP16_PSNR:g} dB on the test faces",
    )
    parser.add_argument("--input-size", type=int, default=256, help="input size recorded for --from-reference")


def run(args: argparse.Namespace) -> int:
    if args.out.suffix != ".safetensors":
        print("error: --out must end in .safetensors.")
        return 2
    if bool(args.run) == bool(args.from_reference):
        print("error: give exactly one of --run or --from-reference.")
        return 2
    try:
        if args.from_reference:
            return export_reference(args.from_reference, args.out, args.input_size)
        return export_run(args.run, args.out, snapshot=args.snapshot, best=args.best, precision=args.precision)
    except (WeightsError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}")
        return 2


def export_reference(folder: Path, out: Path, input_size: int) -> int:
    path = next((folder / name for name in REFERENCE_FILES if (folder / name).exists()), None)
    if path is None:
        print(f"error: {folder} holds neither {' nor '.join(REFERENCE_FILES)}.")
        return 2
    state, config = load_reference_state_dict(path)
    generator = ResnetGenerator(config)
    generator.load_state_dict(state)
    save_generator(
        out,
        generator,
        input_size=input_size,
        extra={
            "direction": "BtoA",
            "source": f"reference CycleGAN checkpoint {path.name}",
            "exported": dt.date.today().isoformat(),
        },
    )
    print(f"export: {path} -> {out} (ngf {config.ngf}, {config.n_blocks} blocks, {config.upsampling})")
    return 0


def export_run(run: Path, out: Path, snapshot: str | None = None, best: bool = False, precision: str = "auto") -> int:
    from simpsonize.training.checkpoint import load_run_generators
    from simpsonize.training.direction_metrics import evaluate

    if not (run / "config.json").is_file():
        print(f"error: {run} is not a training run (no config.json).")
        return 2
    config = json.loads((run / "config.json").read_text())
    if best:
        choice = run / "test" / "best_snapshot.json"
        if not choice.exists():
            print(f"error: {choice} does not exist: run `simpsonize test --run {run} --all-snapshots` first.")
            return 2
        snapshot = json.loads(choice.read_text())["snapshot"]
    g_a, g_b, info = load_run_generators(run, snapshot)
    data = Path(config["data"])
    size = int(config["size"])
    metrics_path = run / "test" / (snapshot or f"step_{int(info['step']):07d}") / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    if not {"AtoB", "BtoA"} <= set(metrics):
        metrics = evaluate(g_a, g_b, data, size)  # the card always carries both directions
    test_faces = list_images(data / "testB") or list_images(data / "trainB")[:16]
    measured_psnr = fp16_psnr(g_b, load_fixed(test_faces[:32], size))
    half = precision == "fp16" or (precision == "auto" and measured_psnr >= MIN_FP16_PSNR)

    dataset = json.loads((data / "dataset.json").read_text()) if (data / "dataset.json").exists() else {}
    step = int(info["step"])
    sessions_path = run / "sessions.json"  # one entry per start or resume: device, precision, threads, processes
    sessions = json.loads(sessions_path.read_text()) if sessions_path.exists() else []
    wall_seconds, hardware = _wall_time(run, step, sessions)
    steps_per_epoch = config.get("steps_per_epoch") or None
    extra = {
        "direction": "BtoA",
        "description": "CycleGAN generator G_B: real face (domain B) -> Simpsons face (domain A)",
        "source": info["source"],
        "training": {
            "steps": step,
            "epochs": round(step / steps_per_epoch, 3) if steps_per_epoch else None,
            "batch_size": config.get("batch_size"),
            "images": images_seen(sessions, step, int(config.get("batch_size") or 1)),
            "config": config,
            "wall_time_hours": round(wall_seconds / 3600, 2),
            "hardware": hardware,
        },
        "data": {
            "counts": dataset.get("counts"),
            "sources": dataset.get("sources"),
            "skipped": {"real_without_face": dataset.get("real", {}).get("no_face")},
        },
        "framing": dataset.get("framing"),  # the Simpsonizer crops uploads this way
        "metrics": metrics,
        "fp16_psnr_db": None if math.isinf(measured_psnr) else round(measured_psnr, 2),
        "exported": dt.date.today().isoformat(),
        "licence": DATA_LICENCE,
    }
    save_generator(out, g_b, input_size=size, half=half, extra=extra)
    served, _ = load_generator(out)  # the written file must load as served; the examples use it
    examples = write_examples(served, test_faces[:8], size, out.with_name(f"{out.stem}_examples.png"))
    print(
        f"export: step {step} ({info['source']}) -> {out} ({out.stat().st_size / 1e6:.1f} MB, "
        f"{'fp16' if half else 'fp32'}, fp16 PSNR {measured_psnr:.1f} dB); "
        f"B->A domain score {metrics.get('BtoA', {}).get('domain_score')}; examples {examples}"
    )
    return 0


@torch.no_grad()
def write_examples(generator: ResnetGenerator, faces: list[Path], size: int, path: Path) -> Path:
    """Before/after grid of held-out faces for the model card."""
    from simpsonize.training.visuals import save_grid

    images = load_fixed(faces, size)
    return save_grid(path, {"real (test)": images, "Simpsonized": generator(images)}, thumb=min(size, 96))


def images_seen(sessions: list[dict], step: int, batch_size: int) -> int:
    """Training images per domain up to ``step``: under DDP each step takes ``batch_size`` from every process.

    A resumed run can change its process count, so each session's steps count at its own world size. A session
    ends where the next one starts: a resume starts at the last checkpoint, so the steps that a stopped session made
    after it were trained again, and count once (at the later session's world size; the sort is stable).
    """
    starts = sorted(sessions, key=lambda s: s["start_step"])
    if not starts:
        return step * batch_size
    images = 0
    for i, session in enumerate(starts):
        end = min(step, starts[i + 1]["start_step"] if i + 1 < len(starts) else step)
        images += max(0, end - session["start_step"]) * batch_size * int(session.get("world_size", 1))
    return images


def _wall_time(run: Path, step: int, sessions: list[dict]) -> tuple[float, str]:
    """Seconds spent up to ``step`` (from the loss log) and the devices that trained it (from sessions.json)."""
    seconds = 0.0
    log = run / "losses.csv"
    if log.exists():
        with log.open() as handle:
            seconds = sum(float(r["seconds"]) for r in csv.DictReader(handle) if int(r["step"]) <= step)
    devices = sorted(
        {
            f"{s['device']} ({s['precision']}, {_processes(s)}{s['threads']} threads)"
            for s in sessions
            if s["start_step"] <= step
        }
    )
    return seconds, "; ".join(devices) or "unknown"


def _processes(session: dict) -> str:
    world = int(session.get("world_size", 1))
    return f"{world} DDP processes × " if world > 1 else ""
