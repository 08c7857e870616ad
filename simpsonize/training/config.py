"""What a training run is: ``TrainConfig``, its checks, and the command-line options made from its fields.

Each option is declared once, as a field with its help text (and choices or metavar) in the field's metadata;
`simpsonize train` and `tools/gpu_run.py train` both build their options from these fields, so neither can lag
behind. The run folder keeps the config as config.json (and inside checkpoint.pt), which is what ``--resume`` reads.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from simpsonize.removed_options import REMOVED_GENERATOR_OPTIONS

if TYPE_CHECKING:
    from simpsonize.model.networks import GeneratorConfig

UPSAMPLINGS = ("transpose", "resize_conv")
PRECISIONS = ("auto", "fp32", "bf16")
CHANNELS_LAST_CHOICES = ("auto", "on", "off")
# --d-projected: the Projected GAN judge (training/projected.py) of the Simpsons side: none, or beside the
# Simpsons-side PatchGAN.
PROJECTED_MODES = ("off", "with-patch")
# The PatchGAN's three stride-2 and two 4x4 stride-1 convolutions leave no output below this input side.
MIN_DISCRIMINATOR_SIDE = 24

# The last commits with tricks whose ablations lost (docs/experiments.md), oldest first: the trainer before its split
# in issue 29, the trainer before the eighteenth session's losers left, the trainer before the nineteenth session's
# landmark maps left, and the trainer before the twenty-first session's eye-consistency term (`--eye-consistency`,
# training/eye_locator.py there) left. Each still has every trick removed after it, so a run that used tricks of
# several removals resumes at the oldest of their commits. The landmark maps' commit comes from
# simpsonize.removed_options, which the served model's refusal of such weights reads too.
BEFORE_THE_EYE_TERM_LEFT = "e564b5f"
REMOVED_AT = ("f6bafa5", "410744a", REMOVED_GENERATOR_OPTIONS["landmark_maps"], BEFORE_THE_EYE_TERM_LEFT)
# The tricks that left, with the value that meant "off" and the last commit that has them. A run folder that left
# them off resumes here; one that used one must go back to a commit that has it.
REMOVED_OPTIONS: dict[str, tuple[Any, str]] = {
    "lambda_tv": (0.0, "f6bafa5"),
    "d_scales": (1, "f6bafa5"),
    "d_thumbnail": (0, "f6bafa5"),
    "cycle_noise": (0.0, "f6bafa5"),
    "cycle_eyes": (1.0, "f6bafa5"),
    "cycle_surround": (1.0, "f6bafa5"),
    "spectral_norm": (False, "f6bafa5"),
    "objective": ("cyclegan", "f6bafa5"),
    "d_warmup": (0, "f6bafa5"),
    "r1_gamma": (0.0, "f6bafa5"),
    "eye_judge": (0.0, "410744a"),
    "landmark_maps": (False, REMOVED_GENERATOR_OPTIONS["landmark_maps"]),
    "eye_consistency": (0.0, BEFORE_THE_EYE_TERM_LEFT),
}
# lambda_nce, nce_patches and r1_every were settings of CUT and R1: inert while those were off, so they are ignored.
# Values of kept options that left the same way, with the last commit that has them: the projected judge instead of
# the PatchGAN.
REMOVED_CHOICES: dict[str, dict[Any, str]] = {"d_projected": {"alone": "410744a"}}


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    resumable: bool = False,
) -> Any:
    """A config field that is also a command-line option. ``resumable``: ``--resume`` may change it (how long and
    how visibly the run goes on), where every other field stays as the run began."""
    return field(
        default=default, metadata={"help": help, "choices": choices, "metavar": metavar, "resumable": resumable}
    )


@dataclass
class TrainConfig:
    """CycleGAN as published (Zhu et al. 2017) at these defaults; the shipped recipe: simpsonize/weights/README.md."""

    data: str
    out: str
    size: int = option(128, "training crop side in px (a multiple of 4)", metavar="PX")
    ngf: int = option(64, "filters of the generators' first layer")
    n_blocks: int = option(9, "residual blocks of each generator", metavar="N")
    upsampling: str = option(
        "transpose", "transpose: the reference layout; resize_conv: avoids checkerboard artefacts", choices=UPSAMPLINGS
    )
    ndf: int = option(64, "filters of the discriminators' first layer")
    batch_size: int = option(1, "images per step in each process", metavar="N")
    epochs: int = option(
        100,
        "epochs at the initial learning rate (with --resume: lengthen or shorten the run's "
        "schedule, e.g. to add a decay after an ablation arm won)",
        metavar="N",
        resumable=True,
    )
    epochs_decay: int = option(100, "epochs of linear decay to 0 after --epochs", metavar="N", resumable=True)
    steps_per_epoch: int = option(
        0,
        "define an epoch as this many steps (0: one pass over the larger domain, as in the reference code)",
        metavar="N",
    )
    lr: float = option(2e-4, "Adam's learning rate")
    lr_d: float = option(0.0, "the discriminators' learning rate (0: --lr)", metavar="LR")
    beta1: float = option(0.5, "Adam's beta1")
    lambda_cycle: float = option(10.0, "weight of the cycle L1, both ways", metavar="WEIGHT")
    lambda_identity: float = option(
        0.5, "weight of the identity L1, as a share of --lambda-cycle (0: off)", metavar="SHARE"
    )
    pool_size: int = option(50, "fakes kept in each discriminator's history pool (0: none)", metavar="N")
    seed: int = option(0, "seed of the initial weights, the data order and the augmentations")
    precision: str = option(
        "auto",
        "auto: bf16 on CUDA; on a CPU only with AMX, or where a 3-step probe finds it faster",
        choices=PRECISIONS,
        resumable=True,
    )
    channels_last: str = option(
        "auto",
        "memory layout: auto (channels_last on CUDA; on a CPU contiguous with fp32, and with bf16 "
        "channels_last only where a short probe finds it at least 5%% faster; a resumed run keeps its layout on the "
        "same hardware), on, off",
        choices=CHANNELS_LAST_CHOICES,
    )
    diff_augment: str = option(
        "", "DiffAugment on every discriminator input, e.g. color,translation,cutout (none: off)", metavar="POLICY"
    )
    init_from: str = option(
        "",
        "start a new run from the networks and Adam moments of another run's checkpoint "
        "(same architecture); the learning-rate schedule, pools and step count start fresh",
        metavar="RUN",
    )
    d_projected: str = option(
        "off",
        "a Projected GAN judge of the Simpsons side on frozen ImageNet "
        "EfficientNet-Lite0 features (Sauer et al., 2021), beside the PatchGAN D_B",
        choices=PROJECTED_MODES,
    )
    ema_decay: float = option(
        0.0,
        "also keep a moving average of the generators' weights (e.g. 0.999), saved "
        "with every snapshot as step_N_ema (0: off)",
        metavar="DECAY",
    )
    sample_every: int = option(0, "steps between sample grids (0: once per epoch)", metavar="STEPS", resumable=True)
    snapshot_every: int = option(
        0,
        "steps between G_B snapshots kept for `simpsonize test --all-snapshots` (0: none)",
        metavar="STEPS",
        resumable=True,
    )
    checkpoint_minutes: float = option(10.0, "minutes between checkpoints", metavar="MINUTES", resumable=True)

    def generator_config(self) -> GeneratorConfig:
        from simpsonize.model.networks import GeneratorConfig  # here, so that building the options needs no torch

        return GeneratorConfig(ngf=self.ngf, n_blocks=self.n_blocks, upsampling=self.upsampling)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A saved config; fields it lacks take their defaults, and fields no longer known are dropped (whether a
        dropped one mattered is ``check_removed_options``'s question)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise ValueError with one sentence for the first setting that cannot train."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"unknown {f.name} {getattr(self, f.name)!r}: choose from {', '.join(choices)}.")
        if self.size % 4:
            raise ValueError(f"--size must be a multiple of 4, not {self.size}.")
        if self.size < MIN_DISCRIMINATOR_SIDE:
            raise ValueError(
                f"--size {self.size} is too small: a 70x70 PatchGAN needs at least {MIN_DISCRIMINATOR_SIDE} px."
            )
        if self.diff_augment:
            from simpsonize.training.augment import parse_policy

            try:
                parse_policy(self.diff_augment)
            except ValueError as exc:
                raise ValueError(f"--diff-augment: {exc}.") from None
        from simpsonize.training.averaging import check_decay

        check_decay(self.ema_decay)

    @classmethod
    def from_options(
        cls, data: str, out: str, given: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
    ) -> TrainConfig:
        """A new run's config: the options given, else ``defaults`` (a caller's own, e.g. gpu_run's), else the
        fields' defaults."""
        return cls(data=data, out=out, **{**(defaults or {}), **given})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_fields(skip: Collection[str] = ()) -> list:
    """The fields that are command-line options (all but data and out), less ``skip``."""
    return [f for f in fields(TrainConfig) if "help" in f.metadata and f.name not in skip]


