"""Every architecture spandrel (and spandrel-extra-arches, when installed) can build, small and
with random weights, through img2img's loader and Translator against spandrel's own forward.

    python benchmarks/zoo_survey.py [--size 19x23] [--only SwinIR,HAT]

Prints, per architecture: what img2img loaded it as, the output size, the largest difference
from spandrel's forward in 8-bit grey levels, and both forward times (ratio ours / spandrel).
Nothing is downloaded: the weights are random, the constructors are spandrel's own classes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

# (module under spandrel.architectures or spandrel_extra_arches.architectures, class, small kwargs)
SMALL = [
    ("ATD", "ATD", dict()),
    ("CRAFT", "CRAFT", dict(embed_dim=12, depths=[1], num_heads=[2], split_size_0=2, split_size_1=4, upscale=2)),
    ("Compact", "Compact", dict(num_feat=8, num_conv=2, upscale=2)),
    ("DAT", "DAT", dict(embed_dim=16, depth=[1], num_heads=[2], split_size=[2, 4], expansion_factor=2.0, upscale=2)),
    ("DCTLSA", "DCTLSA", dict(in_nc=3, nf=40, num_modules=6, out_nc=3, upscale=2)),
    ("DITN", "DITN", dict(dim=12, ITL_blocks=1, SAL_blocks=1, patch_size=4, upscale=2)),
    ("DRCT", "DRCT", dict(embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2)),
    ("DRUNet", "DRUNet", dict()),
    ("DnCNN", "DnCNN", dict(in_nc=3, out_nc=3, nc=32, nb=15, act_mode="R")),
    ("ESRGAN", "ESRGAN", dict(num_filters=16, num_blocks=1, scale=4)),
    ("FBCNN", "FBCNN", dict()),
    ("FDAT", "FDAT", dict(embed_dim=24, num_groups=1, depth_per_group=1, num_heads=2, scale=2)),
    ("FFTformer", "FFTformer", dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)),
    ("GFPGAN", "GFPGAN", dict()),
    ("GRL", "GRL", dict(embed_dim=16, depths=[1], num_heads_window=[2], num_heads_stripe=[2], window_size=4,
                        stripe_size=[4, 4], upscale=2)),
    ("HAT", "HAT", dict(embed_dim=12, depths=[1], num_heads=[2], window_size=4, compress_ratio=3, squeeze_factor=3,
                        upscale=2, upsampler="pixelshuffle")),
    ("HVICIDNet", "HVICIDNet", dict(channels=[12, 24, 36, 48])),
    ("IPT", "IPT", dict(patch_size=24, n_feats=16)),
    ("KBNet", "KBNet_s", dict()),
    ("LaMa", "LaMa", dict()),
    ("MMRealSR", "MMRealSR", dict(num_block=2, num_in_ch=3, num_out_ch=3)),
    ("MixDehazeNet", "MixDehazeNet", dict(embed_dims=[12, 24, 48, 24, 12], depths=[1, 1, 1, 1, 1])),
    ("MoESR", "MoESR", dict(dim=16, n_blocks=1, upscale=2)),
    ("MoSR", "MoSR", dict(dim=16, n_block=1, upscale=2)),
    ("NAFNet", "NAFNet", dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])),
    ("OmniSR", "OmniSR", dict(num_feat=16, block_num=1, window_size=4, res_num=1, up_scale=2)),
    ("PLKSR", "PLKSR", dict(dim=16, n_blocks=2, upscaling_factor=2)),
    ("PLKSR", "RealPLKSR", dict(dim=16, n_blocks=2, upscaling_factor=2, kernel_size=9)),
    ("RCAN", "RCAN", dict(n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4, scale=2)),
    ("RGT", "RGT", dict(embed_dim=12, depth=[1], num_heads=[2], split_size=[2, 4], upscale=2)),
    ("RealCUGAN", "UpCunet2x", dict(in_channels=3, out_channels=3)),
    ("RestoreFormer", "RestoreFormer", dict()),
    ("RetinexFormer", "RetinexFormer", dict(n_feat=8, stage=1, num_blocks=[1, 1, 1])),
    ("SAFMN", "SAFMN", dict(dim=16, n_blocks=1, ffn_scale=2.0, upscaling_factor=2)),
    ("SAFMNBCIE", "SAFMNBCIE", dict(dim=16, n_blocks=1, num_layers=1, ffn_scale=2.0, upscaling_factor=2)),
    ("SCUNet", "SCUNet", dict(config=[1, 1, 1, 1, 1, 1, 1], dim=32)),
    ("SPAN", "SPAN", dict(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2)),
    ("SeemoRe", "SeemoRe", dict(embedding_dim=16, num_layers=1, scale=2)),
    ("SwiftSRGAN", "SwiftSRGAN", dict(num_channels=16, num_blocks=1, upscale_factor=2)),
    ("Swin2SR", "Swin2SR", dict(embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                                upsampler="pixelshuffledirect")),
    ("SwinIR", "SwinIR", dict(embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4, img_size=16, upscale=2,
                              upsampler="pixelshuffle")),
    ("Uformer", "Uformer", dict(embed_dim=8, depths=[1, 1, 1, 1, 1, 1, 1, 1, 1], win_size=4)),
    # spandrel-extra-arches (other licences)
    ("AdaCode", "AdaCode", dict()),
    ("CodeFormer", "CodeFormer", dict()),
    ("DDColor", "DDColor", dict()),
    ("FeMaSR", "FeMaSR", dict()),
    ("M3SNet", "M3SNet", dict(width=8)),
    ("MAT", "MAT", dict()),
    ("MIRNet2", "MIRNet2", dict(n_feat=8)),
    ("MPRNet", "MPRNet", dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4)),
    ("Restormer", "Restormer", dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)),
    ("SRFormer", "SRFormer", dict(embed_dim=12, depths=[1], num_heads=[2], window_size=8, upscale=2)),
]


def construct(module: str, cls: str, kwargs: dict):
    """The class from spandrel or spandrel-extra-arches; small kwargs, else its defaults."""
    errors = []
    for package in ("spandrel.architectures", "spandrel_extra_arches.architectures"):
        try:
            klass = getattr(importlib.import_module(f"{package}.{module}"), cls)
        except (ImportError, AttributeError) as err:
            errors.append(str(err))
            continue
        for attempt in (kwargs, {}):
            try:
                return klass(**attempt), ("small" if attempt else "defaults")
            except Exception as err:  # a guessed keyword the class does not take
                errors.append(f"{type(err).__name__}: {err}")
    raise RuntimeError("; ".join(errors[-2:]))


def survey_one(module: str, cls: str, kwargs: dict, folder: Path, size: tuple[int, int]) -> str:
    import spandrel

    from img2img.gan.checkpoint import CheckpointError, load_generator
    from img2img.translator import Translator

    try:
        net, sizing = construct(module, cls, kwargs)
    except RuntimeError as err:
        return f"{cls:<14} not built: {err}"[:200]
    torch.manual_seed(0)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    path = folder / f"{cls}.pth"
    torch.save(net.state_dict(), path)
    try:
        reference = spandrel.ModelLoader().load_from_file(path).eval()
    except Exception as err:
        return f"{cls:<14} spandrel itself cannot load it: {type(err).__name__}: {str(err)[:100]}"
    try:
        generator, spec = load_generator(path)
    except CheckpointError as err:
        return f"{cls:<14} ({sizing}) refused by img2img: {str(err).split(': ', 1)[-1][:150]}"
    x = torch.rand(1, reference.input_channels, *size)
    if reference.input_channels == 1:
        x = x.expand(1, 3, *size)
    try:
        start = time.perf_counter()
        with torch.no_grad():
            expected = reference(x[:, : reference.input_channels])
        theirs = time.perf_counter() - start
        translator = Translator(generator, spec, torch.device("cpu"))
        start = time.perf_counter()
        ours = translator.run(x)
        mine = time.perf_counter() - start
    except Exception as err:
        return f"{cls:<14} ({sizing}) loaded as {spec.arch}, forward failed: {type(err).__name__}: {str(err)[:100]}"
    if expected.shape[1] == 1:
        expected = expected.expand(-1, 3, -1, -1)
    if ours.shape != expected.shape:
        return f"{cls:<14} ({sizing}) loaded as {spec.arch}: shape {tuple(ours.shape)} vs spandrel {tuple(expected.shape)}"
    levels = float((ours - expected).abs().max()) * 255
    return (f"{cls:<14} ({sizing:<8}) as {spec.arch:<14} x{spec.scale} out {tuple(ours.shape[2:])} "
            f"max diff {levels:6.3f} grey levels, {mine * 1000:7.1f} ms vs {theirs * 1000:7.1f} ms "
            f"(x{mine / max(theirs, 1e-9):.2f}), tiling {getattr(generator, 'tiling', 'ours')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="19x23", help="input HxW")
    parser.add_argument("--only", default="", help="comma-separated class names")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    only = {name for name in args.only.split(",") if name}
    warnings.simplefilter("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    import spandrel

    print(f"spandrel {spandrel.__version__}, torch {torch.__version__}, input {size[0]}x{size[1]}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for module, cls, kwargs in SMALL:
            if only and cls not in only:
                continue
            try:
                line = survey_one(module, cls, kwargs, Path(folder), size)
            except Exception:
                line = f"{cls:<14} crashed: {traceback.format_exc().splitlines()[-1]}"
            print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
