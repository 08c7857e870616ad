"""Any image to upright 8-bit RGB: one implementation (simpsonize.imaging), shared by the web's upload check and the
model's ``open_image``, so a photo looks the same to both."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from simpsonize.imaging import exif_orientation, rgb_converter, to_rgb, upright, upright_rgb


def encoded(image: Image.Image, image_format: str, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, format=image_format, exif=exif)
    return buffer.getvalue()


def test_every_orientation_turns_the_stored_pixels_upright():
    photo = Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3), "RGB")  # 6 wide, 4 high
    stored = {
        1: photo,
        2: photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        3: photo.transpose(Image.Transpose.ROTATE_180),
        4: photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        5: photo.transpose(Image.Transpose.TRANSPOSE),
        6: photo.transpose(Image.Transpose.ROTATE_90),
        7: photo.transpose(Image.Transpose.TRANSVERSE),
        8: photo.transpose(Image.Transpose.ROTATE_270),
    }
    for orientation, pixels in stored.items():
        assert np.array_equal(np.asarray(upright(pixels, orientation)), np.asarray(photo)), orientation
    assert upright(photo, 1) is photo


def test_an_upright_rgb_image_is_not_copied(astronaut):
    assert to_rgb(astronaut) is astronaut and upright_rgb(astronaut) is astronaut


def transparent_right_half(mode: str) -> Image.Image:
    if mode == "P":  # a palette entry marked transparent, as GIFs and small PNGs have
        image = Image.new("P", (8, 8), 0)
        image.putpalette([255, 0, 0, 0, 0, 255])
        image.paste(1, (0, 0, 4, 8))
        image.info["transparency"] = 0
        return image
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 4, 8))
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_flattened_onto_white(mode):
    rgb = to_rgb(transparent_right_half(mode))
    assert rgb.mode == "RGB" and rgb.getpixel((6, 4)) == (255, 255, 255)
    assert rgb.getpixel((1, 4)) == ((0, 0, 255) if mode != "LA" else (29, 29, 29))  # the opaque half stays


def test_16_bit_greys_are_rescaled_the_same_whole_or_in_strips():
    ramp = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype("<u2")
    image = Image.frombytes("I;16", (64, 32), ramp.tobytes())
    whole = np.asarray(to_rgb(image))
    assert whole.dtype == np.uint8 and whole[0, 0, 0] == 0 and whole[-1, -1, 0] == 255
    convert = rgb_converter(image)
    strips = np.concatenate([np.asarray(convert(image.crop((0, top, 64, top + 8)))) for top in range(0, 32, 8)])
    assert np.array_equal(strips, whole)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_the_web_and_the_model_see_the_same_upright_photo(astronaut, mode):
    from simpsonize.model.imaging import open_image
    from simpsonize.web.uploads import normalise

    photo = astronaut.crop((0, 0, 512, 300)).convert(mode)
    stored = photo.transpose(Image.Transpose.ROTATE_90)  # a phone's portrait: turned, with orientation 6
    data = encoded(stored, "PNG", orientation=6)
    assert exif_orientation(Image.open(io.BytesIO(data))) == 6
    model_view = open_image(data)
    web_view = Image.open(io.BytesIO(normalise(data, max_pixels=10**7, max_side=1600).jpeg))
    assert model_view.size == web_view.size == (512, 300)
    difference = np.abs(np.asarray(model_view, int) - np.asarray(web_view, int))
    assert difference.mean() < 2  # the web's copy is a JPEG at quality 95: only its rounding differs
