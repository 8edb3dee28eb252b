"""BasicSR / Real-ESRGAN layouts: sizes, key names, inference from keys, reference outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from img2img.nets import registry
from img2img.nets.registry import count_parameters
from img2img.nets.sr import infer_msrresnet, infer_rrdbnet, infer_srvgg

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "compat"
SR_INFERS = {"msrresnet": infer_msrresnet, "rrdbnet": infer_rrdbnet, "srvgg": infer_srvgg}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(
    "name, hparams, expected",
    [
        ("msrresnet", {}, 1_517_571),
        ("rrdbnet", {}, 16_697_987),
        ("srvgg", {"num_conv": 32}, 1_213_296),
        ("unet_sn", {}, 4_376_897),
    ],
)
def test_parameter_count_matches_reference(name, hparams, expected):
    assert count_parameters(registry.build(name, **hparams)) == expected


@pytest.mark.parametrize(
    "name, hparams, keys",
    [
        ("msrresnet", {"num_block": 2}, ["conv_first.weight", "body.0.conv1.weight", "body.1.conv2.bias",
                                         "upconv1.weight", "upconv2.weight", "conv_hr.weight", "conv_last.weight"]),
        ("rrdbnet", {"num_block": 2, "num_feat": 16, "num_grow_ch": 8},
         ["conv_first.weight", "body.0.rdb1.conv1.weight", "body.1.rdb3.conv5.bias", "conv_body.weight",
          "conv_up1.weight", "conv_up2.weight", "conv_hr.weight", "conv_last.weight"]),
        ("srvgg", {"num_conv": 2, "num_feat": 8}, ["body.0.weight", "body.1.weight", "body.2.weight",
                                                   "body.6.weight", "body.6.bias"]),
        ("vgg", {"num_feat": 8}, ["conv0_0.weight", "conv0_0.bias", "conv0_1.weight", "bn0_1.running_mean",
                                  "conv4_1.weight", "bn4_1.weight", "linear1.weight", "linear2.bias"]),
        ("unet_sn", {"num_feat": 8}, ["conv0.weight", "conv0.bias", "conv1.weight_orig", "conv1.weight_u",
                                      "conv1.weight_v", "conv8.weight_orig", "conv9.weight", "conv9.bias"]),
    ],
)
def test_state_dict_keys(name, hparams, keys):
    state = registry.build(name, **hparams).state_dict()
    missing = [k for k in keys if k not in state]
    assert not missing, f"missing keys {missing}"


def test_layout_specific_absences():
    assert "upconv2.weight" not in registry.build("msrresnet", num_block=1, upscale=2).state_dict()
    assert "body.1.weight" not in registry.build("srvgg", num_conv=1, num_feat=8, act_type="relu").state_dict()
    assert "conv5_0.weight" in registry.build("vgg", num_feat=8, input_size=256).state_dict()
    sn = registry.build("unet_sn", num_feat=8).state_dict()
    assert "conv1.weight" not in sn and "conv0.weight_orig" not in sn and "conv9.weight_orig" not in sn


SMALL_VARIANTS = [
    ("msrresnet", {"num_feat": 16, "num_block": 2, "upscale": 4}),
    ("msrresnet", {"num_feat": 16, "num_block": 3, "upscale": 3}),
    ("msrresnet", {"num_feat": 8, "num_block": 1, "upscale": 2, "num_in_ch": 1, "num_out_ch": 1}),
    ("rrdbnet", {"num_feat": 16, "num_block": 2, "num_grow_ch": 8, "scale": 4}),
    ("rrdbnet", {"num_feat": 16, "num_block": 2, "num_grow_ch": 8, "scale": 2}),
    ("rrdbnet", {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 1}),
    ("rrdbnet", {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 2, "num_in_ch": 1, "num_out_ch": 1}),
    ("srvgg", {"num_feat": 16, "num_conv": 3, "upscale": 4, "act_type": "prelu"}),
    ("srvgg", {"num_feat": 8, "num_conv": 2, "upscale": 2, "act_type": "leakyrelu"}),
    ("srvgg", {"num_feat": 8, "num_conv": 1, "upscale": 3, "act_type": "prelu", "num_in_ch": 1, "num_out_ch": 1}),
]


def _variant_id(variant) -> str:
    name, hparams = variant
    return name + "-" + "-".join(f"{k}{v}" for k, v in hparams.items())


@pytest.mark.parametrize("name, hparams", SMALL_VARIANTS, ids=map(_variant_id, SMALL_VARIANTS))
def test_infer_round_trip(name, hparams):
    state = registry.build(name, **hparams).state_dict()
    inferred = SR_INFERS[name](state)
    assert inferred is not None
    assert {k: inferred[k] for k in hparams} == hparams
    registry.build(name, **inferred).load_state_dict(state, strict=True)
    # The registry-wide lookup must land on the same layout, not a neighbour's.
    assert registry.infer_from_state_dict(state) == (name, inferred)
    for other, infer in SR_INFERS.items():
        if other != name:
            assert infer(state) is None, f"{other} claimed a {name} state_dict"


def test_srvgg_relu_is_inferred_as_leakyrelu():
    # Neither ReLU nor LeakyReLU stores weights, so the layout cannot tell them apart.
    state = registry.build("srvgg", num_feat=8, num_conv=2, act_type="relu").state_dict()
    inferred = infer_srvgg(state)
    assert inferred["act_type"] == "leakyrelu" and inferred["num_conv"] == 2
    registry.build("srvgg", **inferred).load_state_dict(state, strict=True)


def test_sr_infers_reject_foreign_layouts():
    foreign = [
        {"model.1.weight": torch.zeros(64, 3, 7, 7), "model.10.conv_block.1.weight": torch.zeros(256, 256, 3, 3)},
        {"model.model.0.weight": torch.zeros(64, 3, 4, 4)},
        registry.build("unet_sn", num_feat=8).state_dict(),
        registry.build("vgg", num_feat=8).state_dict(),
        {},
    ]
    for state in foreign:
        for name, infer in SR_INFERS.items():
            assert infer(state) is None, f"{name} claimed keys {list(state)[:3]}"


@pytest.mark.parametrize(
    "name, hparams, scale, multiple, size",
    [
        ("msrresnet", {"num_feat": 8, "num_block": 1, "upscale": 4}, 4, 1, (7, 9)),
        ("msrresnet", {"num_feat": 8, "num_block": 1, "upscale": 3}, 3, 1, (5, 6)),
        ("msrresnet", {"num_feat": 8, "num_block": 1, "upscale": 2}, 2, 1, (5, 6)),
        ("rrdbnet", {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 4}, 4, 1, (5, 7)),
        ("rrdbnet", {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 2}, 2, 2, (6, 10)),
        ("rrdbnet", {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 1}, 1, 4, (8, 12)),
        ("srvgg", {"num_feat": 8, "num_conv": 2, "upscale": 4}, 4, 1, (5, 7)),
        ("srvgg", {"num_feat": 8, "num_conv": 2, "upscale": 2, "act_type": "relu"}, 2, 1, (5, 7)),
    ],
)
def test_generator_output_shape(name, hparams, scale, multiple, size):
    net = registry.build(name, **hparams).eval()
    assert net.scale == scale and net.multiple == multiple
    assert registry.get(name).pixel_range == "0,1"
    with torch.no_grad():
        out = net(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale)


def test_vgg_discriminator_judges_any_patch_size_and_keeps_basicsr_layouts_at_128_and_256():
    stages = {2: 1, 24: 2, 64: 4, 96: 4, 128: 5, 200: 5, 256: 6, 512: 7}
    for input_size, count in stages.items():
        net = registry.build("vgg", num_feat=4, input_size=input_size)
        assert net(torch.rand(2, 3, input_size, input_size)).shape == (2, 1)
        assert net.num_stages == count and f"conv{count - 1}_1.weight" in net.state_dict()
    # BasicSR's layouts: stages of widths 1, 2, 4, 8, 8 (, 8) x num_feat, linear from 8 x num_feat x 4 x 4.
    for input_size, last in ((128, "conv4_1"), (256, "conv5_1")):
        state = registry.build("vgg", num_feat=4, input_size=input_size).state_dict()
        assert state[f"{last}.weight"].shape == (32, 32, 4, 4) and state["linear1.weight"].shape == (100, 32 * 16)
        assert f"conv{int(last[4]) + 1}_0.weight" not in state


def test_unet_sn_discriminator_shapes():
    for skip in (True, False):
        net = registry.build("unet_sn", num_feat=4, skip_connection=skip)
        assert net(torch.rand(2, 3, 16, 24)).shape == (2, 1, 16, 24)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 3, 20, 24))
    assert registry.get("unet_sn").kind == "discriminator"
    assert registry.get("unet_sn").pixel_range == "0,1"


def test_unet_sn_state_dict_round_trip():
    state = registry.build("unet_sn", num_feat=4).state_dict()
    registry.build("unet_sn", num_feat=4).load_state_dict(state, strict=True)


# --- reference outputs ---------------------------------------------------------------------


def _sr_cases() -> list:
    manifest = FIXTURES / "manifest.json"
    if not manifest.is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"compat fixtures not found at {FIXTURES}"))]
    entries = json.loads(manifest.read_text())
    return [
        pytest.param(entry["checkpoint"], case, id=case["input"])
        for entry in entries if entry["family"] == "BasicSR / Real-ESRGAN"
        for case in entry["cases"]
    ]


@pytest.mark.parametrize("checkpoint, case", _sr_cases())
def test_reference_outputs(checkpoint, case):
    loaded = torch.load(FIXTURES / checkpoint, map_location="cpu", weights_only=True)
    state = loaded["params_ema"] if "params_ema" in loaded else loaded["params"]
    name, hparams = registry.infer_from_state_dict(state)
    net = registry.build(name, **hparams).eval()
    net.load_state_dict(state, strict=True)

    rgb = np.asarray(Image.open(FIXTURES / case["input"]).convert("RGB"), dtype=np.float32) / 255.0
    assert list(rgb.shape[:2]) == case["in_size"]
    with torch.no_grad():
        out = net(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    got = (out[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    expected = np.asarray(Image.open(FIXTURES / case["expected"]).convert("RGB"), dtype=np.float32)
    assert got.shape == expected.shape
    diff = np.abs(got - expected)
    assert diff.max() <= 2 and diff.mean() < 1, f"max {diff.max()}, mean {diff.mean():.3f}"


@pytest.mark.parametrize("num_feat", [8, 64])
def test_rrdbnet_starts_as_a_bilinear_upscale(num_feat):
    """With no interpolation skip, RRDBNet would first have to learn to redraw the photograph;
    its init makes it start as two bilinear x2 stages instead (borders aside: zero padding)."""
    net = registry.build("rrdbnet", num_feat=num_feat, num_block=3, num_grow_ch=8, scale=4).eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        y = net(x)
    twice = x
    for _ in range(2):
        twice = torch.nn.functional.interpolate(twice, scale_factor=2, mode="bilinear")
    assert float((y - twice)[..., 4:-4, 4:-4].abs().max()) < 0.02
