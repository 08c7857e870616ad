"""Image I/O shared by the pipeline, the CLI and training: any PIL mode in, 8-bit RGB out, tensors both ways."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from simpsonize.model.errors import UnreadableImage

ImageSource = Image.Image | bytes | str | Path
ORIENTATION_TAG = 0x0112  # EXIF orientation
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def open_image(source: ImageSource) -> Image.Image:
    """Decode a file, bytes or PIL image into upright 8-bit RGB (EXIF orientation applied)."""
    if isinstance(source, Image.Image):
        image = source
        name = "image"
    else:
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
    if image.getexif().get(ORIENTATION_TAG, 1) not in (1, None):
        image = ImageOps.exif_transpose(image)
    # (exif_transpose copies even an upright photo: 36 MB and more time than finding the face, for a 12 MP one)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: transparency is flattened onto white, 16-bit and float are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(array / peak * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images of one size -> float tensor (N, 3, H, W) in [-1, 1], the generator's input range."""
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """Float tensor (N, 3, H, W) in [-1, 1] -> RGB images."""
    array = batch.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in array.permute(0, 2, 3, 1).cpu().numpy()]


def png_bytes(image: Image.Image, compress_level: int = 6) -> bytes:
    """Lossless PNG. ``compress_level`` 1 (fast) to 9 (small); 6 is Pillow's default."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """Baseline JPEG at ``quality``, 4:2:0 (Pillow's default): the page's copy of a composite."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
