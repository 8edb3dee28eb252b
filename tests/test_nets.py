"""The reference CycleGAN/pix2pix architectures: parameter counts, key layout, inference."""

from __future__ import annotations

import pytest
import torch

from img2img.config import ConfigError, make_config
from img2img.nets import registry
from img2img.nets.patchgan import NLayerDiscriminator, PixelDiscriminator
from img2img.tasks.common import generator_arch

from helpers import TRAINABLE, generator_cases, generator_input_size

count = registry.count_parameters


@pytest.mark.parametrize("arch, hparams, expected", [
    ("unet", {"num_downs": 8, "norm": "batch"}, 54_413_955),
    ("resnet", {"n_blocks": 9, "norm": "instance"}, 11_378_179),
    ("resnet", {"n_blocks": 6, "norm": "instance"}, 7_837_699),
])
def test_generator_parameter_counts_equal_the_reference(arch, hparams, expected):
    assert count(registry.build(arch, **hparams)) == expected


def test_patchgan_parameter_counts_equal_the_reference():
    assert count(NLayerDiscriminator(in_ch=6, n_layers=3, norm="batch")) == 2_768_705
    assert count(NLayerDiscriminator(in_ch=3, n_layers=3, norm="instance")) == 2_764_737


def test_reference_key_names():
    resnet = registry.build("resnet", n_blocks=6, ngf=8, norm="instance").state_dict()
    assert {"model.1.weight", "model.1.bias", "model.10.conv_block.1.weight", "model.10.conv_block.5.weight",
            "model.23.weight"} <= resnet.keys()
    dropout = registry.build("resnet", n_blocks=6, ngf=8, norm="instance", use_dropout=True).state_dict()
    assert "model.10.conv_block.6.weight" in dropout
    unet = registry.build("unet", num_downs=7, ngf=8, norm="batch").state_dict()
    assert {"model.model.0.weight", "model.model.1.model.1.weight", "model.model.1.model.2.running_mean",
            "model.model.1.model.3.model.3.model.3.model.3.model.3.model.1.weight", "model.model.3.weight"} <= unet.keys()
    assert "net.3.running_var" in PixelDiscriminator(norm="batch").state_dict()


@pytest.mark.parametrize("arch, hparams", [
    ("resnet", {"in_ch": 3, "out_ch": 3, "ngf": 8, "n_blocks": 6, "norm": "instance", "use_dropout": False}),
    ("resnet", {"in_ch": 1, "out_ch": 3, "ngf": 16, "n_blocks": 9, "norm": "batch", "use_dropout": True}),
    ("resnet", {"in_ch": 3, "out_ch": 1, "ngf": 8, "n_blocks": 2, "norm": "none", "use_dropout": False}),
    ("unet", {"in_ch": 3, "out_ch": 3, "num_downs": 7, "ngf": 8, "norm": "batch", "use_dropout": True}),
    ("unet", {"in_ch": 1, "out_ch": 2, "num_downs": 5, "ngf": 4, "norm": "instance", "use_dropout": True}),
    ("unet", {"in_ch": 3, "out_ch": 3, "num_downs": 9, "ngf": 4, "norm": "none", "use_dropout": True}),
])
def test_architecture_is_inferred_from_a_state_dict(arch, hparams):
    state_dict = registry.build(arch, **hparams).state_dict()
    assert registry.infer_from_state_dict(state_dict) == (arch, hparams)


def test_unknown_layout_is_refused_with_a_message():
    with pytest.raises(ValueError, match="match no known generator layout"):
        registry.infer_from_state_dict({"foo.weight": torch.zeros(3)})


@pytest.mark.parametrize("netG, size, levels", [("unet_256", 256, 8), ("unet_256", 64, 6), ("unet_128", 96, 5)])
def test_unet_depth_follows_the_crop_size(netG, size, levels):
    arch, hparams, note = generator_arch(make_config("pix2pix", {"netG": netG, "size": size}))
    assert hparams["num_downs"] == levels
    assert (note is None) == (levels == int(netG.split("_")[1]).bit_length() - 1)
    net = registry.build(arch, **{**hparams, "ngf": 4})
    assert net(torch.zeros(1, 3, size, size)).shape == (1, 3, size, size)


def test_unet_refuses_a_crop_it_cannot_use():
    with pytest.raises(ConfigError, match="multiple of 32"):
        generator_arch(make_config("pix2pix", {"netG": "unet_256", "size": 40}))


