"""Upload validation on its own: streaming size limit, real decoding, EXIF orientation, normalisation."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from simpsonize.web.uploads import UploadError, normalise, read_upload

BOUNDARY = "testboundary1234"


def multipart(field: str, data: bytes, filename: str = "a.jpg") -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def streamed_request(body: bytes, chunk: int, content_length: bool) -> tuple[Request, list[int]]:
    """A Request whose body arrives in chunks; the list records how many chunks were read."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    consumed = [0]

    async def receive():
        index = consumed[0]
        consumed[0] += 1
        return {"type": "http.request", "body": chunks[index], "more_body": index + 1 < len(chunks)}

    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    if content_length:
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    return Request(scope, receive), consumed


def test_reads_the_file_part():
    request, _ = streamed_request(multipart("file", b"x" * 5000), chunk=1000, content_length=True)
    upload = asyncio.run(read_upload(request, limit=10_000))
    assert upload.data == b"x" * 5000 and upload.filename == "a.jpg"


def test_size_limit_is_enforced_while_reading():
    body = multipart("file", b"x" * 2_000_000)
    request, consumed = streamed_request(body, chunk=64 * 1024, content_length=False)  # chunked: no length
    with pytest.raises(UploadError) as error:
        asyncio.run(read_upload(request, limit=100_000))
    assert error.value.status_code == 413
    assert consumed[0] <= 3  # stopped right after the limit, not after 31 chunks


def test_declared_length_over_the_limit_is_refused_before_reading():
    request, consumed = streamed_request(multipart("file", b"x" * 500_000), chunk=64 * 1024, content_length=True)
    with pytest.raises(UploadError) as error:
        asyncio.run(read_upload(request, limit=100_000))
    assert error.value.status_code == 413 and consumed[0] == 0


def test_first_non_empty_file_part_wins():
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename=""\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n\r\n"
    ).encode() + multipart("file", b"photo")
    request, _ = streamed_request(body, chunk=7, content_length=True)
    assert asyncio.run(read_upload(request, limit=1000)).data == b"photo"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (300, 200), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = normalise(encode(image, "JPEG", exif=exif), max_pixels=10**7, max_side=1600)
    assert (out.width, out.height) == (200, 300)
    assert Image.open(io.BytesIO(out.jpeg)).size == (200, 300)


def test_longest_side_is_limited_and_output_is_rgb_jpeg():
    out = normalise(encode(Image.new("RGB", (3000, 1000), "white"), "PNG"), max_pixels=10**7, max_side=600)
    assert (out.width, out.height) == (600, 200)
    decoded = Image.open(io.BytesIO(out.jpeg))
    assert decoded.format == "JPEG" and decoded.mode == "RGB"
    assert out.source_format == "PNG" and out.source_size == (3000, 1000)


def test_transparency_is_flattened_onto_white():
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    out = Image.open(io.BytesIO(normalise(encode(image, "PNG"), max_pixels=10**7, max_side=1600).jpeg))
    assert np.asarray(out).min() > 240


def test_sixteen_bit_grey_png_is_rescaled():
    array = np.full((64, 64), 65535, dtype=np.uint16)
    array[:, 32:] = 32768  # mid-range: rescaled to ~128, where clamping to 8 bits would give 255
    out = Image.open(io.BytesIO(normalise(encode(Image.fromarray(array), "PNG"), max_pixels=10**7, max_side=1600).jpeg))
    pixels = np.asarray(out).astype(int)
    assert out.mode == "RGB" and pixels[:, :24].min() > 240
    assert abs(pixels[:, 40:].mean() - 128) < 3


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(UploadError) as error:
        normalise(encode(Image.new("1", (5000, 5000)), "PNG"), max_pixels=1_000_000, max_side=1600)
    assert error.value.status_code == 413 and "5000x5000" in error.value.detail


@pytest.mark.parametrize("data", [b"", b"GIF89a....", b"\xff\xd8\xff\xe0 not really a jpeg", b"%PDF-1.4"])
def test_non_images_are_415(data):
    with pytest.raises(UploadError) as error:
        normalise(data, max_pixels=10**7, max_side=1600)
    assert error.value.status_code == 415


# -- item 5 of issue 8: HEIC/AVIF, shapes a face cannot be in, the field name ------------------------------------------


