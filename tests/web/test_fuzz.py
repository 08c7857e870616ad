"""Fuzzing (issue 8, item 6): the upload validator on arbitrary bytes and on mutated real images (hypothesis), and the
whole API from its own OpenAPI document (schemathesis). The rule for both: never a 5xx or an unexpected exception,
and every response matches the schema. Example counts are bounded so the suite stays fast on 2 cores."""

from __future__ import annotations

import asyncio
import functools
import io

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.requests import Request

from simpsonize.web.uploads import MIN_SIDE, UploadError, normalise, read_upload

MAX_SIDE = 256  # small, so each example decodes in milliseconds
LIMITS = dict(max_pixels=4_000_000, max_side=MAX_SIDE, max_pixels_full_decode=2_000_000)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_outcome(data: bytes) -> None:
    """normalise either gives an upright RGB JPEG within the limits, or a 4xx UploadError with a sentence."""
    try:
        out = normalise(data, **LIMITS)
    except UploadError as error:
        assert 400 <= error.status_code < 500
        assert error.detail and error.detail[0].isupper() and error.detail.endswith(".")
        return
    image = Image.open(io.BytesIO(out.jpeg))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert image.size == (out.width, out.height)
    assert max(image.size) <= MAX_SIDE and min(out.source_size) >= MIN_SIDE


@given(st.binary(max_size=4096))
@FUZZ
def test_normalise_on_arbitrary_bytes(data):
    check_outcome(data)


@given(
    st.sampled_from(
        [
            b"\xff\xd8\xff\xe0",
            b"\x89PNG\r\n\x1a\n",
            b"RIFF\x00\x00\x00\x00WEBPVP8 ",
            b"\x00\x00\x00\x1cftypheic",
            b"\x00\x00\x00\x20ftypavif",
            b"GIF89a",
            b"BM",
        ]
    ),
    st.binary(max_size=2048),
)
@FUZZ
def test_normalise_on_bytes_behind_real_magic_numbers(magic, rest):
    """Random bytes rarely get past the format sniffing; behind a real signature they reach each decoder."""
    check_outcome(magic + rest)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def seeds() -> dict[str, bytes]:
    """Real, small photos in every accepted format (and modes that take other decoding paths), by name: hypothesis
    then reports a failing example as a name and its mutations, not as 200 KB of bytes."""
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((96, 96))
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "jpeg-exif": _encode(photo, "JPEG", quality=80, exif=exif),
        "jpeg-progressive": _encode(photo, "JPEG", progressive=True),
        "png": _encode(photo, "PNG"),
        "png-rgba": _encode(photo.convert("RGBA"), "PNG"),
        "png-palette": _encode(photo.convert("P"), "PNG"),
        "png-16bit": _encode(photo.convert("I;16"), "PNG"),
        "webp": _encode(photo, "WEBP", quality=70),
        "heic": _encode(photo, "HEIF", quality=60),
        "avif": _encode(photo, "AVIF", quality=60),
    }


SEED_NAMES = ["jpeg-exif", "jpeg-progressive", "png", "png-rgba", "png-palette", "png-16bit", "webp", "heic", "avif"]


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
        st.floats(min_value=0, max_value=1, exclude_max=True),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, steps) -> bytes:
    buffer = bytearray(data)
    for kind, where, value in steps:
        if not buffer:
            break
        i = int(where * len(buffer))
        if kind == "flip":
            buffer[i] ^= 1 << (value % 8)
        elif kind == "set":
            buffer[i] = value
        elif kind == "cut":
            del buffer[i:]
        elif kind == "insert":
            buffer[i:i] = bytes([value]) * (1 + value % 16)
        else:
            del buffer[i : i + 1 + value % 64]
    return bytes(buffer)


@given(seed=st.sampled_from(SEED_NAMES), steps=mutations)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_normalise_on_mutated_real_images(seed, steps):
    check_outcome(mutate(seeds()[seed], steps))


def test_a_damaged_avif_is_415_not_a_crash():
    """What the fuzzer found: Pillow's AVIF decoder raises RuntimeError on some damaged files (it was a 500). Find a
    one-bit flip of the AVIF seed that makes Pillow itself raise RuntimeError, and check the validator says 415."""
    original = seeds()["avif"]
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 1
        try:
            with Image.open(io.BytesIO(bytes(damaged))) as image:
                image.load()
        except RuntimeError:
            break
        except Exception:  # noqa: BLE001 - other damage is covered elsewhere
            continue
    else:
        pytest.skip("no single-bit flip makes this libavif raise RuntimeError")
    with pytest.raises(UploadError) as error:
        normalise(bytes(damaged), **LIMITS)
    assert error.value.status_code == 415 and "damaged" in error.value.detail


def test_the_seeds_themselves_are_accepted():
    """The mutations start from photos the validator accepts, so they probe the decoders, not the sniffing."""
    formats = [normalise(seeds()[name], **LIMITS).source_format for name in SEED_NAMES]
    assert formats == ["JPEG", "JPEG", "PNG", "PNG", "PNG", "PNG", "WEBP", "HEIF", "AVIF"]


@given(
    boundary=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40),
    body=st.binary(max_size=2048),
    chunk=st.integers(1, 700),
)
@FUZZ
def test_read_upload_on_arbitrary_bodies(boundary, body, chunk):
    """Any body under any boundary: the file's bytes, or a 4xx UploadError; never another exception."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    state = {"i": 0}

    async def receive():
        i = state["i"]
        state["i"] += 1
        return {"type": "http.request", "body": chunks[i] if i < len(chunks) else b"", "more_body": i + 1 < len(chunks)}

    headers = [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)
    try:
        upload = asyncio.run(read_upload(request, 1000))
    except UploadError as error:
        assert 400 <= error.status_code < 500 and error.detail
        return
    assert 0 < len(upload.data) <= 1000


# -- the API from its OpenAPI document -------------------------------------------------------------------------------


def _openapi_document() -> dict:
    """The app's OpenAPI document; building it needs no Redis (the client connects lazily)."""
    from simpsonize.settings import Settings
    from simpsonize.web.main import create_app

    return create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()


schema = schemathesis.openapi.from_dict(_openapi_document())


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema_and_never_fails_with_5xx(case, live_server):
    """Against the real app served by uvicorn, with a live worker (so /readyz is 200)."""
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    response = case.call(base_url=live_server)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text)
    case.validate_response(
        response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance]
    )
