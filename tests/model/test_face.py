import io

import numpy as np
import pytest
from PIL import Image

from simpsonize.model.detection import detect_faces
from simpsonize.model.errors import NoFaceFound, UnreadableImage
from simpsonize.model.face import Framing, align_crop, crop_face
from simpsonize.model.imaging import open_image

# Eileen Collins' face in skimage's astronaut (512x512), measured by hand: eyes at about (205,102) and (247,104).
ASTRONAUT_FACE_CENTRE = (225, 120)


def test_astronaut_has_exactly_one_face_at_the_known_place(astronaut):
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 170 <= x0 <= 195 and 255 <= x1 <= 280 and 50 <= y0 <= 75 and 160 <= y1 <= 185
    left_eye, right_eye = faces[0].landmarks[:2]
    assert abs(left_eye[0] - 205) < 8 and abs(right_eye[0] - 247) < 8


def test_crop_is_centred_on_the_face_and_eyes_are_level(astronaut):
    crop = crop_face(astronaut, size=128)
    assert crop.image.size == (128, 128)
    cx, cy = crop.center
    assert abs(cx - ASTRONAUT_FACE_CENTRE[0]) < 12 and abs(cy - ASTRONAUT_FACE_CENTRE[1]) < 20
    assert 80 < crop.side < 180  # the face, not the whole photo
    assert abs(crop.angle) < 10
    assert crop.other_faces == ()


def test_tilted_face_is_levelled(astronaut):
    tilted = astronaut.rotate(20, resample=Image.BICUBIC, center=ASTRONAUT_FACE_CENTRE)
    crop = crop_face(tilted, size=128)
    straight = crop_face(astronaut, size=128)
    assert abs(crop.angle - straight.angle + 20) < 5  # PIL rotates counter-clockwise
    diff = np.abs(np.asarray(crop.image, float) - np.asarray(straight.image, float)).mean()
    assert diff < 25


def test_no_face_raises_a_sentence(coffee):
    with pytest.raises(NoFaceFound, match="No face found"):
        crop_face(coffee)


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """The pixels stored turned 90° with EXIF orientation 6 ("rotate 90° CW to display"), as phones do."""
    stored = image.transpose(Image.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def test_exif_orientation_is_applied_before_cropping(astronaut):
    plain = io.BytesIO()
    astronaut.save(plain, format="JPEG", quality=95)
    upright = crop_face(plain.getvalue(), size=128)
    rotated = crop_face(exif_rotated_jpeg(astronaut), size=128)
    assert np.allclose(rotated.center, upright.center, atol=3)
    diff = np.abs(np.asarray(rotated.image, float) - np.asarray(upright.image, float)).mean()
    assert diff < 6


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "P", "LA", "I;16"])
def test_any_image_mode_is_accepted(astronaut, mode):
    if mode == "I;16":
        array = np.asarray(astronaut.convert("L"), dtype=np.uint16) * 257
        image = Image.frombytes("I;16", astronaut.size, array.astype("<u2").tobytes())
    else:
        image = astronaut.convert(mode)
    crop = crop_face(image, size=64)
    assert crop.image.mode == "RGB" and crop.image.size == (64, 64)


def test_transparent_background_becomes_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert open_image(rgba).getpixel((5, 5)) == (255, 255, 255)


def test_unreadable_bytes_raise_a_sentence():
    with pytest.raises(UnreadableImage, match="not a readable image"):
        open_image(b"this is not an image")


def test_looser_framing_shows_more_of_the_head_and_reports_crop_outside_the_photo(astronaut):
    from simpsonize.model.face import Framing

    tight = crop_face(astronaut, size=128)
    loose = crop_face(astronaut, size=128, framing=Framing(scale=3.0, eye_line=0.42))
    assert loose.side == pytest.approx(tight.side * 3.0 / 2.3, rel=1e-6)
    assert tight.outside == 0.0 and loose.outside == 0.0  # the astronaut photo has room around her face
    edge = astronaut.crop((100, 60, 400, 400))  # the photo now ends just above her forehead
    tight_edge = crop_face(edge, size=128)
    assert crop_face(edge, size=128, framing=Framing(scale=3.0, eye_line=0.42)).outside > 0.03 > tight_edge.outside


