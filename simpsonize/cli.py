"""`simpsonize COMMAND ...`: dispatches to the package that owns each command; no logic lives here.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules
are imported only for the command being run, so `serve` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("simpsonize.serve.launcher", "Run the web service (embedded Redis and workers unless REDIS_URL is set)."),
    "worker": ("simpsonize.worker.process", "Run an RQ worker that loads the model once and serves jobs."),
    "predict": ("simpsonize.model.predict", "Simpsonize photos from the command line."),
    "prepare": (
        "simpsonize.training.prepare",
        "Build a CycleGAN dataset (trainA/trainB/testA/testB) from photo folders.",
    ),
    "train": ("simpsonize.training.train", "Train the CycleGAN (resumable, --max-minutes, DDP under torchrun)."),
    "test": ("simpsonize.training.evaluate", "Translate the test splits, write a gallery and metrics."),
    "export": ("simpsonize.training.export", "Export the real->Simpsons generator as served weights."),
    "bench": (
        "simpsonize.bench.cli",
        "Measure model speed (`bench model`), service latency (`bench service`), "
        "web memory under big uploads (`bench uploads`), result encoding (`bench encode`), "
        "a phone photo's upload from the page (`bench browser`), the composite's cost "
        "(`bench composite`), training speed (`bench train`), the projected judge's step "
        "(`bench projected`) or a full Redis (`bench full`).",
    ),
}


def build_parser(modules: dict[str, object] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simpsonize", description="Turn selfies into Simpsons characters.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if modules is not None and name in modules:
            modules[name].add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    modules = {}
    if command in COMMANDS:
        modules[command] = importlib.import_module(COMMANDS[command][0])
    args = build_parser(modules).parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
