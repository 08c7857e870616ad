"""Write the home page's before/after examples: `python tools/make_examples.py [--weights FILE]`.

Three photos whose licences allow it, all shipped with scikit-image (no download): the astronaut Eileen Collins
(NASA, public domain), the cameraman (CC0, photographed by Lav Varshney), and a group made of the two and a mirrored
astronaut. Each goes through the same ``Simpsonizer`` the service runs, as the web page would send it; the photo and
its composite are written to static/examples/ as NAME_before.jpg and NAME_after.jpg, with examples.json (what the page
shows: alt text, caption, source and licence) and SOURCES.md beside them. Run it whenever the shipped weights change
(weights/README.md, "How to ship a model").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "simpsonize" / "web" / "static" / "examples"  # package data: the page shows them
SIDE = 720  # the longest side written: enough for the page's column (52 rem), small in the repository
QUALITY = 85

ASTRONAUT = (
    "Eileen Collins, NASA astronaut; photo by NASA (Great Images in NASA, https://flic.kr/p/r9qvLn), "
    "public domain; shipped with scikit-image as skimage.data.astronaut."
)
CAMERAMAN = (
    "The cameraman; photo by Lav Varshney, CC0 1.0 (public domain dedication); shipped with scikit-image as "
    "skimage.data.camera."
)


def photos():
    """(name, photo, alt, caption, credit) for each example."""
    from PIL import Image, ImageOps
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    camera = Image.fromarray(data.camera()).convert("RGB")
    group = Image.new("RGB", (1536, 640), (235, 235, 235))
    group.paste(astronaut.resize((640, 640), Image.LANCZOS).crop((64, 0, 576, 640)), (0, 0))
    group.paste(camera.resize((640, 640), Image.LANCZOS).crop((64, 0, 576, 640)), (512, 0))
    group.paste(ImageOps.mirror(astronaut).resize((640, 640), Image.LANCZOS).crop((64, 0, 576, 640)), (1024, 0))
    return [
        ("astronaut", astronaut, "The astronaut Eileen Collins in her flight suit", "A portrait.", ASTRONAUT),
        (
            "cameraman",
            camera,
            "A man with a film camera on a tripod, in black and white",
            "A black-and-white photo, the face small and looking down.",
            CAMERAMAN,
        ),
        (
            "group",
            group,
            "Three people side by side",
            "A group: every face is drawn (a collage of the two photos above, the astronaut also mirrored).",
            "Made from the two photos above: " + ASTRONAUT + " " + CAMERAMAN,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="generator weights (default: the shipped ones)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from PIL import Image

    from simpsonize.model.pipeline import Simpsonizer

    simpsonizer = Simpsonizer(weights=args.weights, device="cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    listed, sources = [], ["# Where the example photos come from", ""]
    for name, photo, alt, caption, credit in photos():
        result = simpsonizer(photo)
        scale = min(1.0, SIDE / max(photo.size))
        size = (round(photo.width * scale), round(photo.height * scale))
        for suffix, image in (("before", photo), ("after", result.composite)):
            image.resize(size, Image.LANCZOS).save(args.out / f"{name}_{suffix}.jpg", quality=QUALITY, optimize=True)
        listed.append(
            {
                "name": name,
                "alt": alt,
                "caption": caption,
                "credit": credit,
                "width": size[0],
                "height": size[1],
                "faces": result.face_count,
            }
        )
        sources.append(
            f"- `{name}_before.jpg` / `{name}_after.jpg` ({result.face_count} face"
            f"{'s' if result.face_count != 1 else ''} drawn): {credit}"
        )
        print(f"{name}: {result.face_count} face(s), {size[0]}x{size[1]}")
    sources += [
        "",
        "The drawings are made by the shipped model (simpsonize/weights/simpsonize.safetensors; its licence: "
        "non-commercial use only, see weights/README.md) with tools/make_examples.py.",
        "",
    ]
    (args.out / "examples.json").write_text(json.dumps(listed, indent=1) + "\n")
    (args.out / "SOURCES.md").write_text("\n".join(sources))
    return 0


if __name__ == "__main__":
    sys.exit(main())