# -- the quick search for big faces, and the full search behind it -----------------------------------------------------


def _photos(astronaut: Image.Image) -> dict[str, Image.Image]:
    upscaled = astronaut.resize((1600, 1600), Image.BICUBIC)
    phone = Image.new("RGB", (4000, 3000), (90, 100, 110))  # a 12 MP photo, her face ~500 px
    phone.paste(astronaut.resize((2800, 2800), Image.BICUBIC), (600, 100))
    return {
        "astronaut 512": astronaut,
        "tilted": astronaut.rotate(20, resample=Image.BICUBIC, center=ASTRONAUT_FACE_CENTRE),
        "1600x1200": upscaled.crop((0, 0, 1600, 1200)),
        "4000x3000": phone,
    }


def _corners(crop) -> np.ndarray:
    """The crop square's corners in the photo."""
    theta, half = np.radians(crop.angle), crop.side / 2
    offsets = np.array([(-half, -half), (half, -half), (half, half), (-half, half)])
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return np.asarray(crop.center) + offsets @ rotation.T


@pytest.mark.parametrize("name", ["astronaut 512", "tilted", "1600x1200", "4000x3000"])
def test_the_quick_search_crops_as_the_full_search_does(astronaut, name):
    import simpsonize.model.detection as detection

    photo = _photos(astronaut)[name]
    detector_side = min(max(photo.size), detection.DETECT_MAX_SIDE)
    quick = detection._quick_search(photo, detector_side, "cpu")
    assert quick is not None and len(quick) == 1  # the big face was found without the full search
    full = detection._search(photo, detection._downscaled(photo, detector_side), detection.MTCNN_MIN_FACE, "cpu")
    assert len(full) == 1
    quick_crop, full_crop = crop_face(photo, size=128), align_crop(photo, full[0], 128)
    assert quick_crop.face == quick[0]
    # the same crop square (its corners, rotation included) within 2 px of the image the detector sees (for the
    # 4000 px photo: 2 px of its 1024 px copy)
    px = max(photo.size) / detector_side
    assert np.abs(_corners(quick_crop) - _corners(full_crop)).max() <= 2 * px
    diff = np.abs(np.asarray(quick_crop.image, float) - np.asarray(full_crop.image, float)).mean()
    assert diff < 10  # out of 255: the same face, framed the same (a 1 px shift moves edges by that much)


def test_a_small_face_in_a_big_photo_is_found_by_the_full_search(astronaut):
    """A face 3 % of the photo's side (a group photo, a face far off): too small for the quick search."""
    import simpsonize.model.detection as detection

    photo = Image.new("RGB", (3000, 3000), (120, 120, 120))
    photo.paste(astronaut.resize((500, 500), Image.BICUBIC), (1800, 300))  # her face ~90 px
    assert detection._quick_search(photo, detection.DETECT_MAX_SIDE, "cpu") is None
    faces = detect_faces(photo)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    cx, cy = 1800 + ASTRONAUT_FACE_CENTRE[0] * 500 / 512, 300 + ASTRONAUT_FACE_CENTRE[1] * 500 / 512
    assert x0 < cx < x1 and y0 < cy < y1
    crop = crop_face(photo, size=64)
    assert 60 < crop.side < 250 and crop.outside == 0.0


# -- phone-sized photos: the detector's copy and the shrink before the affine both run -------------------------------

# Eileen Collins' eyes in the 512 px astronaut, measured by hand (see ASTRONAUT_FACE_CENTRE).
ASTRONAUT_EYES = ((205.0, 102.0), (247.0, 104.0))
PHONE = (4032, 3024)  # a 12 MP phone photo
PHONE_SCALE = 3000 / 512
PHONE_OFFSET = (700, 0)
PHONE_TILT = 12.0  # degrees, counter-clockwise as PIL rotates


