import json
from pathlib import Path

import pytest
import torch

from simpsonize.model.networks import (
    DiscriminatorConfig,
    GeneratorConfig,
    NLayerDiscriminator,
    ResnetGenerator,
    init_weights,
    instance_norm,
)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "reference_cyclegan_generator_keys.json"
REFERENCE = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("variant", sorted(REFERENCE))
def test_generator_state_dict_matches_reference_layout(variant):
    n_blocks = int(variant.split("_")[1].removesuffix("blocks"))
    ngf = int(variant.split("ngf")[1])
    generator = ResnetGenerator(GeneratorConfig(ngf=ngf, n_blocks=n_blocks))
    ours = {k: list(v.shape) for k, v in generator.state_dict().items()}
    assert ours == REFERENCE[variant]


def test_all_four_reference_variants_are_covered():
    assert sorted(REFERENCE) == sorted(
        ["resnet_9blocks_ngf64", "resnet_9blocks_ngf32", "resnet_6blocks_ngf64", "resnet_6blocks_ngf32"]
    )


def test_resize_conv_keeps_the_layout_except_the_upsampling_layers():
    transpose = ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=2)).state_dict()
    resize = ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=2, upsampling="resize_conv")).state_dict()
    differing = set(transpose) ^ set(resize)
    assert differing == {
        "model.12.weight",
        "model.12.bias",
        "model.15.weight",
        "model.15.bias",
        "model.12.conv.weight",
        "model.12.conv.bias",
        "model.15.conv.weight",
        "model.15.conv.bias",
    }
    assert resize["model.12.conv.weight"].shape == (16, 32, 3, 3)


@pytest.mark.parametrize("upsampling", ["transpose", "resize_conv"])
def test_generator_keeps_size_and_range(upsampling):
    generator = init_weights(ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1, upsampling=upsampling)))
    out = generator(torch.randn(2, 3, 32, 32) * 3)
    assert out.shape == (2, 3, 32, 32)
    assert out.abs().max() <= 1.0


def test_patchgan_sees_70px_patches_on_256_input():
    disc = NLayerDiscriminator(DiscriminatorConfig(ndf=8))
    assert disc(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_init_is_normal_with_std_002_and_zero_bias():
    torch.manual_seed(0)
    generator = init_weights(ResnetGenerator(GeneratorConfig(ngf=32, n_blocks=6)))
    weight = generator.model[10].conv_block[1].weight.detach()
    assert abs(float(weight.std()) - 0.02) < 0.002
    assert abs(float(weight.mean())) < 0.002
    assert float(generator.model[1].bias.detach().abs().max()) == 0.0


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError):
        GeneratorConfig(upsampling="bilinear")


@pytest.mark.parametrize("batch, then_relu", [(1, False), (2, False), (1, True)])
def test_the_networks_instance_norm_takes_a_channels_last_gradient_as_it_is(batch, then_relu):
    """torch 2.14.1 misreads a channels_last incoming gradient at batch 1 (the canary in
    tests/training/test_precision.py; in a channels_last training step such gradients reach the residual blocks'
    norms). The networks' own instance norm hands its backward a contiguous copy."""
    torch.manual_seed(0)
    x, grad = torch.randn(batch, 4, 6, 6), torch.randn(batch, 4, 6, 6)

    def input_grad(incoming: torch.Tensor) -> torch.Tensor:
        leaf = x.clone().requires_grad_(True)
        out = instance_norm(4)(leaf)
        if then_relu:  # in place, as the networks follow it: allowed, and the gradient still goes through
            torch.relu_(out)
        out.backward(incoming)
        return leaf.grad

    torch.testing.assert_close(input_grad(grad.contiguous(memory_format=torch.channels_last)), input_grad(grad))
    with torch.no_grad():  # serving: nothing added
        assert type(instance_norm(4)(x).grad_fn) is type(None)