def quadrants(size=(300, 200)) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: any rotation or mirror shows."""
    image = Image.new("RGB", size, (255, 255, 255))
    w, h = size
    image.paste((255, 0, 0), (0, 0, w // 2, h // 2))
    image.paste((0, 255, 0), (w // 2, 0, w, h // 2))
    image.paste((0, 0, 255), (0, h // 2, w // 2, h))
    return image


def corner_colours(image: Image.Image) -> list[tuple[int, int, int]]:
    w, h = image.size
    points = [(w // 5, h // 5), (w - w // 5, h // 5), (w // 5, h - h // 5), (w - w // 5, h - h // 5)]
    return [tuple(round(c / 255) * 255 for c in image.getpixel(p)) for p in points]


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_are_decoded(fmt):
    source = quadrants()
    out = normalise(encode(source, fmt, quality=90), max_pixels=10**7, max_side=1600)
    assert out.source_format == fmt and (out.width, out.height) == (300, 200)
    assert corner_colours(Image.open(io.BytesIO(out.jpeg))) == corner_colours(source)


@pytest.mark.parametrize("fmt", ["JPEG", "AVIF"])
@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_every_exif_orientation_is_applied(fmt, orientation):
    """Orientations 6 and 8 (phones held sideways) and the mirrored ones, on an image whose corners differ."""
    from PIL import ImageOps

    source = quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = source.copy()
    tagged.info["exif"] = exif.tobytes()
    expected = ImageOps.exif_transpose(tagged)  # Pillow's reference for what each orientation means
    # (before encoding: Pillow's AVIF encoder moves the orientation out of the Exif object into the file's irot/imir)
    out = Image.open(
        io.BytesIO(normalise(encode(source, fmt, exif=exif, quality=95), max_pixels=10**7, max_side=1600).jpeg)
    )
    assert out.size == expected.size
    assert corner_colours(out) == corner_colours(expected)


def test_heic_keeps_the_rotation_stored_in_the_file():
    """pillow-heif returns HEIC pixels upright (libheif applies the file's rotation) and its EXIF orientation reads 1,
    so it must not be rotated twice."""
    source = quadrants()
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(source, "HEIF", exif=exif, quality=90)
    reference = Image.open(io.BytesIO(data))
    reference.load()
    out = Image.open(io.BytesIO(normalise(data, max_pixels=10**7, max_side=1600).jpeg))
    assert out.size == reference.size and corner_colours(out) == corner_colours(reference.convert("RGB"))


@pytest.mark.parametrize(
    ("size", "words"),
    [
        ((1, 1), "too small (1x1"),
        ((63, 400), "too small (63x400"),
        ((400, 63), "too small"),
        ((4000, 8), "too small"),
        ((600, 100), "too long and thin"),
        ((64, 1000), "too long and thin"),
    ],
)
def test_shapes_without_room_for_a_face_are_refused_with_a_sentence(size, words):
    with pytest.raises(UploadError) as error:
        normalise(encode(Image.new("RGB", size, (120, 100, 90)), "PNG"), max_pixels=10**8, max_side=1600)
    assert error.value.status_code == 422
    assert words in error.value.detail and error.value.detail.endswith(".")


@pytest.mark.parametrize("size", [(64, 64), (500, 100), (100, 500)])
def test_the_smallest_and_thinnest_allowed_shapes_pass(size):
    out = normalise(encode(Image.new("RGB", size, (120, 100, 90)), "PNG"), max_pixels=10**8, max_side=1600)
    assert (out.width, out.height) == size


def body_with_fields(fields: list[tuple[str, bytes]]) -> bytes:
    body = b""
    for name, data in fields:
        body += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="a.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(
    "fields",
    [
        [("photo", b"x" * 200_000)],  # a real photo's size, under another name (was 413)
        [("image", b"x" * 5000), ("note", b"hello")],
        [("photo", b"x" * 3_000_000)],  # bigger than the whole body may be, and still no `file`
    ],
    ids=["photo-200KB", "two-fields", "photo-over-the-limit"],
)
def test_a_missing_file_field_is_422_naming_it_whatever_else_is_sent(fields):
    request, _ = streamed_request(body_with_fields(fields), chunk=64 * 1024, content_length=False)
    with pytest.raises(UploadError) as error:
        asyncio.run(read_upload(request, limit=1_000_000))
    assert error.value.status_code == 422 and "'file'" in error.value.detail


def test_a_file_field_after_other_fields_is_found():
    request, _ = streamed_request(
        body_with_fields([("note", b"y" * 100_000), ("file", b"photo")]), chunk=4096, content_length=True
    )
    assert asyncio.run(read_upload(request, limit=1_000_000)).data == b"photo"


def test_a_client_disconnect_is_400_with_a_sentence():
    body = multipart("file", b"x" * 5000)
    messages = [{"type": "http.request", "body": body[:1000], "more_body": True}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)
    with pytest.raises(UploadError) as error:
        asyncio.run(read_upload(request, limit=100_000))
    assert error.value.status_code == 400 and error.value.detail.endswith(".")
