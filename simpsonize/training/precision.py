"""bf16 or fp32, and which memory layout: chosen per machine, because on CPUs the answer flips from one to the next.

bf16 autocast is a trap on CPUs without bf16 hardware: on an AVX2-only EPYC one step took 75 s in bf16 against 1.84 s
in fp32, while an AMX Xeon ran it 3x faster. channels_last came with bf16 until `simpsonize bench train` found bf16
steps 1.13x faster without it on a Zen 4 EPYC, so the layout is a choice of its own (``--channels-last``).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch

from simpsonize.cpu import cpu_flags, cpu_model_name
from simpsonize.model.networks import DiscriminatorConfig
from simpsonize.training.config import TrainConfig
from simpsonize.training.networks import Discriminators, Generators


def hardware_name(device: torch.device) -> str:
    """What a precision choice was made on: a resumed run keeps its choice only on the same hardware."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()


def choose_precision(config: TrainConfig, device: torch.device) -> tuple[bool, str]:
    """(use bf16, why). On CPU: bf16 with AMX; otherwise time 3 steps of each (after one warm-up) on this model and
    take bf16 only if it is at least 10 % faster."""
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


def use_channels_last(choice: str, device: torch.device, bf16: bool) -> bool:
    """``--channels-last``: on, off, or auto (with bf16 or on CUDA, as it always was)."""
    return {"on": True, "off": False}.get(choice, device.type == "cuda" or bf16)


def probe_step_seconds(config: TrainConfig, device: torch.device, steps: int = 3) -> tuple[float, float]:
    """Median seconds of a generator+discriminator forward/backward in fp32 and in bf16 autocast, on throwaway
    networks of the run's size; torch's RNG is restored afterwards so the run itself is unchanged."""
    with torch.random.fork_rng(devices=[]):
        G = Generators(config.generator_config()).to(device)
        D = Discriminators(
            DiscriminatorConfig(ndf=config.ndf), projected=config.d_projected, image_size=config.size
        ).to(device)
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
                    d_a_real, d_a_fake, d_b_real, d_b_fake, *projected = net_d(inp, inp, out["fake_A"], out["fake_B"])
                    predictions = [p for p in (d_a_real, d_a_fake, d_b_real, d_b_fake) if p is not None]
                    predictions += [p for judged in projected for p in judged]
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
