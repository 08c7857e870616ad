"""bf16 or fp32, and which memory layout: chosen per machine, because on CPUs both answers flip from one to the next.

bf16 autocast is a trap on CPUs without bf16 hardware: on an AVX2-only EPYC one step took 75 s in bf16 against 1.84 s
in fp32, while an AMX Xeon ran it 3x faster. The layout flips too: channels_last came with bf16 because it was faster
on an AMX Xeon, until `simpsonize bench train` found bf16 steps 1.13x faster without it on a Zen 4 EPYC. So
``--channels-last auto`` is channels_last on CUDA and contiguous for fp32 on a CPU, and for bf16 on a CPU it times
bf16 steps in both layouts and takes channels_last only where it is at least 5 % faster.

The timing probe runs on throwaway networks of the run's size and leaves torch's RNG as it was. When the precision
probe runs, it times bf16 in each layout the run may use, and the layout choice reuses those times. A resumed run
keeps both choices on the same hardware (``kept_precision``, ``kept_layout`` in training/train.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from simpsonize.cpu import cpu_flags, cpu_model_name
from simpsonize.model.networks import DiscriminatorConfig
from simpsonize.training.config import TrainConfig
from simpsonize.training.networks import Discriminators, Generators

# What a probe times: (bf16, channels_last).
FP32, BF16, BF16_CHANNELS_LAST = (False, False), (True, False), (True, True)
# The layouts bf16 may run in, by --channels-last.
BF16_LAYOUTS = {"on": (BF16_CHANNELS_LAST,), "off": (BF16,), "auto": (BF16, BF16_CHANNELS_LAST)}


def hardware_name(device: torch.device) -> str:
    """What a precision or layout choice was made on: a resumed run keeps its choices only on the same hardware."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()


def choose_precision(config: TrainConfig, device: torch.device, timings: dict | None = None) -> tuple[bool, str]:
    """(use bf16, why). On CPU: bf16 with AMX; otherwise time 3 steps of each (after one warm-up) on this model and
    take bf16 only if it is at least 10 % faster, in the faster of the layouts ``--channels-last`` allows. The probe's
    times go into ``timings`` (by variant), where ``choose_channels_last`` finds them."""
    if config.precision in ("bf16", "fp32"):
        return config.precision == "bf16", f"asked for {config.precision}"
    if device.type == "cuda":
        return True, "auto: CUDA"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return True, "auto: CPU has AMX (amx_bf16)"
    layouts = BF16_LAYOUTS.get(config.channels_last, BF16_LAYOUTS["auto"])
    timings = probed(config, device, (FP32, *layouts), timings)
    fp32_s, bf16_s = timings[FP32], min(timings[variant] for variant in layouts)
    has = "has avx512_bf16" if "avx512_bf16" in flags else "has no AMX or avx512_bf16"
    if bf16_s < 0.9 * fp32_s:
        return True, f"auto: CPU {has}; probe: bf16 {bf16_s:.3f} s vs fp32 {fp32_s:.3f} s per step"
    return False, f"auto: CPU {has}; probe: fp32 {fp32_s:.3f} s vs bf16 {bf16_s:.3f} s per step"


def choose_channels_last(
    config: TrainConfig, device: torch.device, bf16: bool, timings: dict | None = None
) -> tuple[bool, str]:
    """(use channels_last, why). ``--channels-last`` on or off as asked; auto: channels_last on CUDA, contiguous for
    fp32 on a CPU, and for bf16 on a CPU channels_last only if a probe (3 steps in each layout after one warm-up)
    finds it at least 5 % faster. ``timings``: what the precision probe timed already, not timed again."""
    if config.channels_last in ("on", "off"):
        return config.channels_last == "on", f"asked for {config.channels_last}"
    if device.type == "cuda":
        return True, "auto: CUDA"
    if not bf16:
        # fp32: contiguous, as measured by bench train (0.67× vs bf16); bench train times fp32 only contiguous, and
        # contiguous is what auto always gave fp32 on a CPU.
        return False, "auto: fp32 on a CPU"
    timings = probed(config, device, (BF16, BF16_CHANNELS_LAST), timings)
    contiguous_s, channels_last_s = timings[BF16], timings[BF16_CHANNELS_LAST]
    if channels_last_s < 0.95 * contiguous_s:
        return True, (
            f"auto: bf16 on a CPU; probe: channels_last {channels_last_s:.3f} s vs contiguous {contiguous_s:.3f} s "
            "per step"
        )
    return False, (
        f"auto: bf16 on a CPU; probe: contiguous {contiguous_s:.3f} s vs channels_last {channels_last_s:.3f} s per step"
    )


def probed(
    config: TrainConfig, device: torch.device, variants: Sequence[tuple[bool, bool]], timings: dict | None
) -> dict:
    """``timings`` (a new dict when None) with the variants it lacks timed by ``probe_step_seconds``."""
    timings = {} if timings is None else timings
    missing = [variant for variant in variants if variant not in timings]
    if missing:
        timings.update(zip(missing, probe_step_seconds(config, device, missing)))
    return timings


def probe_step_seconds(
    config: TrainConfig, device: torch.device, variants: Sequence[tuple[bool, bool]], steps: int = 3
) -> tuple[float, ...]:
    """Median seconds of a generator+discriminator forward/backward in each ``(bf16, channels_last)`` variant (after
    one warm-up step), in their order, on throwaway networks of the run's size; torch's RNG is restored afterwards so
    the run itself is unchanged. A bf16 step that takes 20x the fp32 one timed before it is hopeless (no bf16
    hardware): its variant, and the bf16 ones after it, are not timed further (inf)."""
    with torch.random.fork_rng(devices=[]):
        G = Generators(config.generator_config()).to(device)
        D = Discriminators(
            DiscriminatorConfig(ndf=config.ndf), projected=config.d_projected, image_size=config.size
        ).to(device)
        x = torch.rand(config.batch_size, 3, config.size, config.size, device=device) * 2 - 1
        results: list[float] = []
        fp32_s, hopeless = None, False
        for bf16, channels_last in variants:
            if bf16 and hopeless:
                results.append(math.inf)
                continue
            layout = torch.channels_last if channels_last else torch.contiguous_format
            G.to(memory_format=layout)
            D.to(memory_format=layout)
            inp = x.contiguous(memory_format=layout)
            times = []
            for i in range(steps + 1):
                started = time.perf_counter()
                _probe_step(G, D, inp, config, device, bf16)
                seconds = time.perf_counter() - started
                if i:
                    times.append(seconds)
                if bf16 and fp32_s is not None and seconds > 20 * fp32_s:
                    times, hopeless = [math.inf], True  # stop probing
                    break
            results.append(sorted(times)[len(times) // 2])
            if not bf16:
                fp32_s = results[-1]
            G.zero_grad(set_to_none=True)
            D.zero_grad(set_to_none=True)
    return tuple(results)


def _probe_step(
    G: Generators, D: Discriminators, x: torch.Tensor, config: TrainConfig, device: torch.device, bf16: bool
) -> None:
    """A forward and backward of every network (no optimiser), as a training step does."""
    with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
        out = G(x, x, config.lambda_identity > 0)
        loss = sum(o.float().mean() for o in out.values())
        d_a_real, d_a_fake, d_b_real, d_b_fake, *projected = D(x, x, out["fake_A"], out["fake_B"])
        predictions = [p for p in (d_a_real, d_a_fake, d_b_real, d_b_fake) if p is not None]
        predictions += [p for judged in projected for p in judged]
        loss = loss + sum(p.float().mean() for p in predictions)
    loss.backward()
