"""Community models through our pipeline, checked against spandrel's own forward pass.

The checkpoints are made here, with random weights, by spandrel's own architecture classes at
small sizes; each is translated as a file through `infer.translate` (decoding, size buckets,
padding, writing) and compared with spandrel's forward on the same odd-sized image.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from img2img import infer
from img2img.cli import app
from img2img.data.images import read_image
from img2img.gan.checkpoint import CheckpointError, GeneratorSpec, load_generator, save_generator
from img2img.nets import registry
from img2img.progress import Silent
from img2img.translator import Translator, autocast_dtype

spandrel = pytest.importorskip("spandrel", reason="the zoo extra (spandrel) is not installed")

runner = CliRunner()


def _swinir():
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4, img_size=16, upscale=2,
                  upsampler="pixelshuffle")


def _dat():
    from spandrel.architectures.DAT import DAT

    return DAT(embed_dim=16, depth=[1], num_heads=[2], split_size=[2, 4], expansion_factor=2.0, upscale=2)


def _span():
    from spandrel.architectures.SPAN import SPAN

    return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2)


def _realplksr():
    from spandrel.architectures.PLKSR import RealPLKSR

    return RealPLKSR(dim=16, n_blocks=2, upscaling_factor=2, kernel_size=9)


def _omnisr():
    from spandrel.architectures.OmniSR import OmniSR

    return OmniSR(num_feat=16, block_num=1, window_size=4, res_num=1, up_scale=2)


def _esrgan(**kwargs):
    def make():
        from spandrel.architectures.ESRGAN import ESRGAN

        return ESRGAN(**{"in_nc": 3, "out_nc": 3, "num_filters": 16, "num_blocks": 1, **kwargs})

    return make


# (id, factory, the name `info` gives, the architecture our loader picks)
FAMILIES = [
    ("SwinIR", _swinir, "SwinIR", "SwinIR"),
    ("DAT", _dat, "DAT", "DAT"),
    ("SPAN", _span, "SPAN", "SPAN"),
    ("RealPLKSR", _realplksr, "PLKSR", "PLKSR"),
    ("OmniSR", _omnisr, "OmniSR", "OmniSR"),
    ("ESRGAN-old-x4", _esrgan(scale=4), "rrdbnet", "rrdbnet"),
    ("ESRGAN-old-x1", _esrgan(scale=1), "rrdbnet", "rrdbnet"),
    ("ESRGAN-old-x8", _esrgan(scale=8), "rrdbnet", "rrdbnet"),
    ("ESRGAN-old-x2-unshuffle", _esrgan(in_nc=12, scale=4, shuffle_factor=2), "rrdbnet", "rrdbnet"),
]


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    files = {}
    for index, (name, factory, _, _) in enumerate(FAMILIES):
        torch.manual_seed(index)
        net = factory()
        for p in net.parameters():  # random weights with a visible effect on the output
            p.data.normal_(0, 0.1)
        files[name] = root / f"{name}.pth"
        torch.save(net.state_dict(), files[name])
    return files


def odd_image(path: Path, height: int = 19, width: int = 23, channels: int = 3, dtype=np.uint8) -> Path:
    rng = np.random.default_rng(height * width)
    top = 65535 if dtype == np.uint16 else 255
    smooth = cv2.GaussianBlur(rng.integers(0, top, (height, width, channels)).astype(np.float32), (0, 0), 2)
    pixels = np.clip((smooth - smooth.mean()) * 6 + top / 2, 0, top).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), pixels[..., 0] if channels == 1 else pixels)
    return path


def spandrel_forward(checkpoint: Path, rgb: torch.Tensor) -> torch.Tensor:
    descriptor = spandrel.ModelLoader().load_from_file(checkpoint).eval()
    with torch.no_grad():
        return descriptor(rgb[None])[0]


def grey_levels(ours: torch.Tensor, reference: torch.Tensor, top: int = 255) -> float:
    return float((ours * top - torch.round(reference.clamp(0, 1) * top)).abs().max())


@pytest.mark.parametrize("name, factory, info_name, arch", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_a_community_model_translates_like_spandrels_forward(zoo_files, tmp_path, name, factory, info_name, arch):
    source = odd_image(tmp_path / "in" / "photo.png")
    results = infer.translate(zoo_files[name], str(source), tmp_path / "out", options=infer.Options(workers=0))
    assert not results[0].error, results[0].error
    ours = read_image(tmp_path / "out" / "photo.png").rgb
    reference = spandrel_forward(zoo_files[name], read_image(source).rgb)
    assert ours.shape == reference.shape
    assert grey_levels(ours, reference) <= 1
    _, spec = load_generator(zoo_files[name])
    assert spec.arch == arch


@pytest.mark.parametrize("name, factory, info_name, arch", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_info_names_the_architecture(zoo_files, name, factory, info_name, arch):
    result = runner.invoke(app, ["info", str(zoo_files[name]), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["arch"] == info_name
    assert record["pixel_range"] == "0,1" and record["scale"] >= 1
    if arch != "rrdbnet":
        assert record["source"].startswith("spandrel") and record["details"]["architecture"] == info_name


def test_the_original_esrgan_layout_needs_no_spandrel(zoo_files, monkeypatch, tmp_path):
    import sys

    checkpoint = zoo_files["ESRGAN-old-x2-unshuffle"]
    source = odd_image(tmp_path / "photo.png")
    reference = spandrel_forward(checkpoint, read_image(source).rgb)
    monkeypatch.setitem(sys.modules, "spandrel", None)  # import spandrel now fails
    module, spec = load_generator(checkpoint)
    assert spec.arch == "rrdbnet" and spec.scale == 2 and spec.hparams["num_in_ch"] == 3
    assert spec.source == "foreign: original ESRGAN"
    ours = Translator(module, spec, torch.device("cpu"))(read_image(source)).rgb
    assert grey_levels(torch.round(ours * 255) / 255, reference) <= 1


def test_without_spandrel_a_zoo_model_is_refused_with_the_install_command(zoo_files, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "spandrel", None)
    with pytest.raises(CheckpointError, match=r'pip install "img2img\[zoo\]"'):
        load_generator(zoo_files["SPAN"])


def test_a_zoo_file_its_architecture_cannot_load_says_which_tensor_differs(zoo_files, tmp_path):
    state_dict = torch.load(zoo_files["SPAN"], weights_only=True)
    key = next(k for k, v in state_dict.items() if v.ndim == 4 and k.endswith("conv.2.weight"))
    state_dict[key] = torch.zeros(state_dict[key].shape[0], state_dict[key].shape[1] + 1, *state_dict[key].shape[2:])
    torch.save(state_dict, tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match=f"could not load it .*size mismatch for {re.escape(key)}"):
        load_generator(tmp_path / "damaged.pth")


def test_alpha_16_bit_and_gray_are_kept(zoo_files, tmp_path):
    inputs = {
        "rgba.png": odd_image(tmp_path / "in" / "rgba.png", channels=4),
        "deep.png": odd_image(tmp_path / "in" / "deep.png", dtype=np.uint16),
        "gray.png": odd_image(tmp_path / "in" / "gray.png", channels=1),
    }
    results = infer.translate(zoo_files["OmniSR"], str(tmp_path / "in"), tmp_path / "out",
                              options=infer.Options(workers=0))
    assert not any(r.error for r in results)
    for name, source in inputs.items():
        written = cv2.imread(str(tmp_path / "out" / name), cv2.IMREAD_UNCHANGED)
        original = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
        assert written.shape[:2] == (original.shape[0] * 2, original.shape[1] * 2)
        assert written.dtype == original.dtype and written.ndim == original.ndim
        assert (written.shape[2] if written.ndim == 3 else 1) == (original.shape[2] if original.ndim == 3 else 1)
    reference = spandrel_forward(zoo_files["OmniSR"], read_image(inputs["deep.png"]).rgb)
    assert grey_levels(read_image(tmp_path / "out" / "deep.png").rgb, reference, 65535) <= 1


def test_size_buckets_batch_images_of_one_size(zoo_files, tmp_path):
    for i in range(4):
        odd_image(tmp_path / "in" / f"{i}.png", 17 + i % 2, 21)
    options = infer.Options(workers=0, batch_size=2)
    results = infer.translate(zoo_files["OmniSR"], str(tmp_path / "in"), tmp_path / "out", options=options)
    assert not any(r.error for r in results)
    for i in range(4):
        reference = spandrel_forward(zoo_files["OmniSR"], read_image(tmp_path / "in" / f"{i}.png").rgb)
        assert grey_levels(read_image(tmp_path / "out" / f"{i}.png").rgb, reference) <= 1


class Messages:
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def test_tiling_follows_the_models_advice(zoo_files):
    swinir, _ = load_generator(zoo_files["SwinIR"])  # spandrel: tiling discouraged
    span, _ = load_generator(zoo_files["SPAN"])  # tiling supported
    assert (swinir.tiling, span.tiling) == ("discouraged", "supported")
    told = Messages()
    swinir_translator = Translator(*load_generator(zoo_files["SwinIR"]), torch.device("cpu"))
    assert infer.tile_for(swinir_translator, 64, told) == 64
    assert "advise against tiling" in infer.tiling_note(swinir_translator, asked=True)  # said at the first split
    span.tiling = "internal"
    told = Messages()
    assert infer.tile_for(Translator(span, load_generator(zoo_files["SPAN"])[1], torch.device("cpu")), 64, told) is None
    assert "tiles internally" in told.lines[0]
    assert infer.tile_for(Translator(*load_generator(zoo_files["SPAN"]), torch.device("cpu")), 64, Silent()) == 64


def test_reduced_precision_only_where_the_model_declares_it(zoo_files, monkeypatch):
    swinir, _ = load_generator(zoo_files["SwinIR"])
    assert swinir.reduced_precision == (torch.bfloat16,)  # spandrel: SwinIR has no fp16
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert autocast_dtype(cuda, "auto", swinir.reduced_precision) == torch.bfloat16
    assert autocast_dtype(cuda, "auto", (torch.float16,)) == torch.float16
    assert autocast_dtype(cuda, "auto", ()) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert autocast_dtype(cuda, "auto", swinir.reduced_precision) is None
    assert autocast_dtype(torch.device("cpu"), "auto") is None


@pytest.mark.parametrize("name", [family[0] for family in FAMILIES])
def test_a_zoo_model_exports_a_graph_right_at_any_size_or_nothing(zoo_files, tmp_path, name):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    out = tmp_path / f"{name}.onnx"
    result = runner.invoke(app, ["export", str(out), "--model", str(zoo_files[name])])
    print(name, result.exit_code, result.stderr.strip()[:300])
    if result.exit_code:  # a forward ONNX tracing cannot follow: refused, one line, no file
        assert result.exit_code == 1 and "nothing was written" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
        return
    x = torch.rand(1, 3, 19, 23)  # a size no architecture's multiple divides
    expected = spandrel_forward(zoo_files[name], x[0])
    got = ort.InferenceSession(str(out)).run(None, {"image": x.numpy()})[0]
    assert np.abs(got[0] - expected.numpy()).max() < 1e-4


# ---- the other way: our SR exports in spandrel (chaiNNer, ComfyUI) --------------------------

OUR_EXPORTS = [
    ("srvgg", {"num_feat": 16, "num_conv": 4, "upscale": 4, "act_type": "prelu"}, "Compact"),
    ("srvgg", {"num_feat": 8, "num_conv": 2, "upscale": 2, "act_type": "prelu"}, "Compact"),
    ("rrdbnet", {"num_feat": 64, "num_block": 1, "num_grow_ch": 32, "scale": 4}, "ESRGAN"),
    ("rrdbnet", {"num_feat": 64, "num_block": 1, "num_grow_ch": 32, "scale": 2}, "ESRGAN"),
    ("rrdbnet", {"num_feat": 16, "num_block": 1, "num_grow_ch": 32, "scale": 4}, "ESRGAN"),  # --ngf 16, default growth
]


@pytest.mark.parametrize("arch, hparams, spandrel_arch", OUR_EXPORTS,
                         ids=[f"{a}-x{h.get('upscale', h.get('scale'))}" for a, h, _ in OUR_EXPORTS])
def test_our_sr_exports_load_in_spandrel_with_the_same_output(tmp_path, arch, hparams, spandrel_arch):
    torch.manual_seed(0)
    net = registry.build(arch, **hparams).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    scale = hparams.get("upscale", hparams.get("scale"))
    save_generator(tmp_path / "g.safetensors", net,
                   GeneratorSpec(arch=arch, hparams=hparams, pixel_range="0,1", scale=scale, task="srgan"))
    descriptor = spandrel.ModelLoader().load_from_file(tmp_path / "g.safetensors").eval()
    assert descriptor.architecture.id == spandrel_arch and descriptor.scale == scale
    x = torch.rand(1, 3, 20, 24)  # a multiple of 4: spandrel pads RRDBNet x2 to one, we to 2
    with torch.no_grad():
        assert (descriptor(x) - net(x).clamp(0, 1)).abs().max() < 1e-5


def test_an_amp_the_model_declares_no_support_for_is_said_to_run_in_fp32():
    from img2img.device import amp_note

    cpu = torch.device("cpu")
    assert "declares no bf16 support, so it runs in fp32" in amp_note(cpu, "bf16", None)
    assert amp_note(cpu, "bf16", torch.bfloat16) is None and amp_note(cpu, "auto", None) is None
    assert "a CPU has no fp16 autocast" in amp_note(cpu, "fp16", None)
