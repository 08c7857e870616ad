"""`simpsonize train`: CycleGAN as published (Zhu et al. 2017), resumable, with a wall-clock budget.

A = Simpsons, B = real. G_A: A->B, G_B: B->A (the one the service runs), D_A judges domain B, D_B domain A.
Objective: least-squares GAN + 10 * cycle L1 (both ways) + 0.5 * 10 * identity L1; 50-image history pools;
Adam(2e-4, betas 0.5/0.999); constant lr for ``epochs`` then linear decay to 0 over ``epochs_decay``.

Run layout: ``RUN/config.json``, ``checkpoint.pt`` (everything needed to resume exactly), ``losses.csv``,
``losses.png``, ``samples/step_*.png`` and ``snapshots/step_*.safetensors`` (G_B, for picking the best).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from simpsonize.model.networks import (DiscriminatorConfig, GeneratorConfig, NLayerDiscriminator, ResnetGenerator,
                            ThumbnailDiscriminator, halve, init_weights)
from simpsonize.model.weights import save_generator
from simpsonize.training.augment import cycle_noise
from simpsonize.training.averaging import check_decay, generator_average
from simpsonize.training.data import StepBatches, UnpairedFaces, load_fixed
from simpsonize.training.projected import DEFAULT_POLICY, ProjectedDiscriminator, projected_lsgan
from simpsonize.training.patchnce import (PatchHeads, encode, feature_layers, layer_channels, patch_nce_loss,
                               sample_positions)
from simpsonize.training.regularizers import face_region_weights, r1_penalty, total_variation, weighted_l1

LOSS_NAMES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B", "nce", "nce_idt", "tv",
              "D_B_coarse", "G_B_coarse", "r1", "D_B_proj", "G_B_proj", "D_eye", "G_eye")
OBJECTIVES = ("cyclegan", "cut")
# --d-projected: the Projected GAN judge (training/projected.py) of the Simpsons side: none, instead of the
# Simpsons-side PatchGAN, or beside it.
PROJECTED_MODES = ("off", "alone", "with-patch")
CHANNELS_LAST_CHOICES = ("auto", "on", "off")
# The PatchGAN's three stride-2 and two 4x4 stride-1 convolutions leave no output below this input side.
MIN_DISCRIMINATOR_SIDE = 24


@dataclass
class TrainConfig:
    data: str
    out: str
    size: int = 128
    ngf: int = 64
    n_blocks: int = 9
    upsampling: str = "transpose"
    ndf: int = 64
    batch_size: int = 1
    epochs: int = 100
    epochs_decay: int = 100
    steps_per_epoch: int = 0  # 0: one pass over the larger domain, as in the reference code
    lr: float = 2e-4
    lr_d: float = 0.0  # 0: same as lr
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    seed: int = 0
    precision: str = "auto"  # auto: bf16 on CUDA; on CPU bf16 only with AMX, or where a short probe finds it faster
    # Memory layout of the networks and images: "auto" is channels_last with bf16 or on CUDA (as it always was), "on"
    # and "off" force it. `simpsonize bench train` on a Zen 4 EPYC found bf16 steps 1.13x faster without it, so the
    # best layout depends on the CPU.
    channels_last: str = "auto"
    diff_augment: str = ""  # DiffAugment policy for every discriminator input, e.g. "color,translation,cutout"
    cycle_noise: float = 0.0  # sigma of the noise added to a translation before its cycle reconstruction
    lambda_tv: float = 0.0  # total-variation prior on the served translations (training/regularizers.py)
    # Weight of the photo cycle's L1 outside the face (training/regularizers.py: face_region_weights); 1: the
    # published, uniform cycle. Lower lets the surroundings be drawn flat instead of carrying the photo's texture.
    cycle_surround: float = 1.0
    # Weight of the photo cycle's L1 on the eyes (two discs placed from the framing); 1: no extra weight. Higher asks
    # the drawing to keep where each pupil looks, so that the person can be given back: pupils instead of blank eyes.
    cycle_eyes: float = 1.0
    init_from: str = ""  # a run folder or checkpoint whose four networks this run starts from (fine-tuning)
    spectral_norm: bool = False  # spectral normalisation in both discriminators (their instance norms dropped)
    # How many scales the Simpsons-side discriminator judges (pix2pixHD; Wang et al., 2018). 1: D_B's 70 px patches
    # only. Each further scale is its own PatchGAN on the image halved once more, so at 128 px the third one sees
    # the whole face at once: the colour layout (face shape, eyes, background) that a 70 px patch cannot see.
    d_scales: int = 1
    # Side in px of a further Simpsons-side discriminator that judges each crop's thumbnail with one logit
    # (model/networks.py: ThumbnailDiscriminator); 0: off. The C2ST tells our faces from the show's by 8x8 px
    # thumbnails alone: the colour layout of the whole crop.
    d_thumbnail: int = 0
    # Steps at the start of a run in which only the discriminators learn (the generators translate but are not
    # updated). A fine-tune that adds discriminators (--init-from with more --d-scales or --d-thumbnail) starts them
    # from random weights, and at a fine-tune's learning rate they took ~1,000 steps to learn anything: until then
    # the generator was chasing noise. Measured (model card, 2026-12-01): at 5e-5 they learnt no faster with the
    # generators held still, so their learning rate is what limits them. 0: off.
    d_warmup: int = 0
    # R1 penalty on the Simpsons-side discriminators at real Simpsons faces (training/regularizers.py), every
    # r1_every steps with r1_every times the weight (StyleGAN2's lazy regularisation). 0: off. StyleGAN2 waits 16
    # steps, but takes a separate optimiser step for the penalty; here it joins the discriminators' one Adam step, and
    # a spike every 16 steps would fill Adam's second moment and so slow the discriminators' ordinary learning.
    r1_gamma: float = 0.0
    r1_every: int = 4
    # "cyclegan": the published objective. "cut": one-sided, G_B and D_B only, PatchNCE instead of the cycle
    # (training/patchnce.py); lambda_identity > 0 then means CUT's identity PatchNCE on Simpsons faces.
    objective: str = "cyclegan"
    # A Projected GAN discriminator of the Simpsons side (training/projected.py: frozen ImageNet EfficientNet-Lite0
    # features, fixed random mixing, trained heads, DiffAugment): "off"; "alone" (instead of the PatchGAN D_B);
    # "with-patch" (beside it, its loss added to the generator's). A judge that starts from pretrained eyes
    # instead of learning to see from ~2,500 faces.
    d_projected: str = "off"
    # Weight of the eye judge's push on G_B (training/eye_judge.py: a small PatchGAN on the eye patches of the
    # real->Simpsons translations, cut at the person's eye positions, against the show's eye patches); 0: off.
    eye_judge: float = 0.0
    lambda_nce: float = 1.0
    nce_patches: int = 256
    # Decay of a moving average of the generators' weights (training/averaging.py), kept beside them and saved with
    # every snapshot as snapshots/step_N_ema; 0: off. Training itself is unchanged.
    ema_decay: float = 0.0
    sample_every: int = 0  # steps; 0: once per epoch
    snapshot_every: int = 0  # steps; 0: no snapshots
    checkpoint_minutes: float = 10.0

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(ngf=self.ngf, n_blocks=self.n_blocks, upsampling=self.upsampling)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_precision(config: "TrainConfig", device: torch.device) -> tuple[bool, str]:
    """(use bf16, why). bf16 autocast is a trap on CPUs without bf16 hardware: on an AVX2-only EPYC one step took
    75 s in bf16 against 1.84 s in fp32, while an AMX Xeon ran it 3x faster. So on CPU: bf16 with AMX; otherwise
    time 3 steps of each (after one warm-up) on this model and take bf16 only if it is at least 10 % faster."""
    if config.precision in ("bf16", "fp32"):
        return config.precision == "bf16", f"asked for {config.precision}"
    if device.type == "cuda":
        return True, "auto: CUDA"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return True, "auto: CPU has AMX (amx_bf16)"
    fp32_s, bf16_s = probe_step_seconds(config, device)
    has = "has avx512_bf16" if "avx512_bf16" in flags else "has no AMX or avx512_bf16"
    if bf16_s < 0.9 * fp32_s:
        return True, f"auto: CPU {has}; probe: bf16 {bf16_s:.3f} s vs fp32 {fp32_s:.3f} s per step"
    return False, f"auto: CPU {has}; probe: fp32 {fp32_s:.3f} s vs bf16 {bf16_s:.3f} s per step"


def probe_step_seconds(config: "TrainConfig", device: torch.device, steps: int = 3) -> tuple[float, float]:
    """Median seconds of a generator+discriminator forward/backward in fp32 and in bf16 autocast, on throwaway
    networks of the run's size; torch's RNG is restored afterwards so the run itself is unchanged."""
    with torch.random.fork_rng(devices=[]):
        G = Generators(config.generator_config()).to(device)
        D = Discriminators(DiscriminatorConfig(ndf=config.ndf, spectral_norm=config.spectral_norm),
                           d_scales=config.d_scales, thumbnail=config.d_thumbnail, projected=config.d_projected,
                           image_size=config.size).to(device)
        x = torch.rand(config.batch_size, 3, config.size, config.size, device=device) * 2 - 1
        results = []
        for bf16 in (False, True):
            net_g, net_d, inp = G, D, x
            if bf16:
                net_g = G.to(memory_format=torch.channels_last)
                net_d = D.to(memory_format=torch.channels_last)
                inp = x.contiguous(memory_format=torch.channels_last)
            times = []
            for i in range(steps + 1):
                started = time.perf_counter()
                context = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
                with context:
                    out = net_g(inp, inp, config.lambda_identity > 0)
                    loss = sum(o.float().mean() for o in out.values())
                    d_a_real, d_a_fake, *simpsons = net_d(inp, inp, out["fake_A"], out["fake_B"])
                    predictions = [d_a_real, d_a_fake, *(p for judged in simpsons for p in judged)]
                    loss = loss + sum(p.float().mean() for p in predictions)
                loss.backward()
                if i:
                    times.append(time.perf_counter() - started)
                if bf16 and time.perf_counter() - started > 20 * (results[0] if results else 1):
                    times = [math.inf]  # hopeless (no bf16 hardware): stop probing
                    break
            results.append(sorted(times)[len(times) // 2])
            G.zero_grad(set_to_none=True)
            D.zero_grad(set_to_none=True)
    return results[0], results[1]


# Options that may change on --resume without changing the run (where and how long it runs).
RUNTIME_OPTIONS = ("checkpoint_minutes", "sample_every", "snapshot_every")


class ImagePool:
    """History of generated images: half the time D sees an older fake instead of the newest (Shrivastava et al.)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() > 0.5:
                i = self.rng.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"images": [im.cpu() for im in self.images], "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.images = [im.to(device) for im in state["images"]]
        self.rng.setstate(state["rng"])