def _phone_point(x: float, y: float) -> tuple[float, float]:
    """Where a point of the 512 px astronaut lands in the phone photo (scaled, pasted, then tilted)."""
    cx, cy = _phone_centre()
    px, py = PHONE_OFFSET[0] + x * PHONE_SCALE - cx, PHONE_OFFSET[1] + y * PHONE_SCALE - cy
    t = np.radians(PHONE_TILT)
    return cx + px * np.cos(t) + py * np.sin(t), cy - px * np.sin(t) + py * np.cos(t)


def _phone_centre() -> tuple[float, float]:
    return (
        PHONE_OFFSET[0] + ASTRONAUT_FACE_CENTRE[0] * PHONE_SCALE,
        PHONE_OFFSET[1] + ASTRONAUT_FACE_CENTRE[1] * PHONE_SCALE,
    )


@pytest.fixture(scope="module")
def phone_photo(astronaut) -> Image.Image:
    """Her face ~530 px wide in a tilted 4032x3024 photo: the detector sees a 1024 px copy, and the crop (side
    > 2 x 256) is cut from a shrunk copy of the full-resolution photo."""
    photo = Image.new("RGB", PHONE, (90, 100, 110))
    photo.paste(astronaut.resize((3000, 3000), Image.BICUBIC), PHONE_OFFSET)
    return photo.rotate(PHONE_TILT, resample=Image.BICUBIC, center=_phone_centre())


def _reference_crop(photo: Image.Image, crop, framing, size: int, eye_line_shift: float = 0.0) -> Image.Image:
    """The framing rule done independently, at full resolution: level the eyes about their midpoint, then take the
    square of ``crop.side`` with the eye midpoint centred across and at ``eye_line`` of its height."""
    left, right = np.asarray(crop.face.landmarks[0]), np.asarray(crop.face.landmarks[1])
    mx, my = (left + right) / 2
    levelled = photo.rotate(crop.angle, resample=Image.BICUBIC, center=(mx, my))
    top = my - (framing.eye_line + eye_line_shift) * crop.side
    return levelled.resize(
        (size, size), Image.LANCZOS, box=(mx - crop.side / 2, top, mx + crop.side / 2, top + crop.side)
    )


@pytest.mark.parametrize("framing", [Framing(), Framing(scale=3.0, eye_line=0.42)], ids=["default", "loose"])
def test_a_phone_photo_is_cropped_by_the_framing_rule(phone_photo, framing):
    size = 256
    crop = crop_face(phone_photo, size=size, framing=framing)
    assert crop.side > 2 * size  # the shrink-before-affine path ran

    # the eyes found are hers, where the hand measurement puts them
    left, right = (np.asarray(p) for p in crop.face.landmarks[:2])
    expected = [np.asarray(_phone_point(*eye)) for eye in ASTRONAUT_EYES]
    eye_distance = np.linalg.norm(expected[1] - expected[0])
    assert np.linalg.norm(left - expected[0]) < 0.06 * eye_distance
    assert np.linalg.norm(right - expected[1]) < 0.06 * eye_distance
    assert abs(crop.angle - (np.degrees(np.arctan2(*(expected[1] - expected[0])[::-1])))) < 2.0

    # the side: framing.scale x mean(eye distance, eye-to-mouth distance)
    mouth = (np.asarray(crop.face.landmarks[3]) + np.asarray(crop.face.landmarks[4])) / 2
    rule = framing.scale * (np.linalg.norm(right - left) + np.linalg.norm(mouth - (left + right) / 2)) / 2
    assert crop.side == pytest.approx(rule, rel=1e-6)

    # the pixels: the eyes land level, centred, on the eye line (an 0.02 shift of the line costs ~15 grey levels)
    pixels = np.asarray(crop.image, float)
    assert np.abs(pixels - np.asarray(_reference_crop(phone_photo, crop, framing, size), float)).mean() < 3
    shifted = _reference_crop(phone_photo, crop, framing, size, eye_line_shift=0.02)
    assert np.abs(pixels - np.asarray(shifted, float)).mean() > 8

    # the centre reported for placing results back is where the rule puts it
    centre = np.asarray(crop.center)
    mid = (left + right) / 2
    theta = np.radians(crop.angle)
    down = np.array([-np.sin(theta), np.cos(theta)])  # the crop's vertical axis in the photo
    assert np.linalg.norm(centre - (mid + (0.5 - framing.eye_line) * crop.side * down)) < 1.0


