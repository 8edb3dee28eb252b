"""CycleGAN / pix2pix generators from other code bases, recognised by structure.

Each layout below is written here, independently of img2img's networks, the way other code
bases write them (other block names, affine or plain InstanceNorm, BatchNorm with conv biases,
nearest + conv upsampling, prefixes and wrappers, sorted safetensors keys). A file of each goes
through `infer.translate` on an odd-sized image and must match the layout's own forward pass.
"""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from img2img import infer
from img2img.cli import app
from img2img.config import ConfigError
from img2img.data.images import read_image
from img2img.gan.checkpoint import CheckpointError, load_generator
from img2img.nets import registry
from img2img.nets.recognise import recognise, unwrap

runner = CliRunner()


def affine_instance(channels):
    return nn.InstanceNorm2d(channels, affine=True)


def plain_instance(channels):
    return nn.InstanceNorm2d(channels)


class Residual(nn.Module):
    """`block.N` instead of the reference's `conv_block.N`."""

    def __init__(self, width, norm, bias):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=bias), norm(width), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=bias), norm(width))

    def forward(self, x):
        return x + self.block(x)


class SequentialResnet(nn.Module):
    """One `model` sequence, as PyTorch-GAN and mmagic-style code write it."""

    def __init__(self, ngf=4, n_blocks=2, norm=affine_instance, bias=True, upsample="transpose"):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=bias), norm(ngf), nn.ReLU(True)]
        for width in (ngf, 2 * ngf):
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=bias), norm(2 * width), nn.ReLU(True)]
        layers += [Residual(4 * ngf, norm, bias) for _ in range(n_blocks)]
        for width in (4 * ngf, 2 * ngf):
            if upsample == "transpose":
                layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1, bias=bias)]
            else:
                layers += [nn.Upsample(scale_factor=2), nn.Conv2d(width, width // 2, 3, padding=1, bias=bias)]
            layers += [norm(width // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class NamedResnet(nn.Module):
    """Named attributes registered in forward order: conv_in, down1, ..., res.N.conv1, up2, conv_out."""

    def __init__(self, ngf=4, n_blocks=3):
        super().__init__()
        self.conv_in, self.norm_in = nn.Conv2d(3, ngf, 7), nn.BatchNorm2d(ngf)
        self.down1, self.norm_d1 = nn.Conv2d(ngf, 2 * ngf, 3, 2, 1), nn.BatchNorm2d(2 * ngf)
        self.down2, self.norm_d2 = nn.Conv2d(2 * ngf, 4 * ngf, 3, 2, 1), nn.BatchNorm2d(4 * ngf)
        self.res = nn.ModuleList(nn.ModuleDict({
            "conv1": nn.Conv2d(4 * ngf, 4 * ngf, 3), "bn1": nn.BatchNorm2d(4 * ngf),
            "conv2": nn.Conv2d(4 * ngf, 4 * ngf, 3), "bn2": nn.BatchNorm2d(4 * ngf)}) for _ in range(n_blocks))
        self.up1, self.norm_u1 = nn.Conv2d(4 * ngf, 2 * ngf, 3, padding=1), nn.BatchNorm2d(2 * ngf)
        self.up2, self.norm_u2 = nn.Conv2d(2 * ngf, ngf, 3, padding=1), nn.BatchNorm2d(ngf)
        self.conv_out = nn.Conv2d(ngf, 3, 7)

    def forward(self, x):
        x = F.relu(self.norm_in(self.conv_in(F.pad(x, (3, 3, 3, 3), mode="reflect"))))
        x = F.relu(self.norm_d2(self.down2(F.relu(self.norm_d1(self.down1(x))))))
        for block in self.res:
            y = F.relu(block["bn1"](block["conv1"](F.pad(x, (1, 1, 1, 1), mode="reflect"))))
            x = x + block["bn2"](block["conv2"](F.pad(y, (1, 1, 1, 1), mode="reflect")))
        x = F.relu(self.norm_u1(self.up1(F.interpolate(x, scale_factor=2))))
        x = F.relu(self.norm_u2(self.up2(F.interpolate(x, scale_factor=2))))
        return torch.tanh(self.conv_out(F.pad(x, (3, 3, 3, 3), mode="reflect")))


def randomise(net: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for name, tensor in net.state_dict().items():
        if tensor.dtype != torch.float32:
            continue
        if name.endswith("running_var"):
            tensor.uniform_(0.5, 2.0)
        elif tensor.ndim == 1 and name.endswith("weight"):
            tensor.normal_(1.0, 0.1)
        else:
            tensor.normal_(0.0, 0.15)
    return net.eval()


def renamed_unet(seed: int) -> tuple[nn.Module, dict]:
    """The reference U-Net's tensors in their order under made-up names (`unet.layerN.weight`)."""
    net = randomise(registry.build("unet", num_downs=5, ngf=4, norm="batch"), seed)
    keys = list(net.state_dict())
    modules = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in keys))
    names = {module: f"unet.layer{i}" for i, module in enumerate(modules)}
    state = {f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in net.state_dict().items()}
    return net, state


def _save_pth(obj, path):
    torch.save(obj, path)


def _with_prefix(state, prefix):
    return {prefix + k: v for k, v in state.items()}


# (id, the network computing the reference output, how its weights are written to a file,
#  the hyper-parameters the recognition must find)
def layouts():
    a = randomise(SequentialResnet(norm=affine_instance), 1)
    b = randomise(NamedResnet(), 2)
    c = randomise(SequentialResnet(norm=plain_instance, bias=False, upsample="nearest", n_blocks=1), 3)
    c_other = randomise(SequentialResnet(norm=plain_instance, bias=False, upsample="nearest", n_blocks=1), 4)
    unet, unet_state = renamed_unet(5)
    return [
        ("block-N-affine-instance-netG-prefix", a, ".pth",
         {"state_dict": _with_prefix(a.state_dict(), "netG.")},
         {"ngf": 4, "n_blocks": 2, "norm": "instance_affine"}),
        ("named-layers-batchnorm-biases-module-prefix", b, ".pth",
         {"generator": _with_prefix(b.state_dict(), "module."), "epoch": 3},
         {"ngf": 4, "n_blocks": 3, "norm": "batch", "bias": True, "upsample": "nearest"}),
        ("plain-instance-no-bias-nearest-two-generators-safetensors", c, ".safetensors",
         {**_with_prefix(c.state_dict(), "G_A."), **_with_prefix(c_other.state_dict(), "G_B.")},
         {"ngf": 4, "n_blocks": 1, "norm": "instance", "upsample": "nearest"}),
        ("renamed-unet-batchnorm-params-wrapper", unet, ".pth", {"params": unet_state},
         {"ngf": 4, "num_downs": 5, "norm": "batch"}),
    ]


LAYOUTS = layouts()


@pytest.fixture(scope="module")
def layout_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    files = {}
    for name, _, suffix, content, _ in LAYOUTS:
        files[name] = root / f"{name}{suffix}"
        if suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in content.items()}, str(files[name]))  # sorts the keys
        else:
            _save_pth(content, files[name])
    return files


def odd_image(path, height=21, width=27):
    rng = np.random.default_rng(7)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.clip((smooth - smooth.mean()) * 6 + 128, 0, 255).astype(np.uint8))
    return path


