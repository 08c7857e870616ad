"""`simpsonize bench model|service ...`: the benchmarks, each printing its own figures."""

from __future__ import annotations

import argparse

from benchmarks import model_speed, service_latency


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="WHAT", required=True)
    model_speed.add_arguments(sub.add_parser("model", help="detect and generate time per image"))
    service_latency.add_arguments(sub.add_parser("service", help="end-to-end latency of the embedded service"))


def run(args: argparse.Namespace) -> int:
    return model_speed.run(args) if args.bench == "model" else service_latency.run(args)