def add_config_arguments(
    parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None, skip: Collection[str] = ()
) -> None:
    """One option per config field. An option that is not given stays out of the parsed namespace (argparse's
    SUPPRESS), so ``given_options`` tells what was asked for from what was defaulted: ``--resume`` needs that."""
    hints = typing.get_type_hints(TrainConfig)
    for f in option_fields(skip):
        default = (defaults or {}).get(f.name, f.default)
        shown = default if default != "" else "none"
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{f.metadata['help']} (default: {shown})",
        }
        if hints[f.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = hints[f.name]
        for key in ("choices", "metavar"):
            if f.metadata.get(key):
                kwargs[key] = f.metadata[key]
        parser.add_argument(flag(f.name), **kwargs)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config options given on the command line (not those left at their defaults)."""
    return {f.name: getattr(args, f.name) for f in option_fields() if hasattr(args, f.name)}


def resumable_options() -> tuple[str, ...]:
    return tuple(f.name for f in option_fields() if f.metadata["resumable"])


def check_removed_options(saved: Mapping[str, Any]) -> None:
    """A saved config that used a removed option (or a removed value of a kept one) cannot train here: say which, and
    where it still exists."""
    used = {
        _as_flag(name, saved[name]): commit
        for name, (off, commit) in REMOVED_OPTIONS.items()
        if name in saved and saved[name] != off
    }
    used |= {
        _as_flag(name, saved[name]): removed[saved[name]]
        for name, removed in REMOVED_CHOICES.items()
        if saved.get(name) in removed
    }
    if used:
        flags = list(used)
        many = len(flags) > 1
        listed = f"{', '.join(flags[:-1])} and {flags[-1]}" if many else flags[0]
        commit = min(used.values(), key=REMOVED_AT.index)
        raise ValueError(
            f"this run uses {listed}, {'options' if many else 'an option'} removed from the "
            f"trainer after {'their' if many else 'its'} ablation lost (docs/experiments.md); commit "
            f"{commit} still has {'them' if many else 'it'}."
        )


def _as_flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return flag(name)
    return f"{flag(name)} {value:g}" if isinstance(value, float) else f"{flag(name)} {value}"
