"""Checkpoints of the reference code bases load and reproduce the reference's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from img2img.data.images import read_image
from img2img.gan.checkpoint import load_generator
from img2img.translator import Translator


def cases(manifest):
    return [(entry["checkpoint"], case) for entry in manifest for case in entry["cases"]]


def test_every_reference_checkpoint_matches_the_reference_output(compat_dir, compat_manifest):
    for checkpoint_name, case in cases(compat_manifest):
        module, spec = load_generator(compat_dir / checkpoint_name)
        translator = Translator(module, spec, torch.device("cpu"))
        result = translator(read_image(compat_dir / case["input"]))
        ours = np.rint(result.rgb.permute(1, 2, 0).numpy() * 255)
        expected = read_image(compat_dir / case["expected"]).rgb.permute(1, 2, 0).numpy() * 255
        assert ours.shape[:2] == tuple(case["out_size"]), checkpoint_name
        difference = np.abs(ours - np.rint(expected))
        assert difference.max() <= 2, f"{case['input']}: max difference {difference.max()}"
        assert difference.mean() < 1, f"{case['input']}: mean difference {difference.mean()}"


@pytest.mark.parametrize("name, arch, hparams", [
    ("cyclegan_resnet6_ngf32.pth", "resnet", {"ngf": 32, "n_blocks": 6, "norm": "instance", "use_dropout": False}),
    ("pix2pix_unet128_ngf16_batch.pth", "unet", {"ngf": 16, "num_downs": 7, "norm": "batch"}),
    ("realesrgan_rrdb_nb2_nf32_x4.pth", "rrdbnet", {"num_feat": 32, "num_block": 2, "num_grow_ch": 16, "scale": 4}),
    ("realesr_srvgg_c4_f16_x4.pth", "srvgg", {"num_feat": 16, "num_conv": 4, "upscale": 4, "act_type": "prelu"}),
])
def test_architecture_is_inferred_from_the_reference_files(compat_dir, name, arch, hparams):
    _, spec = load_generator(compat_dir / name)
    assert spec.arch == arch
    assert hparams.items() <= spec.hparams.items()
    assert spec.pixel_range == ("0,1" if arch in ("rrdbnet", "srvgg") else "-1,1")


def test_train_mode_batchnorm_reproduces_the_reference_test_script(compat_dir):
    """--bn-mode train normalises with the image's own statistics, and leaves the file's
    running statistics untouched."""
    module, spec = load_generator(compat_dir / "pix2pix_unet128_ngf16_batch.pth")
    before = {k: v.clone() for k, v in module.state_dict().items() if "running" in k}
    image = read_image(compat_dir / "pix2pix_unet128_ngf16_batch_in0.png")
    torch.manual_seed(0)
    train_mode = Translator(module, spec, torch.device("cpu"), bn_mode="train")(image).rgb
    eval_mode = Translator(module, spec, torch.device("cpu"), bn_mode="eval")(image).rgb
    assert (train_mode - eval_mode).abs().mean() > 0.01
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_train_mode_batchnorm_normalises_each_image_of_a_batch_by_itself(compat_dir):
    """A batch of several images gives each the result it has alone, as the reference's batch of
    one does (dropout switched off: its draws differ from run to run)."""
    module, spec = load_generator(compat_dir / "pix2pix_unet128_ngf16_batch.pth")
    for layer in module.modules():  # dropout draws differ between runs; the statistics are the point
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    image = read_image(compat_dir / "pix2pix_unet128_ngf16_batch_in0.png").rgb
    images = [image, image.flip(-1) * 0.5]  # other statistics
    translator = Translator(module, spec, torch.device("cpu"), bn_mode="train")
    together = translator.run(torch.stack(images))
    alone = torch.cat([translator.run(image[None]) for image in images])
    assert torch.allclose(together, alone, atol=1e-5)
