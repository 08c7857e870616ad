"""How much of the head a crop shows (no torch here: the landmark networks and the face crop both use it).

Two modes:

- ``eyes`` (every model so far): the side is ``scale`` times the mean of the eye distance and the eye-to-mouth
  distance (MTCNN's five points), and the eye line sits at ``eye_line`` of the height. Measured with MTCNN on 150 of
  UTKFace's tight crops: both distances are ~0.45 of the crop side and the eyes sit at ~0.22 of its height; the default
  keeps UTKFace's scale (2.3) and puts the eyes at 0.33, lower, as the show's eyes sit.
- ``head``: the whole head, as the show's crops frame it (hair to chin). MediaPipe's face mesh gives the chin and the
  face's width, its person mask the top of the hair (``simpsonize.model.head``); the square then runs from
  ``top_margin`` above the head's top to the chin at ``chin_line`` of the height, eyes centred across. Each face gets
  its own ``scale`` and ``eye_line``; the crop is then cut exactly as an ``eyes`` crop with those two numbers.

A model's framing is stored in its weights' metadata, so serving crops as its training data was cropped.
"""

from __future__ import annotations

from dataclasses import dataclass

CROP_SCALE = 2.3  # crop side / mean(eye distance, eye-to-mouth distance)
EYE_LINE = 0.33  # height of the eye line in the crop, as a fraction of its side
FRAMING_MODES = ("eyes", "head")
# The show's crops (simpsons_faces, 200x200) hold the head from the top of the hair, often touching the edge, down to
# the chin at about 0.9-1.0 of the height.
HEAD_TOP_MARGIN = 0.04
HEAD_CHIN_LINE = 0.93


@dataclass(frozen=True)
class Framing:
    """How much of the head a crop shows. Stored in the weights' metadata so serving crops as training did."""

    scale: float = CROP_SCALE  # crop side / mean(eye distance, eye-to-mouth distance)
    eye_line: float = EYE_LINE  # height of the eye line in the crop, as a fraction of its side
    mode: str = "eyes"  # "head": scale and eye_line are found per face from the mesh and the person mask
    top_margin: float = HEAD_TOP_MARGIN  # head mode: room above the hair's top, as a fraction of the side
    chin_line: float = HEAD_CHIN_LINE  # head mode: height of the chin in the crop, as a fraction of the side

    def __post_init__(self) -> None:
        if self.mode not in FRAMING_MODES:
            raise ValueError(f"Unknown framing mode {self.mode!r}: use one of {', '.join(FRAMING_MODES)}.")
        if self.mode == "head" and not 0 <= self.top_margin < self.chin_line <= 1:
            raise ValueError("A head framing needs 0 <= top_margin < chin_line <= 1.")

    def to_dict(self) -> dict:
        if self.mode == "eyes":  # as every eyes-framed model stored it, so their framings still compare equal
            return {"scale": self.scale, "eye_line": self.eye_line}
        return {"mode": self.mode, "top_margin": self.top_margin, "chin_line": self.chin_line}

    @classmethod
    def from_dict(cls, data: dict | None) -> Framing:
        data = data or {}
        if data.get("mode", "eyes") == "head":
            return cls(
                mode="head",
                top_margin=float(data.get("top_margin", HEAD_TOP_MARGIN)),
                chin_line=float(data.get("chin_line", HEAD_CHIN_LINE)),
            )
        return cls(scale=float(data.get("scale", CROP_SCALE)), eye_line=float(data.get("eye_line", EYE_LINE)))
