"""`simpsonize bench WHAT`: the benchmarks (model, service, uploads, encode, browser, projected, train, composite,
full), each printing its own figures. The GPU device call is this repository's own script:
``python -m tools.gpu_bench``."""

from __future__ import annotations

import argparse

from simpsonize.bench import (
    browser_upload,
    composite_bench,
    encode_formats,
    model_speed,
    projected_step,
    redis_full,
    service_latency,
    train_speed,
    upload_memory,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="WHAT", required=True)
    model_speed.add_arguments(sub.add_parser("model", help="detect and generate time per image"))
    service_latency.add_arguments(sub.add_parser("service", help="end-to-end latency of the embedded service"))
    upload_memory.add_arguments(sub.add_parser("uploads", help="web process peak memory under a burst of big PNGs"))
    encode_formats.add_arguments(
        sub.add_parser("encode", help="encode time and bytes of a result: PNG levels, WebP, JPEG")
    )
    browser_upload.add_arguments(
        sub.add_parser(
            "browser",
            help="bytes and time of a phone photo's upload from the page, "
            "shrunk in the browser or not, on a throttled link",
        )
    )
    composite_bench.add_arguments(
        sub.add_parser(
            "composite", help="the composite's cost on a 12 MP photo with 1, 4 and 8 faces: times, bytes, peak memory"
        )
    )
    projected_step.add_arguments(
        sub.add_parser(
            "projected",
            help="a training step's cost with the Projected GAN judge (train --d-projected), as ratios to without",
        )
    )
    train_speed.add_arguments(
        sub.add_parser(
            "train",
            help="images per second of a training step by batch, processes "
            "x threads, precision, channels_last and torch.compile, "
            "and where a step's time goes",
        )
    )
    redis_full.add_arguments(
        sub.add_parser(
            "full",
            help="a burst against a small Redis: accepted, refused, finished, "
            "failed by reason, never ended, worker exits",
        )
    )


def run(args: argparse.Namespace) -> int:
    return {
        "model": model_speed,
        "service": service_latency,
        "uploads": upload_memory,
        "encode": encode_formats,
        "browser": browser_upload,
        "projected": projected_step,
        "train": train_speed,
        "composite": composite_bench,
        "full": redis_full,
    }[args.bench].run(args)
