"""`simpsonize train`: CycleGAN as published (Zhu et al. 2017), resumable, with wall-clock and CPU-time budgets.

The command line only; the parts it puts together, each with one job:

- training/config.py: ``TrainConfig``, its checks, and the options generated from its fields;
- training/precision.py: bf16 or fp32 and the memory layout, per machine;
- training/networks.py, pool.py, losses.py: what is trained, the history pools, the objective and lr schedule;
- training/ddp.py: data-parallel training under ``torchrun``;
- training/trainer.py: the ``Trainer`` (steps, budgets, samples);
- training/checkpoint.py: the run folder (config, checkpoint, exact resume, snapshots, losses, sessions.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simpsonize.model.device import pick_device
from simpsonize.model.errors import SimpsonizeError
from simpsonize.training.checkpoint import device_description, read_checkpoint, record_session, write_config
from simpsonize.training.config import TrainConfig, add_config_arguments, flag, given_options, resumable_options
from simpsonize.training.ddp import Distributed, process_group
from simpsonize.training.precision import hardware_name
from simpsonize.training.trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "add_arguments", "config_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="dataset from `simpsonize prepare` (not needed with --resume)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, samples)")
    add_config_arguments(parser)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop cleanly with a checkpoint after this")
    parser.add_argument(
        "--max-cpu-minutes",
        type=float,
        default=None,
        help="stop after this much CPU time of this process (equal-compute ablations)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many more steps")
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in --out exactly where it stopped; of the run's options only "
        f"{', '.join(flag(name) for name in resumable_options())} may change",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--num-workers", type=int, default=None, help="data loader processes")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A new run's config from the command line."""
    return TrainConfig.from_options(str(args.data), str(args.out), given_options(args))


def run(args: argparse.Namespace) -> int:
    info = Distributed.from_env()
    with process_group(info, args.device):
        return _run(args, info)


def _run(args: argparse.Namespace, info: Distributed) -> int:
    out: Path = args.out
    given = given_options(args)
    state = None
    precision = layout = None
    try:
        if args.resume:
            state = read_checkpoint(out)
            config, ignored = resumed_config(state, out, given)
            if ignored and info.is_main:
                print(f"train: --resume keeps the run's own {', '.join(ignored)}")
            if given.get("precision", "auto") == "auto":
                precision = kept_precision(state, args.device)
            if config.channels_last == "auto":
                bf16 = precision[0] if precision else {"bf16": True, "fp32": False}.get(config.precision)
                layout = kept_layout(state, args.device, bf16)
        else:
            if args.data is None:
                raise ValueError("--data is required for a new run.")
            if (out / "checkpoint.pt").exists():
                raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out.")
            config = config_from_args(args)
        config.validate()
        trainer = Trainer(
            config,
            device=args.device,
            num_workers=args.num_workers,
            dist_info=info,
            precision=precision,
            layout=layout,
        )
    except (FileNotFoundError, ValueError, SimpsonizeError) as exc:  # SimpsonizeError: e.g. CUDA asked, none here
        print(f"error: {exc}")
        return 2
    if info.is_main:
        write_config(out, config)
        record_session(
            out,
            state["step"] if state else 0,
            trainer.device,
            info.world_size,
            trainer.bf16,
            trainer.precision_reason,
            trainer.channels_last,
            trainer.layout_reason,
        )
    if state is not None:
        trainer.load_state_dict(state)
    elif config.init_from:
        try:
            start = trainer.load_networks(config.init_from)
        except ValueError as exc:
            print(f"error: --init-from: {exc}")
            return 2
        if info.is_main:
            print(f"train: networks from {config.init_from} (its step {start}); the schedule starts fresh")
    if info.is_main:
        print(
            f"train: precision {'bf16' if trainer.bf16 else 'fp32'} ({trainer.precision_reason}), layout "
            f"{'channels_last' if trainer.channels_last else 'contiguous'} ({trainer.layout_reason}) on "
            f"{device_description(trainer.device)}"
        )
    summary = trainer.fit(max_minutes=args.max_minutes, max_steps=args.max_steps, max_cpu_minutes=args.max_cpu_minutes)
    if info.is_main:
        how = (
            "stopped by its time budget"
            if summary["stopped_by_clock"]
            else ("finished" if summary["finished"] else "stopped by --max-steps")
        )
        print(
            f"train: {how} at step {summary['step']}/{summary['total_steps']} after {summary['minutes']:.1f} min "
            f"({summary['cpu_minutes']:.1f} CPU min) "
            f"on {trainer.device} ({'bf16' if trainer.bf16 else 'fp32'}, world size {info.world_size}); "
            f"checkpoint {out / 'checkpoint.pt'}"
        )
    return 0


def resumed_config(state: dict, out: Path, given: dict) -> tuple[TrainConfig, list[str]]:
    """The run's own config, with the options ``--resume`` may change where given again, and the flags of others
    given again with another value: those are ignored (and named), so that a run's whole command with --resume
    continues that run."""
    config = TrainConfig.from_dict(state["config"])
    config.out = str(out)  # the folder may have been copied or moved: write where we were told to
    resumable = resumable_options()
    for name, value in given.items():
        if name in resumable:
            setattr(config, name, value)
    ignored = [flag(name) for name, value in given.items() if name not in resumable and getattr(config, name) != value]
    return config, ignored


def kept_precision(state: dict, device_arg: str) -> tuple[bool, str] | None:
    """The precision the run chose earlier, if it resumes on the same hardware (a new timing probe could flip on a
    busy machine, and the run would then no longer continue exactly)."""
    saved = state.get("precision") or {}
    device = pick_device(device_arg)
    if saved.get("hardware") != hardware_name(device):
        return None
    return bool(saved["bf16"]), kept_reason(saved["reason"])


def kept_layout(state: dict, device_arg: str, bf16: bool | None) -> tuple[bool, str] | None:
    """The memory layout the run used earlier (``--channels-last auto``), if it resumes on the same hardware in the
    same precision (``bf16``: this session's; None while it is still to be chosen, which happens only on other
    hardware): the layout changes bf16's rounding, so a new probe could also make the run no longer continue exactly.
    A checkpoint written before the layout was recorded used the old rule of auto: channels_last with bf16 or on
    CUDA."""
    saved_precision = state.get("precision") or {}
    device = pick_device(device_arg)
    if bf16 is None or saved_precision.get("hardware") != hardware_name(device) or saved_precision["bf16"] != bf16:
        return None
    saved = state.get("layout")
    if saved is None:
        old_rule = device.type == "cuda" or bf16
        return old_rule, kept_reason("auto: the rule before layouts were recorded, channels_last with bf16 or on CUDA")
    return bool(saved["channels_last"]), kept_reason(saved["reason"])


def kept_reason(reason: str) -> str:
    kept = " (kept from the run's earlier session)"
    return reason.removesuffix(kept) + kept  # said once, however many resumes
