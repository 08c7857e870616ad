"""Image input for the pipeline, the CLI and training: a file, bytes or PIL image in, upright 8-bit RGB out
(``simpsonize.imaging`` does the conversion, the web's too), and tensors both ways."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from simpsonize.imaging import upright_rgb
from simpsonize.model.errors import UnreadableImage

ImageSource = Image.Image | bytes | str | Path
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def open_image(source: ImageSource) -> Image.Image:
    """Decode a file, bytes or PIL image into upright 8-bit RGB (EXIF orientation applied); an image that is both
    already comes back as it is (a copy of a 12 MP photo is 36 MB, and more time than finding the face)."""
    if isinstance(source, Image.Image):
        return upright_rgb(source)
    name = "the uploaded bytes" if isinstance(source, bytes) else str(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()
    except FileNotFoundError as exc:
        raise UnreadableImage(f"{name} does not exist.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"{name} is not a readable image ({exc}).") from exc
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"{name} has too many pixels to process safely.") from exc
    return upright_rgb(image)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images of one size -> float tensor (N, 3, H, W) in [-1, 1], the generator's input range."""
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """Float tensor (N, 3, H, W) in [-1, 1] -> RGB images."""
    array = batch.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in array.permute(0, 2, 3, 1).cpu().numpy()]