def test_discriminators_give_patch_logits():
    assert NLayerDiscriminator(in_ch=6, ndf=8)(torch.zeros(2, 6, 64, 64)).shape == (2, 1, 6, 6)
    assert PixelDiscriminator(in_ch=6, ndf=8)(torch.zeros(2, 6, 16, 16)).shape == (2, 1, 16, 16)


# ---- every generator trains from scratch -------------------------------------------------

def test_the_gradient_flow_table_covers_every_registered_generator():
    assert set(TRAINABLE) == set(registry.names("generator"))


@pytest.mark.parametrize("arch, hparams", generator_cases())
def test_gradients_reach_the_first_layer_at_initialisation(arch, hparams):
    """With PyTorch's default init the gradient vanished through SRVGGNetCompact's plain stack
    (1e-16 at the first layer against 1e-3 at the last): the first layer never trained."""
    torch.manual_seed(0)
    net = registry.build(arch, **hparams)
    size = generator_input_size(arch)
    output = net(torch.rand(2, 3, size, size))
    (output - torch.rand_like(output)).square().mean().backward()
    convs = [p for p in net.parameters() if p.ndim == 4]
    first, last = float(convs[0].grad.norm()), float(convs[-1].grad.norm())
    assert last > 0 and 1e-3 < first / last < 1e3, (first, last)


def test_unet_upsampling_starts_without_a_checkerboard():
    """Every transposed convolution of a fresh U-Net answers a flat image with a flat one (away
    from the border): each of its four output phases sums the same weights (issue 15)."""
    torch.manual_seed(0)
    net = registry.build("unet", num_downs=5, ngf=8)
    layers = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(layers) == 5
    for layer in layers:
        flat = layer(torch.ones(1, layer.in_channels, 6, 6))[..., 1:-1, 1:-1]
        assert torch.allclose(flat, flat[..., :1, :1].expand_as(flat), atol=1e-6)
        assert 0.01 < float(layer.weight.detach()[..., 1:-1, 1:-1].std()) < 0.03  # the reference's N(0, 0.02) scale


@pytest.mark.parametrize("affine", [False, True])
def test_our_instance_norm_computes_what_pytorchs_does(affine):
    from img2img.nets.layers import InstanceNorm2d

    torch.manual_seed(0)
    ours, theirs = InstanceNorm2d(6, affine=affine), torch.nn.InstanceNorm2d(6, affine=affine)
    if affine:
        with torch.no_grad():
            ours.weight.normal_(), ours.bias.normal_()
        theirs.load_state_dict(ours.state_dict())
    x = (torch.randn(3, 6, 17, 9) * 4 + 2).requires_grad_()
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=0, atol=1e-5)
    grad_ours, = torch.autograd.grad((y_ours * y_theirs.detach()).sum(), x)
    grad_theirs, = torch.autograd.grad((y_theirs * y_theirs.detach()).sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("n_layers", [1, 2, 3, 4, 5])
def test_the_patchgan_size_limit_is_where_the_network_stops_working(n_layers, norm):
    from img2img.tasks.common import patchgan_min_size

    net = registry.build("patchgan", in_ch=6, ndf=2, n_layers=n_layers, norm=norm).train()
    for size in range(12, 3 * 2**n_layers + 9, 4):
        try:
            net(torch.zeros(1, 6, size, size))
            works = True
        except (ValueError, RuntimeError):
            works = False
        assert works == (size >= patchgan_min_size(n_layers)), size


@pytest.mark.parametrize("task, flags", [("pix2pix", {"size": 16}), ("cyclegan", {"size": 16}),
                                         ("cut", {"size": 16}), ("pix2pix", {"netD": "n_layers", "n_layers_d": 7})])
def test_a_crop_too_small_for_the_patchgan_is_a_usage_error_naming_what_fits(task, flags, tmp_path):
    from img2img.tasks import TASKS

    cfg = make_config(task, {"a": str(tmp_path), "b": str(tmp_path), "netG": "resnet_1blocks", "ngf": 4, "ndf": 4,
                             **flags})
    with pytest.raises(ConfigError, match=f"--size {cfg.size} is too small for a PatchGAN.*--n-layers-d"):
        TASKS[task](cfg, torch.device("cpu"), None, data=False)
