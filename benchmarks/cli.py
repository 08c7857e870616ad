"""`simpsonize bench model|service ...`: the benchmarks, each printing its own figures."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmarks import model_speed

    sub = parser.add_subparsers(dest="bench", metavar="WHAT", required=True)
    model_parser = sub.add_parser("model", help="detect and generate time per image")
    model_speed.add_arguments(model_parser)
    service_parser = sub.add_parser("service", help="end-to-end latency of the embedded service")
    service_parser.add_argument("service_args", nargs=argparse.REMAINDER,
                                help="arguments for benchmarks/service_latency.py (see its --help)")


def run(args: argparse.Namespace) -> int:
    if args.bench == "model":
        from benchmarks import model_speed

        return model_speed.run(args)
    from benchmarks import service_latency

    return int(service_latency.main(args.service_args) or 0)