def plain_forward(net: nn.Module, rgb: torch.Tensor, multiple: int) -> torch.Tensor:
    """[0, 1] image -> [-1, 1], reflect-padded right/bottom to the multiple, cropped back."""
    height, width = rgb.shape[-2:]
    x = F.pad(rgb[None] * 2 - 1, (0, -width % multiple, 0, -height % multiple), mode="reflect")
    with torch.no_grad():
        y = net(x)[..., :height, :width]
    return ((y + 1) / 2).clamp(0, 1)[0]


@pytest.mark.parametrize("name, net, suffix, content, expected", LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_a_foreign_layout_translates_like_its_own_forward(layout_files, tmp_path, name, net, suffix, content, expected):
    _, spec = load_generator(layout_files[name])
    assert expected.items() <= spec.hparams.items()
    assert spec.source == f"foreign: {spec.arch} generator recognised by structure"
    source = odd_image(tmp_path / "in" / "photo.png")
    results = infer.translate(layout_files[name], str(source), tmp_path / "out", options=infer.Options(workers=0))
    assert not results[0].error, results[0].error
    ours = read_image(tmp_path / "out" / "photo.png").rgb
    reference = plain_forward(net, read_image(source).rgb, 4 if spec.arch == "resnet" else 32)
    assert ours.shape == reference.shape
    assert float((ours * 255 - torch.round(reference * 255)).abs().max()) <= 1


def test_a_file_with_both_generators_gives_the_one_for_the_direction(layout_files):
    name = "plain-instance-no-bias-nearest-two-generators-safetensors"
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    a_to_b, _ = load_generator(layout_files[name], "AtoB")
    b_to_a, _ = load_generator(layout_files[name], "BtoA")
    sequential_c = LAYOUTS[2][1]
    with torch.no_grad():
        assert torch.allclose(a_to_b(x), sequential_c(x), atol=1e-5)
        assert not torch.allclose(b_to_a(x), sequential_c(x), atol=1e-3)


@pytest.mark.parametrize("name", [layout[0] for layout in LAYOUTS if "two-generators" not in layout[0]])
def test_a_file_with_one_generator_refuses_the_other_direction(layout_files, name):
    """Not run A to B without a word, as if it were the B to A generator asked for."""
    with pytest.raises(ConfigError, match="holds one generator.*Leave out --direction"):
        load_generator(layout_files[name], "BtoA")


def test_info_names_the_recognised_architecture(layout_files):
    result = runner.invoke(app, ["info", str(layout_files["named-layers-batchnorm-biases-module-prefix"]), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["arch"] == "resnet" and record["hparams"]["norm"] == "batch"
    assert "recognised by structure" in record["source"]


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "netG", "params", "params_ema", "generator"])
@pytest.mark.parametrize("prefix", ["", "module.", "netG.", "G."])
def test_wrappers_and_prefixes_are_peeled_off(wrapper, prefix):
    state = SequentialResnet(n_blocks=1).state_dict()
    found = recognise(unwrap({wrapper: _with_prefix(state, prefix), "optimizer": {"lr": torch.tensor(1.0)}}))
    assert found is not None and found.arch == "resnet" and found.hparams["norm"] == "instance_affine"


def test_old_pytorch_instance_norm_statistics_are_ignored():
    net = randomise(SequentialResnet(norm=lambda c: nn.InstanceNorm2d(c, track_running_stats=True), n_blocks=1), 6)
    found = recognise(net.state_dict())
    assert found.hparams["norm"] == "instance"
    module = registry.build("resnet", **found.hparams).eval()
    module.load_state_dict(found.state_dict)
    net.eval()
    for layer in net.modules():  # the reference normalises each image by its own statistics
        if isinstance(layer, nn.InstanceNorm2d):
            layer.track_running_stats = False
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(module(x), net(x), atol=1e-5)


def test_an_unknown_structure_is_described(tmp_path):
    state = SequentialResnet(n_blocks=2).state_dict()
    state["model.1.weight"] = torch.zeros(4, 3, 5, 5)  # a 5x5 first conv: no known generator
    torch.save({"netG": state}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError) as caught:
        load_generator(tmp_path / "odd.pth")
    message = str(caught.value)
    for part in ("match no known generator layout", "first conv model.1 4x3x5x5", "2 residual-block-like pairs",
                 "affine only", "Supported:", "ResnetGenerator"):
        assert part in message, message


def test_without_spandrel_the_message_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)
    torch.save({"attention.qkv.weight": torch.zeros(12, 4)}, tmp_path / "transformer.pth")
    with pytest.raises(CheckpointError, match=r'1 other layers.*pip install "img2img\[zoo\]"'):
        load_generator(tmp_path / "transformer.pth")


