"""Any decoded image to upright 8-bit RGB, and RGB to PNG or JPEG bytes: the one copy the web (uploads) and the model
(``open_image``) share.

Torch-free (Pillow only): the web process imports it. The model's tensor helpers stay in ``simpsonize.model.imaging``.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import ExifTags, Image

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose does, without its copy
# of an image that is upright already).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
WHITE = (255, 255, 255)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1, upright, when there is none). Read it before ``load`` frees the file."""
    return image.getexif().get(ExifTags.Base.Orientation, 1) or 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` turned as its EXIF ``orientation`` says; the same object when it is upright already."""
    return image.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else image


def rgb_converter(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """A function turning ``image``, or any strip of it (same mode), into 8-bit RGB: transparency flattened onto
    white, 16-bit and 32-bit greys rescaled to 8 bits (the peak of a 32-bit image is its own brightest pixel)."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        peak = 65535.0 if mode.startswith("I;16") else max(float(image.getextrema()[1] or 1), 1.0)
        return lambda strip: strip.convert("F").point(lambda v: v * 255.0 / peak).convert("L").convert("RGB")
    transparent = "A" in mode or "a" in mode or (mode in ("P", "L", "RGB") and "transparency" in image.info)

    def flatten(strip: Image.Image) -> Image.Image:
        rgba = strip if strip.mode == "RGBA" else strip.convert("RGBA")
        flat = Image.new("RGB", strip.size, WHITE)
        flat.paste(rgba, mask=rgba)  # the alpha channel blends the strip onto white
        return flat

    return flatten if transparent else (lambda strip: strip if strip.mode == "RGB" else strip.convert("RGB"))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode (``rgb_converter`` on the whole image); an RGB image comes back as it is."""
    return rgb_converter(image)(image)


def upright_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as upright 8-bit RGB; the same object when it is both already (no copy of a big photo)."""
    return upright(to_rgb(image), exif_orientation(image))


def png_bytes(image: Image.Image, compress_level: int = 6) -> bytes:
    """Lossless PNG. ``compress_level`` 1 (fast) to 9 (small); 6 is Pillow's default."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 90, subsampling: int = -1) -> bytes:
    """Baseline JPEG at ``quality``; ``subsampling`` -1 is Pillow's default (4:2:0), 0 keeps full colour (4:4:4)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()
