"""Upload validation: read the multipart body with a size limit enforced while reading, then really decode it.

``read_upload`` streams the request body through python-multipart's parser and stops as soon as the file part
exceeds ``max_upload_bytes`` (or the Content-Length already says it will), so an oversized upload is never held in
full. ``normalise`` decodes JPEG/PNG/WebP/HEIC/AVIF only (HEIC through pillow-heif, AVIF natively in Pillow),
refuses images with more than ``max_pixels`` pixels, fewer than ``MIN_SIDE`` on a side or a longer/shorter side ratio
over ``MAX_ASPECT`` before decoding them, applies the EXIF orientation, flattens to 8-bit RGB and shrinks the longest
side to ``max_side``. Every failure is an ``UploadError`` with an HTTP status and a sentence for the user.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import pillow_heif
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from simpsonize.imaging import exif_orientation, jpeg_bytes, rgb_converter, upright

pillow_heif.register_heif_opener()  # HEIC/HEIF, iPhones' default; libheif applies the rotation stored in the file

FIELD = "file"
FORMATS = ("JPEG", "PNG", "WEBP", "HEIF", "AVIF")
FORMAT_NAMES = "JPEG, PNG, WebP, HEIC or AVIF"
MIN_SIDE = 64  # pixels: below this on a side there is no face to find (the face detector needs more)
MAX_ASPECT = 5.0  # longest side / shortest side: a panorama or a strip, not a photo of a face
FIELD_OVERHEAD = 64 * 1024  # headers, boundaries and small form fields allowed on top of the file


class UploadError(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def too_large(limit: int) -> UploadError:
    return UploadError(413, f"The photo is larger than {_mb(limit)}; please upload a smaller one.")


def missing_file() -> UploadError:
    return UploadError(422, f"No photo was uploaded: send it as multipart/form-data in the field '{FIELD}'.")


@dataclass
class Upload:
    data: bytes
    filename: str | None
    content_type: str | None


class _PartCollector:
    """python-multipart callbacks: keep the first non-empty part named ``file``, count everything else."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.upload: Upload | None = None
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._is_file = False
        self._filename: str | None = None
        self._buffer = bytearray()
        self.seen_file = False  # a part named ``file`` has begun (even an empty one)

    def on_part_begin(self) -> None:
        self._headers = {}
        self._buffer = bytearray()
        self._is_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = name == FIELD and self.upload is None
        self.seen_file = self.seen_file or name == FIELD
        self._filename = options.get(b"filename", b"").decode("utf-8", "replace") or None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self._is_file:
            if len(self._buffer) + size > self.limit:
                raise too_large(self.limit)
            self._buffer += data[start:end]
        # Other parts are not kept; the limit on the whole body (read_upload) bounds them.

    def on_part_end(self) -> None:
        if self._is_file and self._buffer:  # a browser sends an empty part for an input left empty
            content_type = self._headers.get(b"content-type", b"").decode("latin-1") or None
            self.upload = Upload(bytes(self._buffer), self._filename, content_type)
        self._buffer = bytearray()
        self._is_file = False


