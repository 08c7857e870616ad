"""training/eyes.py: the rule-based finder of the show's eyes (a white disc, outlined, holding a black dot)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from simpsonize.training.eyes import WORK_SIDE, Eye, eyes_share, find_eyes, pupil_count

SKIN = (255, 217, 15)  # the show's yellow


def face(eyes=((40, 50), (86, 50)), radius=16, pupil=4, pupil_shift=(3, 0), side=WORK_SIDE) -> Image.Image:
    """A drawn face: yellow, with outlined white discs at ``eyes`` (px at 128) and, if ``pupil``, a black dot."""
    image = Image.new("RGB", (side, side), SKIN)
    draw = ImageDraw.Draw(image)
    k = side / WORK_SIDE
    for x, y in eyes:
        draw.ellipse(
            [k * (x - radius), k * (y - radius), k * (x + radius), k * (y + radius)],
            fill="white",
            outline="black",
            width=max(1, round(2 * k)),
        )
        if pupil:
            px, py = x + pupil_shift[0], y + pupil_shift[1]
            draw.ellipse([k * (px - pupil), k * (py - pupil), k * (px + pupil), k * (py + pupil)], fill="black")
    return image


def test_it_finds_both_drawn_eyes_with_their_pupils_where_they_are():
    eyes = find_eyes(face())
    assert pupil_count(eyes) == 2
    by_x = sorted((e for e in eyes if e.pupil), key=lambda e: e.x)
    for eye, (x, y) in zip(by_x, ((40, 50), (86, 50))):
        assert abs(eye.x * WORK_SIDE - x) < 3 and abs(eye.y * WORK_SIDE - y) < 3
        assert abs(eye.px * WORK_SIDE - (x + 3)) < 2 and abs(eye.py * WORK_SIDE - y) < 2
        assert 0.08 < eye.r < 0.14  # 16 px of 128, less the outline


def test_touching_eyes_are_split_and_a_pupil_at_the_edge_still_counts():
    """Homer's eyes touch; a character looking sideways has the dot against the outline."""
    eyes = find_eyes(face(eyes=((46, 50), (76, 50)), pupil_shift=(10, 0)))
    assert pupil_count(eyes) == 2


@pytest.mark.parametrize("side", [64, 200, 256])
def test_it_works_at_any_size_and_on_tensors(side):
    image = face(side=side)
    assert pupil_count(find_eyes(image)) == 2
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1
    assert pupil_count(find_eyes(tensor)) == 2


def test_a_plain_white_disc_is_an_eye_without_a_pupil():
    """The shipped model's blank white patches: found as eyes, never counted as eyes with a pupil."""
    eyes = find_eyes(face(pupil=0))
    assert len(eyes) == 2 and pupil_count(eyes) == 0
    assert all(e.px == -1 for e in eyes)


def test_a_white_disc_without_an_outline_is_no_eye():
    image = Image.new("RGB", (WORK_SIDE, WORK_SIDE), SKIN)
    draw = ImageDraw.Draw(image)
    draw.ellipse([24, 34, 56, 66], fill="white")
    draw.ellipse([36, 46, 44, 54], fill="black")
    assert find_eyes(image) == []


def test_a_grey_pupil_or_a_textured_white_is_not_the_show():
    grey = face()
    draw = ImageDraw.Draw(grey)
    for x in (43, 89):
        draw.ellipse([x - 4, 46, x + 4, 54], fill=(110, 110, 110))  # a photo's iris, not the show's black dot
    assert pupil_count(find_eyes(grey)) == 0
    smudge = face()
    draw = ImageDraw.Draw(smudge)
    for x in (43, 89):
        draw.ellipse([x - 4, 46, x + 4, 54], fill=(60, 60, 60))  # dark, but no black core: a blurred iris
    assert pupil_count(find_eyes(smudge)) == 0
    noisy = np.asarray(face()).astype(np.float64)
    noisy += np.random.default_rng(0).normal(0, 30, noisy.shape) * (noisy.min(axis=2, keepdims=True) > 200)
    assert pupil_count(find_eyes(np.clip(noisy, 0, 255).astype(np.uint8))) == 0


def test_no_eyes_in_a_real_photo():
    skimage_data = pytest.importorskip("skimage.data")
    photo = Image.fromarray(skimage_data.astronaut())  # 512 px: a face, a white suit, a flag
    assert pupil_count(find_eyes(photo)) == 0
    assert pupil_count(find_eyes(photo.crop((140, 20, 300, 180)))) == 0  # her face, as a crop would frame it


def test_the_share_counts_images_with_at_least_one_eye_with_a_pupil():
    one_eye = face(eyes=((40, 50),))
    images = [face(), one_eye, face(pupil=0), Image.new("RGB", (64, 64), SKIN)]
    assert eyes_share(images) == 0.5
    assert eyes_share(images, at_least=2) == 0.25
    assert eyes_share([]) == 0.0


def test_an_eye_is_a_small_json_record():
    eye = find_eyes(face())[0]
    record = eye.to_dict()
    assert set(record) == {"x", "y", "r", "pupil", "px", "py"} and Eye(**record).pupil is True


# ------------------------------------------------------------------------- `simpsonize test`: the eyes row
class Draws(torch.nn.Module):
    """A 'generator' that answers every photo with the drawn face (eyes with pupils) or with the photo itself."""

    def __init__(self, draws: bool) -> None:
        super().__init__()
        self.draws = draws

    def forward(self, x):
        if not self.draws:
            return x
        drawn = torch.from_numpy(np.array(face(side=x.shape[-1]))).permute(2, 0, 1).float() / 127.5 - 1
        return drawn.expand(len(x), -1, -1, -1).clone()


@pytest.fixture(scope="module")
def drawn_dataset(tmp_path_factory):
    """Simpsons side: 4 drawn faces with eyes, 4 without pupils; real test side: 3 noise photos."""
    root = tmp_path_factory.mktemp("drawn")
    for split in ("trainA", "testB"):
        (root / split).mkdir()
    for i in range(8):
        face(pupil=4 if i % 2 else 0).save(root / "trainA" / f"{i}.png")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "testB" / f"{i}.png")
    return root


@pytest.mark.parametrize("draws, expected", [(True, 1.0), (False, 0.0)])
def test_the_eyes_row_counts_the_translations_with_pupils_beside_the_shows_share(drawn_dataset, draws, expected):
    from simpsonize.training.measures import c2st_of_generator, format_table
    from simpsonize.training.quality_pool import load_pool

    pool = load_pool(drawn_dataset)
    row, fake = c2st_of_generator(Draws(draws), pool, 64, seeds=(0, 1, 2))
    assert row["eyes"] == expected
    # the reference: 3 of the 8 drawn faces, drawn from a seeded shuffle; its share is what the finder says of them
    assert row["eyes_show"] == round(eyes_share(pool.reference(64)), 3)
    assert 0 < row["eyes_show"] < 1  # both kinds of drawn face are among them (seed 0): the share is not a constant
    table = format_table([{"weights": "w", **row}], "weights")
    assert f"| {expected:.1%} | {row['eyes_show']:.1%} |" in table