class Generators(nn.Module):
    """Both generators in one forward pass, so DDP sees exactly one forward per backward."""

    def __init__(self, config: GeneratorConfig, cycle_noise: float = 0.0) -> None:
        super().__init__()
        self.G_A = init_weights(ResnetGenerator(config))
        self.G_B = init_weights(ResnetGenerator(config))
        self.cycle_noise = cycle_noise  # see simpsonize.training.augment.cycle_noise

    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor, identity: bool) -> dict[str, torch.Tensor]:
        fake_B = self.G_A(real_A)
        fake_A = self.G_B(real_B)
        out = {"fake_B": fake_B, "rec_A": self.G_B(cycle_noise(fake_B, self.cycle_noise)),
               "fake_A": fake_A, "rec_B": self.G_A(cycle_noise(fake_A, self.cycle_noise))}
        if identity:
            out["idt_A"] = self.G_A(real_B)  # G_A should leave a real face alone
            out["idt_B"] = self.G_B(real_A)
        return out


class Discriminators(nn.Module):
    def __init__(self, config: DiscriminatorConfig, d_scales: int = 1, thumbnail: int = 0, projected: str = "off",
                 image_size: int = 128, projected_policy: str = DEFAULT_POLICY, seed: int = 0) -> None:
        super().__init__()
        # A spectrally normalised discriminator initialises itself before its weights are parametrised.
        init = (lambda net: net) if config.spectral_norm else init_weights
        self.D_A = init(NLayerDiscriminator(config))
        self.D_B = init(NLayerDiscriminator(config))
        # Separate from D_B (not one multi-scale module), so a single-scale run's D_B and optimiser still load.
        self.D_B_coarse = nn.ModuleList(init(NLayerDiscriminator(config)) for _ in range(d_scales - 1))
        judges = [ThumbnailDiscriminator(thumbnail, config.ndf, spectral_norm=config.spectral_norm)] if thumbnail else []
        self.D_B_thumb = nn.ModuleList(judges)  # it initialises itself (a Linear layer too)
        self.augment = lambda x: x  # the trainer swaps in DiffAugment when asked
        # The Projected GAN judge: built last and from its own seed, so every other network starts as without it.
        # It augments what it judges by itself (always: the paper's judge is never without DiffAugment).
        self.patch_judges = projected != "alone"
        self.D_B_projected = nn.ModuleList()
        if projected != "off":
            from simpsonize.training import projected as projected_module  # looked up now, so tests can swap the features

            self.D_B_projected.append(ProjectedDiscriminator(projected_module.pretrained_features(), image_size,
                                                             policy=projected_policy, seed=seed))

    def judge_simpsons(self, images: torch.Tensor) -> list[torch.Tensor]:
        """D_B's logits on (augmented) images, then each coarser discriminator's on the image halved once more, then
        the thumbnail discriminator's (one per image).

        The augmentation is drawn once, before the pyramid, so every scale judges the same picture."""
        images = self.augment(images)
        logits = [self.D_B(images)]
        thumbnails = [net(images) for net in self.D_B_thumb]
        for net in self.D_B_coarse:
            images = halve(images)
            logits.append(net(images))
        return logits + thumbnails

    def judge_projected(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The Projected GAN judge's logits, one map per feature scale, finest first (none when it is off)."""
        return [p for judge in self.D_B_projected for p in judge(images)]

    def forward(self, real_A, real_B, fake_A, fake_B) -> tuple:
        """D_A on real and fake B, the Simpsons-side PatchGAN scales on real and fake A (lists of logits, finest
        first; empty with --d-projected alone), and the projected judge's on real and fake A (empty when off);
        D_A is skipped when ``real_B`` is None (one-sided)."""
        patch = (self.judge_simpsons(real_A), self.judge_simpsons(fake_A)) if self.patch_judges else ([], [])
        projected = self.judge_projected(real_A), self.judge_projected(fake_A)
        if real_B is None:
            return (None, None, *patch, *projected)
        a = self.augment
        return (self.D_A(a(real_B)), self.D_A(a(fake_B)), *patch, *projected)


def lsgan_scales(predictions: list[torch.Tensor], is_real: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares loss at the finest scale, and summed over the coarser ones (pix2pixHD sums the scales)."""
    coarse = sum((lsgan(p, is_real) for p in predictions[1:]), torch.zeros((), device=predictions[0].device))
    return lsgan(predictions[0], is_real), coarse


class OneSided(nn.Module):
    """G_B and its PatchNCE heads in one forward pass (one DDP forward per backward), for ``objective="cut"``."""

    def __init__(self, G_B: ResnetGenerator, patches: int) -> None:
        super().__init__()
        self.G_B = G_B
        self.layers = feature_layers(G_B)
        self.heads = PatchHeads(layer_channels(G_B, self.layers))
        self.patches = patches

    def nce(self, source: torch.Tensor, translated: torch.Tensor) -> torch.Tensor:
        """PatchNCE between a translation and the image it was translated from, averaged over the layers."""
        with torch.no_grad():  # keys carry no gradient (CUT detaches them too), so skip their graph
            keys = encode(self.G_B, source, self.layers)
            positions = sample_positions(keys, self.patches)
            keys = self.heads(keys, positions)
        queries = self.heads(encode(self.G_B, translated, self.layers), positions)
        return sum(patch_nce_loss(q, k) for q, k in zip(queries, keys)) / len(queries)

    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor, identity: bool) -> dict[str, torch.Tensor]:
        fake_A = self.G_B(real_B)
        out = {"fake_A": fake_A, "nce": self.nce(real_B, fake_A)}
        if identity:  # a Simpsons face must stay itself, patch by patch
            idt_B = self.G_B(real_A)
            out["idt_B"] = idt_B
            out["nce_idt"] = self.nce(real_A, idt_B)
        return out


def lsgan(prediction: torch.Tensor, is_real: bool) -> torch.Tensor:
    target = torch.ones_like(prediction) if is_real else torch.zeros_like(prediction)
    return nn.functional.mse_loss(prediction.float(), target.float())


def linear_decay(epochs: int, epochs_decay: int, steps_per_epoch: int):
    def factor(step: int) -> float:
        epoch = step / steps_per_epoch
        if epoch < epochs or epochs_decay == 0:
            return 1.0
        return max(0.0, 1.0 - (epoch - epochs) / epochs_decay)

    return factor


@dataclass
class Distributed:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        return cls(int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def check_scales(config: TrainConfig) -> None:
    """--d-scales must be at least 1, and its coarsest scale big enough for a PatchGAN to answer."""
    if config.d_scales < 1:
        raise ValueError(f"--d-scales must be at least 1 (1 is the single-scale PatchGAN), not {config.d_scales}.")
    if config.d_thumbnail and not (8 <= config.d_thumbnail <= config.size and config.d_thumbnail % 4 == 0):
        raise ValueError(f"--d-thumbnail must be 0 (off) or a side of 8 px up to --size {config.size}, divisible by 4, "
                         f"not {config.d_thumbnail}.")
    coarsest = config.size >> (config.d_scales - 1)
    if coarsest < MIN_DISCRIMINATOR_SIDE:
        raise ValueError(f"--d-scales {config.d_scales} at {config.size} px would give the coarsest discriminator "
                         f"{coarsest} px; a 70x70 PatchGAN needs at least {MIN_DISCRIMINATOR_SIDE}.")


def check_r1(config: TrainConfig) -> None:
    if config.r1_gamma < 0:
        raise ValueError(f"--r1-gamma must be 0 (off) or positive, not {config.r1_gamma:g}.")
    if config.r1_every < 1:
        raise ValueError(f"--r1-every must be at least 1 (every step), not {config.r1_every}.")


def check_warmup(config: TrainConfig) -> None:
    if config.d_warmup < 0:
        raise ValueError(f"--d-warmup must be 0 (off) or a number of steps, not {config.d_warmup}.")
    if config.d_warmup and config.objective != "cyclegan":
        raise ValueError("--d-warmup works with the cyclegan objective only.")


def check_projected(config: TrainConfig) -> None:
    """--d-projected is one of its modes; ``alone`` replaces the PatchGAN, so options that shape it cannot come too."""
    if config.d_projected not in PROJECTED_MODES:
        raise ValueError(f"--d-projected must be one of {', '.join(PROJECTED_MODES)}, not {config.d_projected!r}.")
    if config.d_projected == "alone":
        shaping = [name for name, on in (("--d-scales", config.d_scales > 1), ("--d-thumbnail", config.d_thumbnail),
                                         ("--r1-gamma", config.r1_gamma)) if on]
        if shaping:
            raise ValueError(f"--d-projected alone replaces the Simpsons-side PatchGAN, which {' and '.join(shaping)} "
                             "would shape; use --d-projected with-patch to keep it.")


def check_eye_judge(config: TrainConfig, world_size: int) -> None:
    if config.eye_judge < 0:
        raise ValueError(f"--eye-judge must be 0 (off) or a positive weight, not {config.eye_judge:g}.")
    if config.eye_judge and config.objective != "cyclegan":
        raise ValueError("--eye-judge works with the cyclegan objective only.")
    if config.eye_judge and world_size > 1:
        # Its discriminator sits outside the DDP-wrapped modules, so its gradients would not be averaged over ranks.
        raise ValueError("--eye-judge runs in one process only (not yet under DDP).")


def check_cycle_weights(config: TrainConfig) -> None:
    if not 0 <= config.cycle_surround <= 1:
        raise ValueError(f"--cycle-surround must be between 0 and 1 (1: the uniform cycle), "
                         f"not {config.cycle_surround:g}.")
    if config.cycle_eyes < 1:
        raise ValueError(f"--cycle-eyes must be at least 1 (1: no extra weight on the eyes), "
                         f"not {config.cycle_eyes:g}.")


class Trainer:
    def __init__(self, config: TrainConfig, device: str | None = None, num_workers: int | None = None,
                 dist_info: Distributed | None = None, precision: tuple[bool, str] | None = None) -> None:
        check_scales(config)
        check_r1(config)
        check_cycle_weights(config)
        check_warmup(config)
        check_projected(config)
        check_decay(config.ema_decay)
        self.config = config
        self.dist = dist_info or Distributed()
        check_eye_judge(config, self.dist.world_size)
        if device in (None, "", "auto"):
            device = f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        # ``precision``: a choice made earlier in this run on this same hardware (resume keeps it: a timing probe
        # could flip on a busy machine, and the run would then no longer continue exactly).
        self.bf16, self.precision_reason = precision or choose_precision(config, self.device)
        if config.channels_last not in CHANNELS_LAST_CHOICES:
            raise ValueError(f"unknown channels_last {config.channels_last!r}: choose from "
                             f"{', '.join(CHANNELS_LAST_CHOICES)}")
        self.channels_last = {"on": True, "off": False}.get(config.channels_last, cuda or self.bf16)
        self.out = Path(config.out)

        torch.manual_seed(config.seed)  # same initial weights on every rank
        # With the eye judge, the samples also say which files they are and how they were cut (the same images).
        self.dataset = UnpairedFaces(config.data, "train", config.size, seed=config.seed,
                                     positions=config.eye_judge > 0)
        self.steps_per_epoch = config.steps_per_epoch or math.ceil(len(self.dataset) / config.batch_size)
        self.total_steps = (config.epochs + config.epochs_decay) * self.steps_per_epoch
        self.num_workers = (2 if cuda else 0) if num_workers is None else num_workers
        self.cycle_weights_B = None  # the photo cycle's per-pixel weights (None: uniform, as published)
        if config.cycle_surround < 1 or config.cycle_eyes != 1:
            self.cycle_weights_B = face_region_weights(config.size, self.dataset.framing, config.cycle_surround,
                                                       load_size=self.dataset.load_size,
                                                       eyes=config.cycle_eyes).to(self.device)

        self.G = Generators(config.generator_config(), cycle_noise=config.cycle_noise).to(self.device)
        self.D = Discriminators(DiscriminatorConfig(ndf=config.ndf, spectral_norm=config.spectral_norm),
                                d_scales=config.d_scales, thumbnail=config.d_thumbnail, projected=config.d_projected,
                                image_size=config.size, projected_policy=config.diff_augment or DEFAULT_POLICY,
                                seed=config.seed).to(self.device)
        if config.diff_augment:
            from simpsonize.training.augment import diff_augment, parse_policy

            parse_policy(config.diff_augment)  # fail now, not at the first step
            self.D.augment = lambda x: diff_augment(x, config.diff_augment)
        if self.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        if config.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {config.objective!r}: choose from {', '.join(OBJECTIVES)}")
        self.one_sided = config.objective == "cut"
        betas = (config.beta1, 0.999)
        # G_A, D_A stay in their optimisers when one-sided: they get no gradients, so Adam leaves them as they are,
        # and a CycleGAN run's optimiser state still loads (--init-from).
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=betas)
        lr_d = config.lr_d or config.lr
        self.opt_D = torch.optim.Adam([*self.D.D_A.parameters(), *self.D.D_B.parameters()], lr=lr_d, betas=betas)
        schedule = linear_decay(config.epochs, config.epochs_decay, self.steps_per_epoch)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, schedule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, schedule)
        # The coarse and thumbnail discriminators have their own optimiser, so opt_D keeps a single-scale run's
        # parameter groups (--init-from a single-scale run then starts them fresh).
        self.extra_judges = config.d_scales > 1 or config.d_thumbnail > 0
        if self.extra_judges:
            self.opt_D_coarse = torch.optim.Adam([*self.D.D_B_coarse.parameters(), *self.D.D_B_thumb.parameters()],
                                                 lr=lr_d, betas=betas)
            self.sched_D_coarse = torch.optim.lr_scheduler.LambdaLR(self.opt_D_coarse, schedule)
        # The projected judge's heads have their own optimiser too (its frozen parts are buffers: nothing to train).
        self.projected = config.d_projected != "off"
        if self.projected:
            self.opt_D_projected = torch.optim.Adam(self.D.D_B_projected.parameters(), lr=lr_d, betas=betas)
            self.sched_D_projected = torch.optim.lr_scheduler.LambdaLR(self.opt_D_projected, schedule)
        # The eye judge (training/eye_judge.py): its own network, from its own seed, and its own optimiser.
        self.eye_judge = None
        if config.eye_judge:
            from simpsonize.training.eye_judge import EyeJudge

            self.eye_judge = EyeJudge(Path(config.data), self.dataset.files_a, self.dataset.files_b,
                                      self.dataset.load_size, config.size, seed=config.seed).to(self.device)
            self.opt_D_eye = torch.optim.Adam(self.eye_judge.parameters(), lr=lr_d, betas=betas)
            self.sched_D_eye = torch.optim.lr_scheduler.LambdaLR(self.opt_D_eye, schedule)
        self.one_sided_G: OneSided | None = None
        if self.one_sided:
            self.one_sided_G = OneSided(self.G.G_B, config.nce_patches).to(self.device)
            # The heads have their own optimiser, so opt_G keeps exactly a CycleGAN run's parameter groups.
            self.opt_F = torch.optim.Adam(self.one_sided_G.heads.parameters(), lr=config.lr, betas=betas)
            self.sched_F = torch.optim.lr_scheduler.LambdaLR(self.opt_F, schedule)
        # Only the main process saves, and DDP keeps every rank's generators identical, so only it averages.
        self.G_ema = generator_average(self.G, config.ema_decay) if config.ema_decay and self.dist.is_main else None
        self.pool_A = ImagePool(config.pool_size, seed=config.seed * 1000 + 2 * self.dist.rank)  # fakes of A->B
        self.pool_B = ImagePool(config.pool_size, seed=config.seed * 1000 + 2 * self.dist.rank + 1)
        self.step = 0

        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if cuda else None
            # D_A sits out when one-sided, D_B when the projected judge replaces it.
            unused = self.one_sided or config.d_projected == "alone"
            # The projected judge's frozen network is 4.7 M floats of buffers; DDP would broadcast them from rank 0
            # before every forward. They never change, and the discriminators' other buffers (spectral norm's
            # vectors) follow from weights that DDP keeps equal, so the ranks stay in step without it.
            broadcast = not self.projected
            if self.one_sided:
                self.G_train = DDP(self.one_sided_G, device_ids=ids)
            else:
                self.G_train = DDP(self.G, device_ids=ids)
            self.D_train = DDP(self.D, device_ids=ids, find_unused_parameters=unused, broadcast_buffers=broadcast)
        else:
            self.G_train = self.one_sided_G if self.one_sided else self.G
            self.D_train = self.D

        fixed = min(4, len(self.dataset.files_a), len(self.dataset.files_b))
        test_root = Path(config.data)
        sample_a = sorted((test_root / "testA").glob("*")) or self.dataset.files_a
        sample_b = sorted((test_root / "testB").glob("*")) or self.dataset.files_b
        self.sample_A = load_fixed(sample_a[:fixed], config.size).to(self.device)
        self.sample_B = load_fixed(sample_b[:fixed], config.size).to(self.device)

    # ----------------------------------------------------------------------------------------- one step
    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self, real_A: torch.Tensor, real_B: torch.Tensor, eyes: dict | None = None) -> dict[str, float]:
        """One step of every network. ``eyes``: the batch's file indices and crops (``UnpairedFaces(positions=True)``),
        needed by the eye judge only."""
        c = self.config
        if self.eye_judge is not None and eyes is None:
            raise ValueError("the eye judge needs the batch's positions (A_index, A_crop, B_index, B_crop)")
        if self.channels_last:
            real_A = real_A.contiguous(memory_format=torch.channels_last)
            real_B = real_B.contiguous(memory_format=torch.channels_last)
        identity = c.lambda_identity > 0
        if self.one_sided:
            return self.one_sided_step(real_A, real_B, identity)

        # Generators: D is frozen so its gradients stay clean for its own step. While the discriminators warm up,
        # the generators only translate (for D's fakes and the loss log).
        warming_up = self.step < c.d_warmup
        self.D.requires_grad_(False)
        if self.eye_judge is not None:
            self.eye_judge.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        with self.autocast(), torch.no_grad() if warming_up else nullcontext():
            out = self.G_train(real_A, real_B, identity)
            loss_G_A = lsgan(self.D.D_A(self.D.augment(out["fake_B"])), True)
            loss_G_B, loss_G_B_coarse, loss_G_B_proj = self.simpsons_generator_loss(out["fake_A"])
            loss_G_eye = self.eye_generator_loss(out["fake_A"], eyes)
        l1 = nn.functional.l1_loss
        loss_cycle_A = l1(out["rec_A"].float(), real_A) * c.lambda_cycle
        loss_cycle_B = weighted_l1(out["rec_B"].float(), real_B, self.cycle_weights_B) * c.lambda_cycle
        if identity:
            loss_idt_A = l1(out["idt_A"].float(), real_B) * c.lambda_cycle * c.lambda_identity
            loss_idt_B = l1(out["idt_B"].float(), real_A) * c.lambda_cycle * c.lambda_identity
        else:
            loss_idt_A = loss_idt_B = torch.zeros((), device=self.device)
        loss_tv = self.flatness(out["fake_A"])
        # The projected judge's loss is added (last, so that without it the sum is the same to the bit): each judge
        # pushes with its full weight, as the coarse scales do; an average would halve the PatchGAN's push against
        # the cycle and so change the balance of the recipe it is compared with.
        loss_G = (loss_G_A + loss_G_B + loss_G_B_coarse + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B
                  + loss_tv + loss_G_B_proj)
        if self.eye_judge is not None:  # only when on: off, the sum is the one before the flag, to the bit
            loss_G = loss_G + loss_G_eye
        if not warming_up:
            loss_G.backward()
        self.opt_G.step()  # without gradients (warming up) Adam leaves the generators and its moments alone

        # Discriminators, on real images and on fakes drawn from the history pools.
        self.D.requires_grad_(True)
        if self.eye_judge is not None:
            self.eye_judge.requires_grad_(True)
        self.zero_discriminator_grads()
        fake_B = self.pool_A.query(out["fake_B"].detach().float())
        fake_A = self.pool_B.query(out["fake_A"].detach().float())
        if self.channels_last:
            fake_A = fake_A.contiguous(memory_format=torch.channels_last)
            fake_B = fake_B.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            real_b, fake_b, real_a, fake_a, real_proj, fake_proj = self.D_train(real_A, real_B, fake_A, fake_B)
            loss_D_A = 0.5 * (lsgan(real_b, True) + lsgan(fake_b, False))
            loss_D_B, loss_D_B_coarse = self.simpsons_discriminator_loss(real_a, fake_a)
            loss_D_B_proj = self.projected_discriminator_loss(real_proj, fake_proj)
        loss_r1 = self.simpsons_r1(real_A)
        loss_D = loss_D_A + loss_D_B + loss_D_B_coarse + loss_r1 + loss_D_B_proj
        loss_D_eye = self.eye_discriminator_loss(real_A, out["fake_A"], eyes)
        if self.eye_judge is not None:
            loss_D = loss_D + loss_D_eye
        loss_D.backward()
        self.step_discriminators()

        self.sched_G.step()
        self.step += 1
        values = (loss_D_A, loss_G_A, loss_cycle_A, loss_idt_A, loss_D_B, loss_G_B, loss_cycle_B, loss_idt_B)
        losses = {name: float(v.detach()) for name, v in zip(LOSS_NAMES, values)}
        return {**losses, "nce": 0.0, "nce_idt": 0.0, "tv": float(loss_tv.detach()),
                "D_B_coarse": float(loss_D_B_coarse.detach()), "G_B_coarse": float(loss_G_B_coarse.detach()),
                "r1": float(loss_r1.detach()), "D_B_proj": float(loss_D_B_proj.detach()),
                "G_B_proj": float(loss_G_B_proj.detach()), "D_eye": float(loss_D_eye.detach()),
                "G_eye": float(loss_G_eye.detach())}

    def eye_generator_loss(self, fake_A: torch.Tensor, eyes: dict | None) -> torch.Tensor:
        """The eye judge's weighted push on G_B: its eyes, at the person's eye positions, should pass for the show's
        (0 when off)."""
        if self.eye_judge is None:
            return torch.zeros((), device=self.device)
        boxes = self.eye_judge.person_boxes(eyes["B_index"], eyes["B_crop"])
        return self.config.eye_judge * self.eye_judge.generator_loss(fake_A, boxes)

    def eye_discriminator_loss(self, real_A: torch.Tensor, fake_A: torch.Tensor, eyes: dict | None) -> torch.Tensor:
        """The eye judge's own loss: the show's eye patches against this step's generated ones (0 when off)."""
        if self.eye_judge is None:
            return torch.zeros((), device=self.device)
        with self.autocast():
            return self.eye_judge.discriminator_loss(
                real_A, self.eye_judge.show_boxes(eyes["A_index"], eyes["A_crop"]),
                fake_A, self.eye_judge.person_boxes(eyes["B_index"], eyes["B_crop"]))

    def simpsons_generator_loss(self, fake_A: torch.Tensor):
        """G_B's least-squares losses against the Simpsons-side judges: D_B's scale, the coarser scales (summed), and
        the projected judge (its scales averaged); 0 for a judge that is off."""
        zero = torch.zeros((), device=self.device)
        fine, coarse = lsgan_scales(self.D.judge_simpsons(fake_A), True) if self.D.patch_judges else (zero, zero)
        projected = projected_lsgan(self.D.judge_projected(fake_A), True) if self.projected else zero
        return fine, coarse, projected

    def simpsons_discriminator_loss(self, real: list[torch.Tensor], fake: list[torch.Tensor]):
        """D_B's least-squares loss at its own scale, and summed over the coarser scales (0 with --d-projected
        alone)."""
        if not real:
            zero = torch.zeros((), device=self.device)
            return zero, zero
        real_fine, real_coarse = lsgan_scales(real, True)
        fake_fine, fake_coarse = lsgan_scales(fake, False)
        return 0.5 * (real_fine + fake_fine), 0.5 * (real_coarse + fake_coarse)

    def projected_discriminator_loss(self, real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
        """The projected judge's least-squares loss, as D_B's: half on real, half on fake (0 when it is off)."""
        if not real:
            return torch.zeros((), device=self.device)
        return 0.5 * (projected_lsgan(real, True) + projected_lsgan(fake, False))

    def simpsons_r1(self, real_A: torch.Tensor) -> torch.Tensor:
        """The weighted, lazy R1 penalty of the Simpsons-side discriminators (0 when off or between its steps).

        Part of the discriminators' one backward pass, so under DDP their gradients are reduced once, as usual."""
        c = self.config
        if not c.r1_gamma or self.step % c.r1_every:
            return torch.zeros((), device=self.device)
        with self.autocast():
            penalty = r1_penalty(self.D.judge_simpsons, real_A)
        return 0.5 * c.r1_gamma * c.r1_every * penalty

    def zero_discriminator_grads(self) -> None:
        self.opt_D.zero_grad(set_to_none=True)
        if self.extra_judges:
            self.opt_D_coarse.zero_grad(set_to_none=True)
        if self.projected:
            self.opt_D_projected.zero_grad(set_to_none=True)
        if self.eye_judge is not None:
            self.opt_D_eye.zero_grad(set_to_none=True)

    def step_discriminators(self) -> None:
        """The discriminators' optimiser steps, and their learning-rate schedules."""
        self.opt_D.step()
        self.sched_D.step()
        if self.extra_judges:
            self.opt_D_coarse.step()
            self.sched_D_coarse.step()
        if self.projected:
            self.opt_D_projected.step()
            self.sched_D_projected.step()
        if self.eye_judge is not None:
            self.opt_D_eye.step()
            self.sched_D_eye.step()

    def flatness(self, fake_A: torch.Tensor) -> torch.Tensor:
        """The weighted total-variation prior on the Simpsons-side translations (0 when switched off)."""
        if not self.config.lambda_tv:
            return torch.zeros((), device=self.device)
        return self.config.lambda_tv * total_variation(fake_A.float())

    def one_sided_step(self, real_A: torch.Tensor, real_B: torch.Tensor, identity: bool) -> dict[str, float]:
        """CUT: G_B against D_B, with PatchNCE keeping the person; G_A and D_A sit out."""
        c = self.config
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        self.opt_F.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.G_train(real_A, real_B, identity)
            loss_G_B, loss_G_B_coarse, loss_G_B_proj = self.simpsons_generator_loss(out["fake_A"])
        loss_nce = out["nce"].float()
        loss_nce_idt = out["nce_idt"].float() if identity else torch.zeros((), device=self.device)
        # CUT averages the two NCE terms when the identity term is on.
        nce_total = c.lambda_nce * ((loss_nce + loss_nce_idt) * 0.5 if identity else loss_nce)
        loss_tv = self.flatness(out["fake_A"])
        (loss_G_B + loss_G_B_coarse + nce_total + loss_tv + loss_G_B_proj).backward()
        self.opt_G.step()
        self.opt_F.step()

        self.D.requires_grad_(True)
        self.zero_discriminator_grads()
        fake_A = self.pool_B.query(out["fake_A"].detach().float())
        if self.channels_last:
            fake_A = fake_A.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            _, _, real_a, fake_a, real_proj, fake_proj = self.D_train(real_A, None, fake_A, None)
            loss_D_B, loss_D_B_coarse = self.simpsons_discriminator_loss(real_a, fake_a)
            loss_D_B_proj = self.projected_discriminator_loss(real_proj, fake_proj)
        loss_r1 = self.simpsons_r1(real_A)
        (loss_D_B + loss_D_B_coarse + loss_r1 + loss_D_B_proj).backward()
        self.step_discriminators()

        for scheduler in (self.sched_G, self.sched_F):
            scheduler.step()
        self.step += 1
        losses = dict.fromkeys(LOSS_NAMES, 0.0)
        losses.update(D_B=float(loss_D_B.detach()), G_B=float(loss_G_B.detach()), nce=float(loss_nce.detach()),
                      nce_idt=float(loss_nce_idt.detach()), tv=float(loss_tv.detach()),
                      D_B_coarse=float(loss_D_B_coarse.detach()), G_B_coarse=float(loss_G_B_coarse.detach()),
                      r1=float(loss_r1.detach()), D_B_proj=float(loss_D_B_proj.detach()),
                      G_B_proj=float(loss_G_B_proj.detach()))
        return losses

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "step": self.step,
            "precision": {"bf16": self.bf16, "reason": self.precision_reason, "hardware": hardware_name(self.device)},
            "G_A": self.G.G_A.state_dict(), "G_B": self.G.G_B.state_dict(),
            "D_A": self.D.D_A.state_dict(), "D_B": self.D.D_B.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "sched_G": self.sched_G.state_dict(), "sched_D": self.sched_D.state_dict(),
            "pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict(),
            **({"G_ema": self.G_ema.state_dict()} if self.G_ema is not None else {}),
            **({"heads": self.one_sided_G.heads.state_dict(), "opt_F": self.opt_F.state_dict(),
                "sched_F": self.sched_F.state_dict()} if self.one_sided else {}),
            **({"D_B_coarse": self.D.D_B_coarse.state_dict(), "D_B_thumb": self.D.D_B_thumb.state_dict(),
                "opt_D_coarse": self.opt_D_coarse.state_dict(),
                "sched_D_coarse": self.sched_D_coarse.state_dict()} if self.extra_judges else {}),
            **({"D_B_projected": self.D.D_B_projected[0].trained_state_dict(),
                "opt_D_projected": self.opt_D_projected.state_dict(),
                "sched_D_projected": self.sched_D_projected.state_dict()} if self.projected else {}),
            **({"D_eye": self.eye_judge.state_dict(), "opt_D_eye": self.opt_D_eye.state_dict(),
                "sched_D_eye": self.sched_D_eye.state_dict()} if self.eye_judge is not None else {}),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for name, module in (("G_A", self.G.G_A), ("G_B", self.G.G_B), ("D_A", self.D.D_A), ("D_B", self.D.D_B)):
            module.load_state_dict(state[name])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.sched_G.load_state_dict(state["sched_G"])
        self.sched_D.load_state_dict(state["sched_D"])
        self.pool_A.load_state_dict(state["pool_A"], self.device)
        self.pool_B.load_state_dict(state["pool_B"], self.device)
        if self.G_ema is not None and "G_ema" in state:  # without it (--ema-decay added on resume) it starts here
            self.G_ema.load_state_dict(state["G_ema"])
        if self.one_sided:
            self.one_sided_G.heads.load_state_dict(state["heads"])
            self.opt_F.load_state_dict(state["opt_F"])
            self.sched_F.load_state_dict(state["sched_F"])
        if self.extra_judges:
            self.D.D_B_coarse.load_state_dict(state["D_B_coarse"])
            self.D.D_B_thumb.load_state_dict(state.get("D_B_thumb", {}))
            self.opt_D_coarse.load_state_dict(state["opt_D_coarse"])
            self.sched_D_coarse.load_state_dict(state["sched_D_coarse"])
        if self.projected:
            self.D.D_B_projected[0].load_trained_state_dict(state["D_B_projected"])
            self.opt_D_projected.load_state_dict(state["opt_D_projected"])
            self.sched_D_projected.load_state_dict(state["sched_D_projected"])
        if self.eye_judge is not None:
            self.eye_judge.load_state_dict(state["D_eye"])
            self.opt_D_eye.load_state_dict(state["opt_D_eye"])
            self.sched_D_eye.load_state_dict(state["sched_D_eye"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # Architecture fields that must match for another run's networks to load into this one.
    NETWORK_FIELDS = ("ngf", "n_blocks", "upsampling", "ndf", "spectral_norm")

    def load_networks(self, source: Path) -> int:
        """Start from the four networks of another run (a run folder or its checkpoint.pt); return its step.

        Fine-tuning a trained run with a changed objective costs a fraction of training from scratch, and gives
        an ablation that compares changes from the same starting point.
        """
        path = Path(source)
        path = path / "checkpoint.pt" if path.is_dir() else path
        if not path.is_file():
            raise ValueError(f"{path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=False)
        theirs = state.get("config") or {}
        ours = asdict(self.config)
        different = [f"{name} {theirs.get(name)!r} (this run {ours[name]!r})"
                     for name in self.NETWORK_FIELDS if theirs.get(name, ours[name]) != ours[name]]
        if different:
            raise ValueError(f"{path} has a different architecture: {', '.join(different)}")
        for name, module in (("G_A", self.G.G_A), ("G_B", self.G.G_B), ("D_A", self.D.D_A), ("D_B", self.D.D_B)):
            module.load_state_dict(state[name])
        # Adam's moments come along, so the optimisation continues rather than restarts; the learning rates follow
        # this run's schedule, not the end of the other run's. (Both with and without the moments, a trained
        # CycleGAN diverged within five steps when its rate jumped to 2e-4; 5e-5 held.)
        for optimizer, scheduler, name in ((self.opt_G, self.sched_G, "opt_G"), (self.opt_D, self.sched_D, "opt_D")):
            optimizer.load_state_dict(state[name])
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
                group["initial_lr"] = scheduler.base_lrs[0]
        if self.one_sided and "heads" in state:  # a one-sided run continued: its PatchNCE heads too
            self.one_sided_G.heads.load_state_dict(state["heads"])
            self.opt_F.load_state_dict(state["opt_F"])
            for group, lr in zip(self.opt_F.param_groups, self.sched_F.get_last_lr()):
                group["lr"] = lr
                group["initial_lr"] = self.sched_F.base_lrs[0]
        # A multi-scale run continued: its coarse discriminators too, when they match. From a single-scale run they
        # start fresh.
        theirs = state.get("config") or {}
        same_scales = (theirs.get("d_scales", 1), theirs.get("d_thumbnail", 0)) == (self.config.d_scales,
                                                                                  self.config.d_thumbnail)
        if self.extra_judges and same_scales and "D_B_coarse" in state:
            self.D.D_B_coarse.load_state_dict(state["D_B_coarse"])
            self.D.D_B_thumb.load_state_dict(state.get("D_B_thumb", {}))
            self.opt_D_coarse.load_state_dict(state["opt_D_coarse"])
            for group, lr in zip(self.opt_D_coarse.param_groups, self.sched_D_coarse.get_last_lr()):
                group["lr"] = lr
                group["initial_lr"] = self.sched_D_coarse.base_lrs[0]
        # A run with the projected judge continued: its heads too; from a run without one they start fresh.
        if self.projected and "D_B_projected" in state:
            self.D.D_B_projected[0].load_trained_state_dict(state["D_B_projected"])
            self.opt_D_projected.load_state_dict(state["opt_D_projected"])
            for group, lr in zip(self.opt_D_projected.param_groups, self.sched_D_projected.get_last_lr()):
                group["lr"] = lr
                group["initial_lr"] = self.sched_D_projected.base_lrs[0]
        return int(state["step"])

    def save_checkpoint(self) -> Path:
        path = self.out / "checkpoint.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # never leave a half-written checkpoint behind
        return path

    def save_snapshot(self) -> Path:
        """Both generators at this step, as served-weights files, so `test --all-snapshots` can rank them; with
        --ema-decay their moving average too, in a folder of its own (step_N_ema), ranked beside them."""
        folder = self.out / "snapshots" / f"step_{self.step:07d}"
        self._save_generators(folder, self.G)
        if self.G_ema is not None:
            self._save_generators(folder.with_name(folder.name + "_ema"), self.G_ema.module,
                                  {"ema_decay": self.config.ema_decay})
        return folder

    def _save_generators(self, folder: Path, generators: nn.Module, extra: dict | None = None) -> None:
        for name, generator, direction in (("G_A", generators.G_A, "AtoB"), ("G_B", generators.G_B, "BtoA")):
            meta = {"direction": direction, "step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                    "run": str(self.out), "framing": self.dataset.framing, **(extra or {})}
            save_generator(folder / f"{name}.safetensors", generator, input_size=self.config.size, extra=meta)

    # ----------------------------------------------------------------------------------- visuals
    @torch.no_grad()
    def save_samples(self) -> Path:
        from simpsonize.training.visuals import save_grid

        self.G.eval()
        with self.autocast():
            fake_B = self.G.G_A(self.sample_A).float()
            rec_A = self.G.G_B(fake_B).float()
            fake_A = self.G.G_B(self.sample_B).float()
            rec_B = self.G.G_A(fake_A).float()
        self.G.train()
        rows = {"real_A": self.sample_A, "fake_B": fake_B, "rec_A": rec_A,
                "real_B": self.sample_B, "fake_A": fake_A, "rec_B": rec_B}
        return save_grid(self.out / "samples" / f"step_{self.step:07d}.png", rows)

    # -------------------------------------------------------------------------------------- loop
    def fit(self, max_minutes: float | None = None, max_steps: int | None = None,
            max_cpu_minutes: float | None = None) -> dict:
        """Train until the schedule ends or a budget runs out. ``max_cpu_minutes`` counts this process's CPU time
        (all its threads), so ablation arms get equal compute even when something else shares the machine."""
        c = self.config
        started = time.time()
        cpu_started = time.process_time()
        last_checkpoint = started
        end_step = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        sample_every = c.sample_every or self.steps_per_epoch
        loader = DataLoader(
            self.dataset,
            batch_sampler=StepBatches(self.step, end_step, c.batch_size, self.dist.world_size, self.dist.rank),
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # The loader draws a seed for its workers when it starts; from its own generator, so that starting it
            # again on --resume does not move torch's global RNG (DiffAugment and PatchNCE draw from that one).
            generator=torch.Generator().manual_seed(c.seed * 1_000_003 + self.step),
        )
        log = LossLog(self.out / "losses.csv", resume_step=self.step) if self.dist.is_main else None
        progress = None
        if self.dist.is_main:
            from tqdm import tqdm

            progress = tqdm(total=end_step, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        stopped_by_clock = False
        step_started = time.time()
        for batch in loader:
            eyes = None
            if self.eye_judge is not None:  # where the batch's eyes are: its files and crops
                eyes = {k: batch[k] for k in ("A_index", "A_crop", "B_index", "B_crop")}
            losses = self.train_step(batch["A"].to(self.device, non_blocking=True),
                                     batch["B"].to(self.device, non_blocking=True), eyes)
            if self.G_ema is not None:
                self.G_ema.update_parameters(self.G)
            now = time.time()
            if self.dist.is_main:
                log.write(self.step, self.step / self.steps_per_epoch, self.sched_G.get_last_lr()[0], losses,
                          now - step_started)
                progress.update(1)
                if self.step % 20 == 0:
                    progress.set_postfix({k: f"{v:.2f}" for k, v in losses.items() if k in ("G_B", "D_B", "cycle_B")})
                if self.step % sample_every == 0:
                    self.save_samples()
                if c.snapshot_every and self.step % c.snapshot_every == 0:
                    self.save_snapshot()
            step_started = now
            over_budget = (max_minutes is not None and (now - started) / 60 >= max_minutes) or (
                max_cpu_minutes is not None and (time.process_time() - cpu_started) / 60 >= max_cpu_minutes)
            if self.dist.world_size > 1:  # every rank must stop on the same step
                flag = torch.tensor([1.0 if over_budget else 0.0], device=self.device)
                dist.all_reduce(flag)
                over_budget = bool(flag.item() > 0)
            if self.dist.is_main and (now - last_checkpoint) / 60 >= c.checkpoint_minutes:
                self.save_checkpoint()
                last_checkpoint = now
            if over_budget:
                stopped_by_clock = True
                break
        if progress is not None:
            progress.close()
        minutes = (time.time() - started) / 60
        cpu_minutes = (time.process_time() - cpu_started) / 60
        if self.dist.is_main:
            self.save_checkpoint()
            self.save_samples()
            if c.snapshot_every:
                self.save_snapshot()
            log.close()
            from simpsonize.training.visuals import plot_losses

            plot_losses(self.out / "losses.csv", self.out / "losses.png")
        return {"step": self.step, "total_steps": self.total_steps, "minutes": minutes, "cpu_minutes": cpu_minutes,
                "stopped_by_clock": stopped_by_clock, "finished": self.step >= self.total_steps}


class LossLog:
    """Appends one CSV row per step; on resume, rows past the checkpoint are dropped so the log stays exact."""

    def __init__(self, path: Path, resume_step: int) -> None:
        columns = ["step", "epoch", "lr", *LOSS_NAMES, "seconds"]
        rows = []
        if path.exists() and resume_step > 0:
            with path.open() as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        self.handle = path.open("w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=columns)
        self.writer.writeheader()
        self.writer.writerows(rows)

    def write(self, step: int, epoch: float, lr: float, losses: dict[str, float], seconds: float) -> None:
        self.writer.writerow({"step": step, "epoch": f"{epoch:.4f}", "lr": f"{lr:.3e}",
                              **{k: f"{v:.5f}" for k, v in losses.items()}, "seconds": f"{seconds:.3f}"})
        if step % 10 == 0:
            self.handle.flush()

    def close(self) -> None:
        self.handle.close()


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(data="", out="")
    parser.add_argument("--data", type=Path, help="dataset from `simpsonize prepare` (not needed with --resume)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, samples)")
    parser.add_argument("--size", type=int, default=defaults.size, help="training crop side (multiple of 4)")
    parser.add_argument("--ngf", type=int, default=defaults.ngf)
    parser.add_argument("--n-blocks", type=int, default=defaults.n_blocks)
    parser.add_argument("--upsampling", choices=("transpose", "resize_conv"), default=defaults.upsampling,
                        help="transpose: the reference layout; resize_conv: avoids checkerboard artefacts")
    parser.add_argument("--ndf", type=int, default=defaults.ndf)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs at the initial learning rate (default {defaults.epochs}; with --resume: "
                             "lengthen or shorten the run's schedule, e.g. to add a decay after an ablation arm won)")
    parser.add_argument("--epochs-decay", type=int, default=None,
                        help=f"epochs of linear decay to 0 after --epochs (default {defaults.epochs_decay})")
    parser.add_argument("--steps-per-epoch", type=int, default=0,
                        help="define an epoch as this many steps (default: one pass over the larger domain)")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lr-d", type=float, default=0.0, help="discriminator learning rate (default: --lr)")
    parser.add_argument("--lambda-cycle", type=float, default=defaults.lambda_cycle)
    parser.add_argument("--lambda-identity", type=float, default=defaults.lambda_identity)
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size,
                        help="fakes kept in each discriminator's history pool (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 on CUDA; on CPU bf16 only with AMX or where a 3-step probe finds it faster")
    parser.add_argument("--channels-last", choices=CHANNELS_LAST_CHOICES, default="auto",
                        help="memory layout: auto (channels_last with bf16 or on CUDA), on, off; `simpsonize bench "
                             "train` says which is faster on this CPU (on a Zen 4 EPYC, bf16 was 1.13x faster off)")
    parser.add_argument("--diff-augment", default="", metavar="POLICY",
                        help="DiffAugment for every discriminator input, e.g. color,translation,cutout (default: off)")
    parser.add_argument("--spectral-norm", action="store_true", help="spectral normalisation in the discriminators")
    parser.add_argument("--d-scales", type=int, default=defaults.d_scales, metavar="N",
                        help="scales the Simpsons-side discriminator judges (pix2pixHD); 3 at 128 px sees whole faces")
    parser.add_argument("--d-thumbnail", type=int, default=defaults.d_thumbnail, metavar="PX",
                        help="add a Simpsons-side discriminator that judges PX x PX thumbnails of whole crops "
                             "(their colour layout), one logit each; e.g. 16 (default 0: off)")
    parser.add_argument("--d-warmup", type=int, default=defaults.d_warmup, metavar="STEPS",
                        help="the run's first STEPS steps train only the discriminators, so that ones added by a "
                             "fine-tune (--init-from) have learnt something before the generators follow them")
    parser.add_argument("--r1-gamma", type=float, default=defaults.r1_gamma, metavar="GAMMA",
                        help="R1 penalty on the Simpsons-side discriminators at real Simpsons faces, so they cannot "
                             "learn the 1,183 faces by heart (Mescheder et al., 2018; default 0: off)")
    parser.add_argument("--r1-every", type=int, default=defaults.r1_every, metavar="N",
                        help="apply R1 every N steps with N times the weight (lazy, as StyleGAN2; default 4)")
    parser.add_argument("--objective", choices=OBJECTIVES, default=defaults.objective,
                        help="cyclegan: the published objective; cut: one-sided (G_B and D_B only) with PatchNCE "
                             "instead of the cycle (Park et al., 2020); --lambda-identity > 0 adds CUT's identity NCE")
    parser.add_argument("--d-projected", choices=PROJECTED_MODES, default=defaults.d_projected,
                        help="a Projected GAN judge of the Simpsons side on frozen ImageNet EfficientNet-Lite0 "
                             "features (Sauer et al., 2021): alone (instead of the PatchGAN D_B) or with-patch (beside "
                             "it); default off")
    parser.add_argument("--eye-judge", type=float, default=defaults.eye_judge, metavar="WEIGHT",
                        help="a local judge of the eyes (training/eye_judge.py): G_B's eyes at the person's eye "
                             "positions against the show's eye patches, its push on G_B weighted by WEIGHT, e.g. 1 "
                             "(default 0: off)")
    parser.add_argument("--lambda-nce", type=float, default=defaults.lambda_nce, help="PatchNCE weight (--objective cut)")
    parser.add_argument("--lambda-tv", type=float, default=defaults.lambda_tv, metavar="WEIGHT",
                        help="total-variation prior on the real->Simpsons translations: flat colour fields with sharp "
                             "outlines, as the show draws them (default 0: off)")
    parser.add_argument("--cycle-surround", type=float, default=defaults.cycle_surround, metavar="WEIGHT",
                        help="weight of the photo cycle's L1 outside the face (an ellipse placed from the crop's "
                             "framing), so hair and background can be drawn flat instead of carrying the photo's "
                             "texture back (default 1: the uniform cycle)")
    parser.add_argument("--cycle-eyes", type=float, default=defaults.cycle_eyes, metavar="WEIGHT",
                        help="weight of the photo cycle's L1 on the eyes (two discs placed from the crop's "
                             "framing), so the drawing keeps where the pupils look instead of blank eyes (default 1: "
                             "no extra weight)")
    parser.add_argument("--cycle-noise", type=float, default=defaults.cycle_noise, metavar="SIGMA",
                        help="Gaussian noise (in [-1, 1] pixels) added to each translation before it is translated "
                             "back, so the cycle cannot be closed through hidden noise (default 0: off)")
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay, metavar="DECAY",
                        help="also keep a moving average of the generators' weights (e.g. 0.999), saved with every "
                             "snapshot as step_N_ema (0: off)")
    parser.add_argument("--init-from", type=Path, default=None, metavar="RUN",
                        help="start a new run from the networks and Adam moments of another run's checkpoint (same "
                             "architecture); the learning-rate schedule, pools and step count start fresh")
    # These three default to None so that --resume keeps the run's own cadence unless one is given again.
    parser.add_argument("--sample-every", type=int, default=None, help="steps between sample grids (0: per epoch)")
    parser.add_argument("--snapshot-every", type=int, default=None,
                        help="steps between G_B snapshots kept for `simpsonize test --all-snapshots` (0: none)")
    parser.add_argument("--checkpoint-minutes", type=float, default=None,
                        help=f"minutes between checkpoints (default {defaults.checkpoint_minutes:g})")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop cleanly with a checkpoint after this")
    parser.add_argument("--max-cpu-minutes", type=float, default=None,
                        help="stop after this much CPU time of this process (equal-compute ablations)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many more steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--num-workers", type=int, default=None, help="data loader processes")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=str(args.data), out=str(args.out), size=args.size, ngf=args.ngf, n_blocks=args.n_blocks,
        upsampling=args.upsampling, ndf=args.ndf, batch_size=args.batch_size,
        epochs=TrainConfig.epochs if args.epochs is None else args.epochs,
        epochs_decay=TrainConfig.epochs_decay if args.epochs_decay is None else args.epochs_decay,
        steps_per_epoch=args.steps_per_epoch, lr=args.lr, lr_d=args.lr_d,
        lambda_cycle=args.lambda_cycle, lambda_identity=args.lambda_identity, pool_size=args.pool_size,
        seed=args.seed, precision=args.precision, channels_last=args.channels_last,
        diff_augment=args.diff_augment, spectral_norm=args.spectral_norm, cycle_noise=args.cycle_noise,
        d_scales=args.d_scales, d_thumbnail=args.d_thumbnail, d_warmup=args.d_warmup, r1_gamma=args.r1_gamma,
        r1_every=args.r1_every,
        d_projected=args.d_projected, eye_judge=args.eye_judge,
        objective=args.objective, lambda_nce=args.lambda_nce, lambda_tv=args.lambda_tv,
        cycle_surround=args.cycle_surround,
        cycle_eyes=args.cycle_eyes, ema_decay=args.ema_decay,
        init_from=str(args.init_from) if args.init_from else "",
        **{name: getattr(args, name) for name in RUNTIME_OPTIONS if getattr(args, name) is not None},
    )


def run(args: argparse.Namespace) -> int:
    info = Distributed.from_env()
    if info.world_size > 1:
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
    try:
        code = _run(args, info)
        if dist.is_initialized():
            # Rank 0 still writes the last checkpoint and its summary when the others are done; a rank that tears its
            # gloo group down while a peer is still connected can abort in gloo's threads ("terminate called without
            # an active exception", seen once in CI). All ranks leave together.
            dist.barrier()
        return code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def hardware_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "CPU"


def record_session(out: Path, trainer: Trainer, start_step: int) -> None:
    """Append where and how this stretch of training ran (the model card reports the hardware)."""
    path = out / "sessions.json"
    sessions = json.loads(path.read_text()) if path.exists() else []
    device = trainer.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    sessions.append({"start_step": start_step, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "device": f"{device.type}: {name}", "threads": torch.get_num_threads(),
                     "world_size": trainer.dist.world_size, "precision": "bf16" if trainer.bf16 else "fp32",
                     "precision_reason": trainer.precision_reason,
                     "torch": torch.__version__})
    path.write_text(json.dumps(sessions, indent=2))


def _run(args: argparse.Namespace, info: Distributed) -> int:
    out: Path = args.out
    checkpoint = out / "checkpoint.pt"
    state = None
    if args.resume:
        if not checkpoint.exists():
            print(f"error: --resume was given but {checkpoint} does not exist.")
            return 2
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = TrainConfig.from_dict(state["config"])
        config.out = str(out)  # the folder may have been copied or moved: write where we were told to
        for name in RUNTIME_OPTIONS:  # only those given again; the rest stay as the run had them
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        for name in ("epochs", "epochs_decay"):  # a new schedule length, only when asked for
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
    else:
        if args.data is None:
            print("error: --data is required for a new run.")
            return 2
        if checkpoint.exists():
            print(f"error: {out} already holds a run; pass --resume to continue it or choose another --out.")
            return 2
        if args.size % 4:
            print("error: --size must be a multiple of 4.")
            return 2
        if args.diff_augment:
            from simpsonize.training.augment import parse_policy

            try:
                parse_policy(args.diff_augment)
            except ValueError as exc:
                print(f"error: --diff-augment: {exc}.")
                return 2
        config = config_from_args(args)
    precision = None
    if state is not None and args.precision == "auto":
        saved = state.get("precision") or {}
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        if saved.get("hardware") == hardware_name(device):
            kept = " (kept from the run's earlier session)"
            precision = (bool(saved["bf16"]), saved["reason"].removesuffix(kept) + kept)  # once, however many resumes
    elif args.resume and args.precision != "auto":
        config.precision = args.precision
    try:
        trainer = Trainer(config, device=args.device, num_workers=args.num_workers, dist_info=info,
                          precision=precision)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
        record_session(out, trainer, state["step"] if state else 0)
    if state is not None:
        trainer.load_state_dict(state)
    elif args.init_from is not None:
        try:
            start = trainer.load_networks(args.init_from)
        except ValueError as exc:
            print(f"error: --init-from: {exc}")
            return 2
        if info.is_main:
            print(f"train: networks from {args.init_from} (its step {start}); the schedule starts fresh")
    if info.is_main:
        print(f"train: precision {'bf16' if trainer.bf16 else 'fp32'} ({trainer.precision_reason}) on "
              f"{_cpu_name() if trainer.device.type == 'cpu' else trainer.device}")
    summary = trainer.fit(max_minutes=args.max_minutes, max_steps=args.max_steps,
                          max_cpu_minutes=args.max_cpu_minutes)
    if info.is_main:
        how = "stopped by its time budget" if summary["stopped_by_clock"] else (
            "finished" if summary["finished"] else "stopped by --max-steps")
        print(f"train: {how} at step {summary['step']}/{summary['total_steps']} after {summary['minutes']:.1f} min "
              f"({summary['cpu_minutes']:.1f} CPU min) "
              f"on {trainer.device} ({'bf16' if trainer.bf16 else 'fp32'}, world size {info.world_size}); "
              f"checkpoint {out / 'checkpoint.pt'}")
    return 0