def test_the_largest_of_several_faces_is_the_one_cropped(astronaut):
    """Two people in a phone photo, the bigger one to the right and lower: the bigger one is cropped, the other one
    reported."""
    head = astronaut.crop((120, 20, 330, 240))  # her head, 210x220
    photo = Image.new("RGB", PHONE, (90, 100, 110))
    small, big = (840, 880), (1365, 1430)
    photo.paste(head.resize(small, Image.BICUBIC), (200, 300))
    photo.paste(head.resize(big, Image.BICUBIC), (2200, 1200))

    def centre(offset, patch):
        return (
            offset[0] + (ASTRONAUT_FACE_CENTRE[0] - 120) * patch[0] / 210,
            offset[1] + (ASTRONAUT_FACE_CENTRE[1] - 20) * patch[1] / 220,
        )

    def contains(face, point):
        x0, y0, x1, y1 = face.box
        return x0 < point[0] < x1 and y0 < point[1] < y1

    crop = crop_face(photo, size=64)
    assert contains(crop.face, centre((2200, 1200), big))
    assert len(crop.other_faces) == 1 and contains(crop.other_faces[0], centre((200, 300), small))
    assert crop.face.area > 2 * crop.other_faces[0].area
    assert abs(crop.center[0] - centre((2200, 1200), big)[0]) < 0.1 * crop.side


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (19, 400), (2000, 30), (30, 2000)])
def test_photos_too_small_or_thin_for_the_detector_raise_a_sentence(size):
    """MTCNN raised a bare ValueError (an empty image pyramid) on these."""
    image = Image.new("RGB", size, (120, 100, 90))
    assert detect_faces(image) == []
    with pytest.raises(NoFaceFound) as error:
        crop_face(image, size=64)
    message = str(error.value)
    assert message.endswith(".") and "ValueError" not in message
    if min(size) < 20:
        assert f"{size[0]}x{size[1]} pixels" in message and "too small" in message


def test_a_big_photo_is_shrunk_only_where_the_crop_reads_it(phone_photo, monkeypatch):
    """The crop of a 12 MP photo resamples the face's region, not the whole photo (which cost more than MTCNN);
    counted in source pixels read by the resizes of the alignment, not timed."""
    read = []
    original = Image.Image.resize

    def counting_resize(self, size, resample=None, box=None, reducing_gap=None):
        x0, y0, x1, y1 = box if box is not None else (0, 0, *self.size)
        read.append((x1 - x0) * (y1 - y0))
        return original(self, size, resample, box, reducing_gap)

    face = detect_faces(phone_photo)[0]
    monkeypatch.setattr(Image.Image, "resize", counting_resize)
    crop = align_crop(phone_photo, face, 256)
    assert crop.side > 2 * 256  # the shrink path ran
    photo_pixels = phone_photo.width * phone_photo.height
    assert read and sum(read) < 0.25 * photo_pixels
    # ...and reads all of the square the crop shows (its rotated corners lie inside what was resampled)
    assert sum(read) >= crop.side**2


def test_an_upright_rgb_photo_is_used_as_it_is_not_copied(astronaut):
    """No EXIF rotation and already RGB: nothing to do, so no 36 MB copy of a 12 MP photo (exif_transpose copies)."""
    assert open_image(astronaut) is astronaut
    wide = astronaut.crop((0, 0, 512, 300))
    stored = Image.open(io.BytesIO(exif_rotated_jpeg(wide)))
    assert stored.size == (300, 512)
    assert open_image(stored).size == (512, 300)  # a rotation tag still turns it upright


def test_a_group_of_middle_sized_faces_is_found_whole(astronaut):
    """Four faces of 6 % of the shorter side: the quick search (faces of 15 % and more) found one of them, under
    its floor; a face under the floor sends the photo to the full search, which finds all four."""
    canvas = Image.new("RGB", (1600, 1200), (90, 110, 140))
    tile = astronaut.resize((400, 400))
    for cell in (0, 2, 5, 7):
        canvas.paste(tile, ((cell % 4) * 400, (cell // 4) * 400))
    assert len(detect_faces(canvas)) == 4
