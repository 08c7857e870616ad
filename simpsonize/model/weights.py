"""Served generator weights: safetensors plus a JSON metadata block, and import of reference ``.pth`` files.

Metadata lives under the safetensors header key ``simpsonize`` as one JSON object:
``{"format_version", "architecture", "generator": GeneratorConfig, "input_size", "normalization",
"direction", "dtype", "training": {...}, "metrics": {...}, ...}``. A file whose metadata records a removed option
that changed the generator (``"landmark_maps"``: face-part heatmaps as extra input) is refused
(``simpsonize.removed_options``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from simpsonize.model.errors import MissingWeights, WeightsError
from simpsonize.model.networks import ARCHITECTURE, GeneratorConfig, ResnetGenerator
from simpsonize.removed_options import removed_generator_option
from simpsonize.resources import SHIPPED_WEIGHTS

METADATA_KEY = "simpsonize"
FORMAT_VERSION = 1
NORMALIZATION = "rgb_minus1_to_1"  # x / 127.5 - 1, the reference code's Normalize((0.5,)*3, (0.5,)*3)
DEFAULT_WEIGHTS = SHIPPED_WEIGHTS  # package data: a wheel serves the same model as a checkout

# InstanceNorm buffers that old reference checkpoints carry (a PyTorch < 0.4 quirk); the layer has no state.
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def save_generator(
    path: str | Path,
    generator: ResnetGenerator,
    *,
    input_size: int,
    half: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``generator`` as safetensors with its metadata; ``half`` stores fp16 (loaded back as fp32)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in generator.state_dict().items()}
    metadata = {
        **(extra or {}),
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "generator": generator.config.to_dict(),
        "input_size": int(input_size),
        "normalization": NORMALIZATION,
        "dtype": "float16" if half else "float32",
    }
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata block of a served weights file, without loading tensors."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises several private types for a bad header
        raise WeightsError(f"{path} is not a readable safetensors file ({exc}).") from exc
    if raw is None:
        raise WeightsError(f"{path} has no '{METADATA_KEY}' metadata: it was not written by `simpsonize export`.")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path} has corrupt metadata ({exc}).") from exc
    if metadata.get("architecture") != ARCHITECTURE:
        raise WeightsError(f"{path} holds a {metadata.get('architecture')!r}, not a {ARCHITECTURE}.")
    return metadata


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[ResnetGenerator, dict[str, Any]]:
    """Build the generator a weights file describes. ``.safetensors`` or a reference ``.pth``.

    Returns the generator in eval mode on ``device`` (fp32) and its metadata.
    """
    path = _existing(path)
    if path.suffix in (".pth", ".pt"):
        state, config = load_reference_state_dict(path)
        metadata = {
            "architecture": ARCHITECTURE,
            "generator": config.to_dict(),
            "input_size": 256,
            "normalization": NORMALIZATION,
            "source": f"reference checkpoint {path.name}",
        }
    else:
        from safetensors.torch import load_file

        metadata = read_metadata(path)
        refusal = removed_generator_option(metadata, path, still="serves")
        if refusal:
            raise WeightsError(refusal)
        try:
            config = GeneratorConfig.from_dict(metadata.get("generator", {}))
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{path} describes an invalid generator ({exc}).") from exc
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise WeightsError(f"{path} is corrupt: its tensors could not be read ({exc}).") from exc
    generator = ResnetGenerator(config)
    state = {k: v.float() for k, v in state.items()}
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise WeightsError(f"{path} does not fit a {config} generator: {first[0] if first else exc}") from exc
    return generator.to(device).eval(), metadata


def load_reference_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], GeneratorConfig]:
    """A state dict saved by the reference CycleGAN code, cleaned, with the config inferred from its keys."""
    path = _existing(path)
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}).") from exc
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{path} does not hold a generator state dict.")
    state = {}
    for key, value in raw.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        if key.endswith(_NORM_BUFFERS):
            continue
        state[key] = value
    return state, infer_config(state, source=path)


def infer_config(state: dict[str, torch.Tensor], source: str | Path = "state dict") -> GeneratorConfig:
    """ngf, n_blocks and the upsampling variant from a generator state dict's keys and shapes."""
    first = state.get("model.1.weight")
    if first is None or first.ndim != 4:
        raise WeightsError(f"{source} is not a ResNet generator: 'model.1.weight' is missing.")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.conv_block\.", k))}
    n_blocks = len(blocks)
    if blocks and blocks != set(range(10, 10 + n_blocks)):
        raise WeightsError(f"{source} has residual blocks at unexpected positions {sorted(blocks)}.")
    up = 10 + n_blocks
    if f"model.{up}.conv.weight" in state:
        upsampling = "resize_conv"
    elif f"model.{up}.weight" in state:
        upsampling = "transpose"
    else:
        raise WeightsError(f"{source} has no upsampling layer at model.{up}.")
    last = state.get(f"model.{up + 7}.weight")
    output_nc = int(last.shape[0]) if last is not None else 3
    return GeneratorConfig(
        ngf=int(first.shape[0]),
        n_blocks=n_blocks,
        upsampling=upsampling,
        input_nc=int(first.shape[1]),
        output_nc=output_nc,
    )


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingWeights(f"Weights file {path} does not exist.")
    if not path.is_file():
        raise WeightsError(f"Weights path {path} is not a file.")
    return path
