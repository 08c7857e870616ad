"""The official TFLite interpreter's outputs for MediaPipe's networks on a few scikit-image photos: the fixture
``tests/fixtures/mediapipe_reference.json`` that ``tests/model/test_landmarks.py`` holds the torch port to.

Run it with a Python that has ``ai-edge-litert`` (Google's TFLite interpreter), numpy, Pillow and scikit-image, in a
throwaway venv (its dependencies must not meet the project's):

    python3.11 -m venv /tmp/litert-venv
    /tmp/litert-venv/bin/pip install ai-edge-litert==2.3.0 scikit-image==0.26.0 pillow==13.0.0
    /tmp/litert-venv/bin/python tools/mediapipe_reference.py [--models ~/.cache/simpsonize/mediapipe]

The interpreter runs with its default XNNPACK delegate, as MediaPipe does on CPU (the segmenter's custom
``Convolution2DTransposeBias`` op only exists there). Each case's input is a region of a scikit-image photo stretched
to the network's input size with Pillow; its SHA-256 goes into the fixture, so the test knows it feeds the same
pixels. Importing this module needs numpy, Pillow and scikit-image only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mediapipe_reference.json"
DEFAULT_MODELS = Path.home() / ".cache" / "simpsonize" / "mediapipe"
MEMBERS = {
    "face_landmark": "mediapipe/modules/face_landmark/face_landmark.tflite",
    "selfie_segmentation": "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    "iris_landmark": "mediapipe/modules/iris_landmark/iris_landmark.tflite",
}
INPUT_SIZE = {"face_landmark": 192, "selfie_segmentation": 256, "iris_landmark": 64}
MASK_BLOCK = 8  # the 256x256 mask is kept as the means of 8x8 blocks (32x32 values)


@dataclass(frozen=True)
class Case:
    network: str
    photo: str  # a scikit-image data function
    box: tuple[int, int, int, int] | None  # region of the photo (x0, y0, x1, y1); None: all of it
    mirrored: bool = False  # flipped left-right after resizing (the iris network sees right eyes mirrored)
    keep_points: bool = True  # False: the fixture keeps only the face-present logit (a cat's mesh means nothing)


CASES = {
    # MediaPipe-like face crops: the mesh's box x1.5 (found by iterating the mesh from the astronaut's face box).
    "face_astronaut": Case("face_landmark", "astronaut", (145, 42, 306, 204)),
    "face_cameraman": Case("face_landmark", "camera", (142, 85, 283, 226)),  # a face in profile: score ~0.6
    "face_cat": Case("face_landmark", "chelsea", (100, 20, 320, 240), keep_points=False),  # not a face: score ~0.01
    "mask_astronaut": Case("selfie_segmentation", "astronaut", None),
    "mask_cameraman": Case("selfie_segmentation", "camera", None),
    # The astronaut's eyes: squares 2.3x the mesh's corner-to-corner width, as MediaPipe crops them.
    "iris_astronaut_right": Case("iris_landmark", "astronaut", (181, 80, 226, 124), mirrored=True),
    "iris_astronaut_left": Case("iris_landmark", "astronaut", (224, 82, 269, 127)),
}


def case_input(case: Case) -> np.ndarray:
    """The network's input pixels for ``case``: HxWx3 uint8 (divide by 255 for the network)."""
    from skimage import data

    photo = Image.fromarray(getattr(data, case.photo)()).convert("RGB")
    size = INPUT_SIZE[case.network]
    image = photo.resize((size, size), Image.BILINEAR, box=case.box)
    if case.mirrored:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(image)


def digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def block_means(mask: np.ndarray, block: int = MASK_BLOCK) -> np.ndarray:
    height, width = mask.shape
    return mask.reshape(height // block, block, width // block, block).mean(axis=(1, 3))


def _rounded(values: np.ndarray, digits: int) -> list:
    return np.round(values.astype(np.float64), digits).tolist()


def reference(case: Case, model_path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))
    interpreter.allocate_tensors()
    pixels = case_input(case)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], (pixels.astype(np.float32) / 255.0)[None])
    interpreter.invoke()
    outputs = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    entry = {"case": asdict(case), "input_sha256": digest(pixels)}
    if case.network == "face_landmark":
        landmarks, logit = outputs
        entry["face_logit"] = round(float(logit.ravel()[0]), 3)
        if case.keep_points:
            entry["landmarks"] = _rounded(landmarks.reshape(468, 3), 1)
    elif case.network == "selfie_segmentation":
        entry.update(mask_block_means=_rounded(block_means(outputs[0].reshape(256, 256)), 2))
    else:
        contour, iris = outputs
        entry.update(contour=_rounded(contour.reshape(71, 3), 1), iris=_rounded(iris.reshape(5, 3), 1))
    return entry


def wrapped_json(value, width: int = 116) -> str:
    """Compact JSON broken after commas into lines of at most ``width`` characters (JSON allows a newline between any
    two tokens; no string here holds a comma)."""
    lines, line = [], ""
    for token in json.dumps(value, separators=(",", ":")).split(","):
        if line and len(line) + len(token) + 1 > width:
            lines.append(line + ",")
            line = token
        else:
            line = f"{line},{token}" if line else token
    return "\n".join(lines + [line]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", type=Path, default=DEFAULT_MODELS, help="the folder the mediapipe 0.10.21 wheel is unpacked into"
    )
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args(argv)
    try:
        from ai_edge_litert import __version__ as litert_version
    except ImportError:
        print("mediapipe_reference: needs ai-edge-litert (see this script's docstring).", file=sys.stderr)
        return 2
    missing = [m for m in MEMBERS.values() if not (args.models / m).is_file()]
    if missing:
        print(f"mediapipe_reference: {', '.join(missing)} missing under {args.models}.", file=sys.stderr)
        return 2
    fixture = {
        "about": "TFLite reference outputs for tests/model/test_landmarks.py; written by tools/mediapipe_reference.py",
        "interpreter": f"ai-edge-litert {litert_version} (XNNPACK)",
        "mask_block": MASK_BLOCK,
        "cases": {name: reference(case, args.models / MEMBERS[case.network]) for name, case in CASES.items()},
    }
    args.out.write_text(wrapped_json(fixture))
    print(f"{args.out}: {len(fixture['cases'])} cases, {args.out.stat().st_size / 1e3:.1f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
