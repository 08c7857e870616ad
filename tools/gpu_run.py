"""One prepared CycleGAN training run for a lent GPU (an NVIDIA H200), inside a 9-minute wall-clock budget.

Only the repository travels to the device machine, and at most 64 MiB of it, so the prepared faces go along as a
pack of small JPEGs; at most 8 files of at most 16 MiB come back through ``$OUT``, so the run returns only the
final generators (fp16, split into shards below that size), one sample grid, the loss log and a summary.

Here, before asking for the device::

    python -m tools.gpu_run pack --data ~/.cache/simpsonize/data_all --out gpu_pack      # <= 40 MiB, git-ignored

On the device (the `run` tool's command; carry ``gpu_pack``)::

    python3 -m tools.gpu_run train --pack gpu_pack --out "$OUT" --minutes 8

Back here::

    python -m tools.gpu_run merge OUT_FOLDER --out ~/.cache/simpsonize/runs/h200     # a run folder for `test`

``train`` takes every option of `simpsonize train` (built from the same ``TrainConfig`` fields) but the run's
cadence; where its defaults differ, ``GPU_DEFAULTS`` says so: the reference generator (ngf 64, 9 blocks) with
resize-conv upsampling at 128 px, batch 8, DiffAugment and the moving average; bf16 autocast and channels_last come
with CUDA. The same command runs on the CPU with tiny options, which the tests do.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

MAX_PACK_MIB = 40.0
MAX_RETURN_BYTES = 15 * 2**20  # under the 16 MiB limit per returned file
PACK_SPLITS = ("trainA", "trainB", "testA", "testB")


# ------------------------------------------------------------------------------------------------- pack
def pack(data: Path, out: Path, size: int = 128, max_mib: float = MAX_PACK_MIB) -> dict:
    """Every prepared face as a JPEG of ``size`` px, at the highest quality that keeps the pack under ``max_mib``."""
    from simpsonize.training.prepare import list_images

    files = {split: list_images(data / split) for split in PACK_SPLITS}
    images = {split: [_load(p, size) for p in paths] for split, paths in files.items()}
    for quality in (90, 85, 80, 75, 70, 60, 50):
        encoded = {split: [_jpeg(im, quality) for im in ims] for split, ims in images.items()}
        total = sum(len(b) for blobs in encoded.values() for b in blobs)
        if total <= max_mib * 2**20:
            break
    else:
        raise ValueError(f"{data} does not fit in {max_mib} MiB even at JPEG quality 50; use a smaller --size.")
    if out.exists():
        shutil.rmtree(out)
    for split, blobs in encoded.items():
        (out / split).mkdir(parents=True)
        for i, blob in enumerate(blobs):
            (out / split / f"{i:06d}.jpg").write_bytes(blob)
    dataset = data / "dataset.json"
    info = json.loads(dataset.read_text()) if dataset.exists() else {}
    info.update(
        {
            "packed_from": str(data),
            "pack_size": size,
            "jpeg_quality": quality,
            "counts": {s: len(b) for s, b in encoded.items()},
        }
    )
    (out / "dataset.json").write_text(json.dumps(info, indent=2))
    return {"bytes": total, "quality": quality, "counts": info["counts"]}


def _load(path: Path, size: int):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").resize((size, size), Image.LANCZOS)


def _jpeg(image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ train
# Where this command's defaults differ from `simpsonize train`'s, on purpose: the reference generator with
# resize-conv upsampling, batch 8 to fill the GPU, a 20,000-step schedule that an 8-minute budget cuts short,
# DiffAugment, and the moving average that comes back instead of the last trained weights.
GPU_DEFAULTS = {
    "upsampling": "resize_conv",
    "batch_size": 8,
    "epochs": 10,
    "epochs_decay": 10,
    "steps_per_epoch": 1000,
    "diff_augment": "color,translation,cutout",
    "ema_decay": 0.999,
}
# The run's cadence is this command's own: one sample grid and no checkpoint or snapshot on the way (nothing but
# $OUT comes back, and only the end of the run is returned).
NOT_OPTIONS_HERE = ("sample_every", "snapshot_every", "checkpoint_minutes")


def train(pack_dir: Path, out: Path, minutes: float, args: argparse.Namespace) -> dict:
    """Train in a scratch run folder, then put what fits the return limits under ``out``."""
    import torch

    from simpsonize.model.device import pick_device
    from simpsonize.training.config import TrainConfig, given_options
    from simpsonize.training.trainer import Trainer

    out.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="simpsonize_gpu_run_"))
    config = TrainConfig.from_options(str(pack_dir), str(run), given_options(args), GPU_DEFAULTS)
    config.sample_every, config.checkpoint_minutes = 10**9, 10**6
    device = str(pick_device(args.device))
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels once
    trainer = Trainer(config, device=device, num_workers=args.num_workers)
    if config.init_from:
        trainer.load_networks(config.init_from)
    started = time.time()
    summary = trainer.fit(max_minutes=minutes, max_steps=args.max_steps)
    summary["seconds"] = round(time.time() - started, 1)
    summary["images_per_second"] = round(summary["step"] * config.batch_size / max(summary["seconds"], 1e-9), 1)
    summary["device"] = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    summary["precision"] = "bf16" if trainer.bf16 else "fp32"
    summary["config"] = {k: v for k, v in config.to_dict().items() if k not in ("data", "out")}
    trainer.save_samples()
    samples = sorted((run / "samples").glob("*.png"))
    shutil.copy(samples[-1], out / "samples.png")
    shutil.copy(run / "losses.csv", out / "losses.csv")
    summary["files"] = []
    # At most 8 files come back, and at ngf 64 / 9 blocks each generator takes 2 shards: there is room for one pair.
    # With --ema-decay that pair is the average: on the CPU (model card, 2026-12-02) it was lower than the trained
    # weights at 6 of the last 8 snapshots and within the classifier's spread at the other 2, and it holds the
    # end-of-decay quality when the clock stops a run early.
    generators = trainer.G_ema.module if trainer.G_ema is not None else trainer.G
    summary["weights"] = f"moving average, decay {config.ema_decay:g}" if trainer.G_ema is not None else "trained"
    for name, generator in (("G_B", generators.G_B), ("G_A", generators.G_A)):
        summary["files"] += [
            p.name for p in save_shards(generator, out, name, config, trainer.dataset.framing, trainer.step)
        ]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    shutil.rmtree(run, ignore_errors=True)
    return summary


def save_shards(generator, out: Path, name: str, config, framing, step: int) -> list[Path]:
    """fp16 tensors split across files of at most ``MAX_RETURN_BYTES``; ``merge`` puts them back together."""
    from safetensors.torch import save_file

    state = {k: v.detach().half().cpu().contiguous() for k, v in generator.state_dict().items()}
    shards: list[dict] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > MAX_RETURN_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    meta = {
        "name": name,
        "generator": json.dumps(generator.config.to_dict()),
        "input_size": str(config.size),
        "step": str(step),
        "framing": json.dumps(framing),
        "shards": str(len(shards)),
    }
    paths = []
    for i, shard in enumerate(shards):
        path = out / f"{name}.{i}.safetensors"
        save_file(shard, str(path), metadata=meta)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ merge
def merge(folder: Path, run: Path) -> Path:
    """Returned shards -> a run folder with ``snapshots/step_N/G_{A,B}.safetensors`` that `simpsonize test` ranks."""
    from safetensors import safe_open

    from simpsonize.model.networks import GeneratorConfig, ResnetGenerator
    from simpsonize.model.weights import save_generator
    from simpsonize.removed_options import removed_generator_option

    summary = json.loads((folder / "summary.json").read_text())
    refusal = removed_generator_option(summary.get("config", {}), folder, still="merges")
    if refusal:  # else its G_B would merge as a plain generator on the wrong input channels
        raise ValueError(refusal)
    step = int(summary["step"])
    averaged = bool(summary.get("config", {}).get("ema_decay"))  # the shards hold the average (train --ema-decay)
    target = run / "snapshots" / (f"step_{step:07d}" + ("_ema" if averaged else ""))
    for name, direction in (("G_A", "AtoB"), ("G_B", "BtoA")):
        state, meta = {}, {}
        for path in sorted(folder.glob(f"{name}.*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata()
                state.update({k: handle.get_tensor(k).float() for k in handle.keys()})
        if not state:
            raise FileNotFoundError(f"{folder} holds no {name} shards")
        generator = ResnetGenerator(GeneratorConfig.from_dict(json.loads(meta["generator"])))
        generator.load_state_dict(state)
        save_generator(
            target / f"{name}.safetensors",
            generator,
            input_size=int(meta["input_size"]),
            extra={
                "direction": direction,
                "step": step,
                "run": str(run),
                "framing": json.loads(meta["framing"]),
                "trained_on": summary["device"],
            },
        )
    config = dict(summary["config"], data=summary.get("data", ""), out=str(run))
    (run / "config.json").write_text(json.dumps(config, indent=2))
    for extra in ("samples.png", "losses.csv", "summary.json"):
        if (folder / extra).exists():
            shutil.copy(folder / extra, run / extra)
    return target


# -------------------------------------------------------------------------------------------------- CLI
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from simpsonize.training.config import add_config_arguments

    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--max-steps", type=int, default=None)
    add_config_arguments(parser, defaults=GPU_DEFAULTS, skip=NOT_OPTIONS_HERE)  # `simpsonize train`'s own options
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=6)


def main(argv: list[str] | None = None) -> int:
    from simpsonize.training.config import TrainConfig, given_options

    parser = argparse.ArgumentParser(prog="python -m tools.gpu_run", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a prepared dataset into small JPEGs to carry to the device")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--max-mib", type=float, default=MAX_PACK_MIB)
    add_train_arguments(
        sub.add_parser("train", help="train within a wall-clock budget; write shards, samples and logs to --out")
    )
    m = sub.add_parser("merge", help="returned shards -> a run folder for `simpsonize test --all-snapshots`")
    m.add_argument("folder", type=Path)
    m.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "pack":
        if not (args.data / "trainA").is_dir():
            print(f"error: {args.data} is not a prepared dataset (no trainA/).")
            return 2
        info = pack(args.data, args.out, args.size, args.max_mib)
        print(
            f"pack: {sum(info['counts'].values())} faces, {info['bytes'] / 2**20:.1f} MiB at JPEG quality "
            f"{info['quality']} -> {args.out}"
        )
        return 0
    if args.command == "train":
        if not (args.pack / "trainA").is_dir():
            print(f"error: {args.pack} is not a pack (no trainA/): run `python -m tools.gpu_run pack` first.")
            return 2
        try:
            TrainConfig.from_options(str(args.pack), str(args.out), given_options(args), GPU_DEFAULTS).validate()
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        summary = train(args.pack, args.out, args.minutes, args)
        print(
            f"gpu_run: {summary['step']} steps in {summary['seconds']} s on {summary['device']} "
            f"({summary['precision']}), {summary['images_per_second']} images/s; files {summary['files']}"
        )
        return 0
    try:
        target = merge(args.folder, args.out)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    print(f"merge: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