async def read_upload(request: Request, limit: int) -> Upload:
    """The uploaded file's bytes, read with ``limit`` enforced as they arrive."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise missing_file()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FIELD_OVERHEAD:
        raise too_large(limit)

    collector = _PartCollector(limit)
    callbacks = {
        name: getattr(collector, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    parser = MultipartParser(params[b"boundary"], callbacks)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + FIELD_OVERHEAD:
                # A body this big without any `file` part yet is a photo sent under another name: say so.
                raise too_large(limit) if collector.seen_file else missing_file()
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise UploadError(422, "The upload is not valid multipart/form-data.") from exc
    except ClientDisconnect as exc:
        raise UploadError(400, "The upload was interrupted before it finished.") from exc
    if collector.upload is None:
        raise missing_file()
    return collector.upload


@dataclass
class NormalisedImage:
    jpeg: bytes  # what the worker gets: upright 8-bit RGB, longest side <= max_side
    width: int
    height: int
    source_format: str
    source_size: tuple[int, int]


REDUCED_DECODE = ("JPEG",)  # formats Pillow can decode at 1/2, 1/4 or 1/8 scale (draft)
STRIP_PIXELS = 1 << 18  # flatten/convert big images a strip of about this many pixels at a time


def pixel_limit(image_format: str | None, max_pixels: int, max_pixels_full_decode: int | None) -> int:
    """JPEG is decoded reduced (draft), so only ``max_pixels`` applies; every other format is decoded at full size
    (4 bytes a pixel with alpha), so it also gets the lower ``max_pixels_full_decode``."""
    if image_format in REDUCED_DECODE or max_pixels_full_decode is None:
        return max_pixels
    return min(max_pixels, max_pixels_full_decode)


def normalise(
    data: bytes, *, max_pixels: int, max_side: int, max_pixels_full_decode: int | None = None
) -> NormalisedImage:
    """Decode for real and normalise; raises ``UploadError`` (413 pixel limit, 415 not a supported image).

    Memory: one full-size decode (JPEG: reduced by up to 8x first) plus small copies. The image is shrunk before
    anything else happens to it: transparency is flattened and other modes converted strip by strip while reducing,
    and the EXIF orientation is applied to the shrunk image (the bounding box is square, so the order is free).
    """
    not_an_image = UploadError(415, f"The file is not a {FORMAT_NAMES} image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            limit = pixel_limit(image.format, max_pixels, max_pixels_full_decode)
            if width * height > limit:
                raise UploadError(
                    413,
                    f"The photo has too many pixels ({width}x{height}); the limit is "
                    f"{limit / 1e6:.0f} megapixels"
                    + ("" if limit == max_pixels else f" for {image.format} ({max_pixels / 1e6:.0f} for JPEG)")
                    + ".",
                )
            check_shape(width, height)
            source_format = image.format or "?"
            if image.format in REDUCED_DECODE:
                image.draft("RGB", _target_size(image.size, max_side))  # decode big JPEGs at a reduced scale
            orientation = exif_orientation(image)
            image.load()
            if image.width < 1 or image.height < 1:
                raise not_an_image
            rgb = shrink_to_rgb(image, max_side)
            del image  # the full-size decode is freed before encoding
            rgb = upright(rgb, orientation)  # small by now
    except UploadError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, hit while opening
        raise UploadError(
            413, f"The photo has too many pixels; the limit is {max_pixels / 1e6:.0f} megapixels."
        ) from None
    except UnidentifiedImageError:
        raise not_an_image from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError, RuntimeError) as exc:
        # RuntimeError: Pillow's AVIF and pillow-heif's HEIF decoders report damaged data that way (found by fuzzing).
        raise UploadError(415, "The image could not be decoded: the file looks damaged or truncated.") from exc
    return NormalisedImage(
        jpeg=jpeg_bytes(rgb, quality=95, subsampling=0),
        width=rgb.width,
        height=rgb.height,
        source_format=source_format,
        source_size=(width, height),
    )


def check_shape(width: int, height: int) -> None:
    """Refuse, before decoding, images that cannot hold a face the model can use: 422 with the reason."""
    if width < 1 or height < 1:
        raise UploadError(415, f"The file is not a {FORMAT_NAMES} image.")
    if min(width, height) < MIN_SIDE:
        raise UploadError(
            422,
            f"The photo is too small ({width}x{height} pixels): it needs at least {MIN_SIDE} "
            f"pixels on each side to find a face. Please upload a bigger photo.",
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise UploadError(
            422,
            f"The photo is {width}x{height} pixels: too long and thin to be a photo of a face "
            f"(at most {MAX_ASPECT:g} times longer than wide). Please crop it around the face.",
        )


def _target_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size ``thumbnail((max_side, max_side))`` gives: aspect kept, longest side at most ``max_side``."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def shrink_to_rgb(image: Image.Image, max_side: int) -> Image.Image:
    """8-bit RGB, longest side <= ``max_side``, made from ``image`` without a second full-size copy.

    RGB and L shrink in place (Pillow's thumbnail reduces by an integer factor first). Any other mode (alpha,
    palette, 16-bit, CMYK) is converted and resized strip by strip, so the only full-size buffer is the decoded
    image itself. The conversion is ``simpsonize.imaging.rgb_converter``'s, the model's own: transparency is
    flattened onto white, 16-bit and 32-bit greys are rescaled to 8 bits.
    """
    target = _target_size(image.size, max_side)
    if image.mode in ("RGB", "L") and "transparency" not in image.info:
        image.thumbnail(target, Image.LANCZOS)
        return image if image.mode == "RGB" else image.convert("RGB")
    convert = rgb_converter(image)
    if target == image.size:
        return convert(image)  # small already
    width, height = image.size
    scale = height / target[1]
    margin = 3 * scale + 2  # Lanczos reaches 3 output pixels (3 * scale input rows) either side
    out_rows = max(1, int(STRIP_PIXELS / width / scale))  # output rows a strip: about STRIP_PIXELS input pixels
    shrunk = Image.new("RGB", target)
    for first in range(0, target[1], out_rows):
        last = min(first + out_rows, target[1])
        top = max(0, int(first * scale - margin))
        bottom = min(height, int(last * scale + margin) + 1)
        strip = convert(image.crop((0, top, width, bottom)))
        # The box is where these output rows come from; Pillow reads the margin around it, so the strips join
        # seamlessly, as one resize of the whole image would.
        part = strip.resize(
            (target[0], last - first), Image.LANCZOS, box=(0, first * scale - top, width, last * scale - top)
        )
        shrunk.paste(part, (0, first))
    return shrunk