@pytest.mark.parametrize("act_type", ["prelu", "relu", "leakyrelu"])
def test_info_and_translate_say_when_an_srvgg_activation_was_guessed(tmp_path, act_type):
    """ReLU and LeakyReLU leave no weights: such a file is read as LeakyReLU, and info and
    translate say so."""
    hparams = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2, "upscale": 2, "act_type": act_type}
    torch.save({"params": registry.build("srvgg", **hparams).state_dict()}, tmp_path / "compact.pth")
    result = runner.invoke(app, ["info", str(tmp_path / "compact.pth"), "--json"])
    assert result.exit_code == 0, result.output
    source = json.loads(result.stdout)["source"]
    assert ("read as LeakyReLU" in source) == (act_type != "prelu"), source
    cv2.imwrite(str(tmp_path / "in.png"), np.full((6, 7, 3), 90, np.uint8))
    result = runner.invoke(app, ["translate", "--model", str(tmp_path / "compact.pth"), str(tmp_path / "in.png"),
                                 str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    assert ("read as LeakyReLU" in result.output) == (act_type != "prelu"), result.output


def test_every_registered_generator_names_whose_layout_its_files_come_from():
    from img2img.nets.recognise import LAYOUT_OWNERS

    assert set(LAYOUT_OWNERS) == set(registry.names("generator"))


@pytest.mark.parametrize("arch, hparams", [
    ("rrdbnet", {"num_in_ch": 4, "num_out_ch": 4, "scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}),
    ("msrresnet", {"num_in_ch": 4, "num_out_ch": 4, "num_feat": 8, "num_block": 1, "upscale": 2}),
    ("unet", {"in_ch": 1, "out_ch": 2, "num_downs": 5, "ngf": 4, "norm": "batch", "use_dropout": False}),
])
def test_a_model_of_other_channel_counts_than_rgb_or_gray_is_refused_before_any_image(arch, hparams, tmp_path):
    """A 4-channel ESRGAN failed every image with PyTorch's channel error; spandrel's path refused it."""
    torch.save(registry.build(arch, **hparams).state_dict(), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="input and .* output channels; translate runs RGB and grayscale models"):
        load_generator(tmp_path / "odd.pth")
