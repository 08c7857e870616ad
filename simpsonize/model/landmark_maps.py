"""Landmark heatmaps as extra generator input (Landmark Assisted CycleGAN; Wu et al., 2019).

The real -> Simpsons generator draws blank white eyes because nothing tells it where a pupil should go. With
``train --landmark-maps`` it gets, beside the photo's three channels, one heatmap per face part (:data:`GROUPS`:
eyes, brows, nose, mouth, face outline), drawn from MediaPipe's face mesh run on the very crop it translates. The
same maps are drawn again when serving (:class:`LandmarkGuidedGenerator` is a generator that draws them itself), so
training and serving cannot disagree about them.

Why on the crop itself, padded: the generator's crop holds the face edge to edge (the mesh spans 0.93 of its side),
while the mesh was trained on a face box 1.5x wider. Padding the crop by a quarter of its side on each side (edge
pixels repeated) gives the mesh about its own framing; the points are mapped back into the crop.

Why a sum of separable Gaussians: ``exp(-(dx² + dy²) / 2σ²)`` is an outer product per point, so a group's map is one
matrix product (B x H x N times B x N x W) instead of an N x H x W tensor per face; clamped to 1 where points crowd.

A face the mesh does not find (face-present score below MediaPipe's 0.5: a cartoon, a cat) gets all-zero maps.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simpsonize.model.landmarks import FACE_OVAL, LEFT_EYE_CONTOUR, RIGHT_EYE_CONTOUR, FaceMesh
from simpsonize.model.networks import GeneratorConfig, ResnetGenerator

# MediaPipe face-mesh indices (face_mesh_connections.py) of each part; "right" and "left" are the person's own.
RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
NOSE = (168, 6, 197, 195, 5, 4, 1, 2, 98, 327)  # the bridge down to the tip, then the nostrils' wings
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
GROUPS: dict[str, tuple[int, ...]] = {
    "eyes": RIGHT_EYE_CONTOUR + LEFT_EYE_CONTOUR,
    "brows": RIGHT_BROW + LEFT_BROW,
    "nose": NOSE,
    "mouth": LIPS_OUTER,
    "face_oval": FACE_OVAL,
}
MAP_CHANNELS = len(GROUPS)
MESH_PAD = 0.25  # of the crop's side, on each side: the mesh sees the face at about its own framing
SIGMA = 0.012  # of the crop's side: 1.5 px at 128 px
MIN_FACE_SCORE = 0.5  # MediaPipe's own threshold on the face-present score


class LandmarkMaps(nn.Module):
    """Face crops (B x 3 x H x W in [-1, 1]) -> B x :data:`MAP_CHANNELS` x H x W heatmaps in [0, 1]. No gradients:
    the maps are an input, not something the generator can change."""

    def __init__(self, weights: str | Path = "face_landmark") -> None:
        super().__init__()
        self.mesh = FaceMesh("cpu", weights).net
        self.mesh.requires_grad_(False)
        self.register_buffer("indices", torch.tensor([i for group in GROUPS.values() for i in group]), persistent=False)
        self.group_sizes = [len(group) for group in GROUPS.values()]

    @torch.no_grad()
    def points(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B x 468 x 2 mesh points in the crop's pixels, B face-present scores)."""
        side = crops.shape[-1]
        pad = round(MESH_PAD * side)
        canvas = F.pad((crops.float() + 1) / 2, (pad, pad, pad, pad), mode="replicate")
        mesh_in = F.interpolate(
            canvas, size=(FaceMesh.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True
        )
        landmarks, logits = self.mesh(mesh_in)
        landmarks = landmarks.reshape(len(crops), -1, 3)[..., :2]
        return landmarks * (canvas.shape[-1] / FaceMesh.input_size) - pad, torch.sigmoid(logits.reshape(-1))

    @torch.no_grad()
    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        with torch.autocast(crops.device.type, enabled=False):
            batch, _, height, width = crops.shape
            points, scores = self.points(crops)
            chosen = points[:, self.indices]  # B x N x 2
            sigma = SIGMA * width
            xs = torch.arange(width, device=crops.device, dtype=torch.float32) + 0.5
            ys = torch.arange(height, device=crops.device, dtype=torch.float32) + 0.5
            gx = torch.exp(-((xs[None, None, :] - chosen[..., :1]) ** 2) / (2 * sigma**2))  # B x N x W
            gy = torch.exp(-((ys[None, None, :] - chosen[..., 1:]) ** 2) / (2 * sigma**2))  # B x N x H
            maps = [
                torch.einsum("bnh,bnw->bhw", y, x)
                for y, x in zip(gy.split(self.group_sizes, dim=1), gx.split(self.group_sizes, dim=1), strict=True)
            ]
            found = (scores >= MIN_FACE_SCORE).float().view(batch, 1, 1, 1)
            return torch.stack(maps, dim=1).clamp(max=1) * found


class LandmarkGuidedGenerator(ResnetGenerator):
    """A generator trained with ``--landmark-maps``: called like any generator (B x 3 x H x W in [-1, 1]), it draws
    the maps and runs on the photo and its maps (``config.input_nc`` = 3 + :data:`MAP_CHANNELS`), as in training.

    Its parameters and state dict are exactly a ``ResnetGenerator``'s: the mesh is kept outside the module tree, so
    it is never trained, saved, averaged or synchronised across processes; it follows the input's device.
    """

    def __init__(self, config: GeneratorConfig, maps: LandmarkMaps | None = None) -> None:
        if config.input_nc != 3 + MAP_CHANNELS:
            raise ValueError(f"a landmark-guided generator takes 3 + {MAP_CHANNELS} channels, not {config.input_nc}")
        super().__init__(config)
        object.__setattr__(self, "_maps", maps)  # plain attribute: not a submodule (see above)

    def maps_on(self, device: torch.device) -> LandmarkMaps:
        maps = self.__dict__["_maps"]
        if maps is None:  # loaded from a weights file: the mesh is loaded at the first call
            maps = LandmarkMaps()
        if maps.indices.device != device:
            maps = maps.to(device)
        object.__setattr__(self, "_maps", maps)
        return maps

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return super().forward(with_maps(crops, self.maps_on(crops.device)))


def with_maps(crops: torch.Tensor, maps: LandmarkMaps) -> torch.Tensor:
    """The crops and their maps as one (3 + :data:`MAP_CHANNELS`)-channel input, in the crops' dtype and layout."""
    drawn = maps(crops.detach()).to(dtype=crops.dtype)
    joined = torch.cat([crops, drawn], dim=1)
    if crops.is_contiguous(memory_format=torch.channels_last) and not crops.is_contiguous():
        joined = joined.contiguous(memory_format=torch.channels_last)
    return joined
