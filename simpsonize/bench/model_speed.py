"""Detect and generate time per image on this machine, for the reference generator sizes and the served one.

Baseline: the reference CycleGAN generator (ngf 64, 9 blocks) at 256x256; every other row is reported as a
ratio to it, measured in the same run. Timings are medians over ``--repeats`` calls after one warm-up call.

    simpsonize bench model [--repeats 5] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from simpsonize.model.device import detector_device_for
from simpsonize.model.networks import GeneratorConfig, ResnetGenerator, init_weights

PHOTO_SIZES = [(512, 512), (1600, 1200), (2048, 2048), (4000, 3000)]
CONFIGS = [
    ("reference ngf64/9 blocks @256", GeneratorConfig(64, 9, "transpose"), 256),
    ("reference ngf64/9 blocks @128", GeneratorConfig(64, 9, "transpose"), 128),
    ("small ngf32/6 blocks @256", GeneratorConfig(32, 6, "transpose"), 256),
    ("served ngf32/6 resize-conv @128", GeneratorConfig(32, 6, "resize_conv"), 128),
]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first call allocates and picks kernels
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None, help="also time the full Simpsonizer with these weights")


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from skimage import data

    from simpsonize.model.face import crop_face

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from simpsonize.cpu import cpu_name

    print(f"device {device} ({cpu_name()}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    photo = Image.fromarray(data.astronaut())
    detector_device = detector_device_for(device)
    detect_ms = {}
    # 512: a small photo; 1600x1200: the most a worker of the service gets (uploads are shrunk to 1600 px);
    # 2048 and 4000x3000 (12 MP, a phone's photo): what `simpsonize predict` and library callers may pass.
    for width, height in PHOTO_SIZES:
        image = photo if (width, height) == photo.size else photo.resize((width, height), Image.BICUBIC)
        seconds = median_seconds(lambda image=image: crop_face(image, size=256, device=detector_device), args.repeats)
        detect_ms[(width, height)] = seconds * 1000
        print(f"detect+align ({width}x{height} photo): {seconds * 1000:7.1f} ms")

    baseline = None
    for name, config, size in CONFIGS:
        torch.manual_seed(0)
        generator = init_weights(ResnetGenerator(config)).to(device).eval()
        x = torch.randn(1, 3, size, size, device=device)

        def generate(generator=generator, x=x):
            with torch.inference_mode():
                generator(x)

        seconds = median_seconds(generate, args.repeats)
        baseline = baseline or seconds
        params = sum(p.numel() for p in generator.parameters()) / 1e6
        print(
            f"generate {name:34s}: {seconds * 1000:7.1f} ms  ({params:4.1f} M params, "
            f"{baseline / seconds:4.1f}x the reference speed)"
        )
        if name.startswith("served"):
            served_ms = seconds * 1000

    print(
        "detect / generate (served): " + ", ".join(f"{w}x{h} {ms / served_ms:.2f}" for (w, h), ms in detect_ms.items())
    )
    if args.weights:
        from simpsonize.model.pipeline import Simpsonizer

        simpsonizer = Simpsonizer(weights=args.weights, device=args.device, num_threads=args.threads)
        seconds = median_seconds(lambda: simpsonizer(photo), args.repeats)
        print(f"Simpsonizer end to end (512x512 photo, {args.weights}): {seconds * 1000:7.1f} ms")
    return 0
