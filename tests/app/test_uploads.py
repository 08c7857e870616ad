"""Upload validation on its own: streaming size limit, real decoding, EXIF orientation, normalisation."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from app.uploads import UploadError, normalise, read_upload

BOUNDARY = "testboundary1234"


def multipart(field: str, data: bytes, filename: str = "a.jpg") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def streamed_request(body: bytes, chunk: int, content_length: bool) -> tuple[Request, list[int]]:
    """A Request whose body arrives in chunks; the list records how many chunks were read."""
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)]
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
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n\r\n").encode() + multipart("file", b"photo")
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
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    out = Image.open(io.BytesIO(normalise(encode(image, "PNG"), max_pixels=10**7, max_side=1600).jpeg))
    assert np.asarray(out).min() > 240


def test_sixteen_bit_grey_png_is_rescaled():
    array = np.full((32, 32), 65535, dtype=np.uint16)
    out = Image.open(io.BytesIO(normalise(encode(Image.fromarray(array), "PNG"), max_pixels=10**7,
                                          max_side=1600).jpeg))
    assert out.mode == "RGB" and np.asarray(out).min() > 240


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(UploadError) as error:
        normalise(encode(Image.new("1", (5000, 5000)), "PNG"), max_pixels=1_000_000, max_side=1600)
    assert error.value.status_code == 413 and "5000x5000" in error.value.detail


@pytest.mark.parametrize("data", [b"", b"GIF89a....", b"\xff\xd8\xff\xe0 not really a jpeg", b"%PDF-1.4"])
def test_non_images_are_415(data):
    with pytest.raises(UploadError) as error:
        normalise(data, max_pixels=10**7, max_side=1600)
    assert error.value.status_code == 415
