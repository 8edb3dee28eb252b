"""The modern objective (relativistic pairing + lazy R1/R2) trains the other families too."""

from __future__ import annotations

import json

import numpy as np
import pytest

from img2img import api
from img2img.config import make_config
from helpers import one_thread  # noqa: F401  (a fixture)
from test_cyclegan import colour_map_errors, unpaired  # noqa: F401  (the unpaired colour-mapping task)

R3GAN = {"gan_loss": "rpgan", "r1": 0.1, "r2": 0.1, "reg_every": 4}


def logged(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cyclegan_with_rpgan_and_r1_r2_learns_the_colour_mapping(unpaired, tmp_path, one_thread):
    # CycleGAN's own learning test, with the R3GAN objective in place of LSGAN.
    cfg = make_config("cyclegan", {
        "a": str(unpaired["a"]), "b": str(unpaired["b"]), "out": str(tmp_path / "run"), "steps": 300,
        "size": 32, "load_size": 40, "batch_size": 4, "netG": "unet_32", "ngf": 16, "norm": "none",
        "ndf": 16, "lr": 5e-4, "lambda_identity": 0.0, "save_every": 300, "log_every": 50, "workers": 0,
        "device": "cpu", "seed": 0, **R3GAN})
    run = api.train(cfg)
    errors = colour_map_errors(run)
    learnt, identity = np.mean(errors, axis=0)
    print(f"CycleGAN rpgan + R1/R2: held-out error {learnt:.4f} against the identity's {identity:.4f}")
    penalties = [r["D_A_r1"] for r in logged(run) if "D_A_r1" in r]
    assert penalties and all(np.isfinite(penalties))
    assert learnt < 0.5 * identity


def test_pix2pix_and_sr_train_with_rpgan_and_lazy_r1_r2(paired_photos, tmp_path, one_thread):
    """The penalty phase runs every --reg-every steps with D's optimizer, and stays finite."""
    runs = {"pix2pix": {"a": str(paired_photos["a"]), "b": str(paired_photos["b"]), "netG": "unet_32", "ngf": 8,
                        "ndf": 8, "size": 32, "load_size": 40},
            "srgan": {"hr": str(paired_photos["b"]), "scale": 2, "netG": "msrresnet", "ngf": 8, "n_blocks": 1,
                      "netD": "unet", "ndf": 8, "perceptual": "none", "size": 32, "pretrain_steps": 2}}
    for task, values in runs.items():
        cfg = make_config(task, {**values, "out": str(tmp_path / task), "steps": 10, "save_every": 10, "batch_size": 2,
                                 "log_every": 1, "workers": 0, "device": "cpu", "seed": 0, **R3GAN})
        records = [r for r in logged(api.train(cfg)) if "loss_D" in r]
        with_penalty = [r["step"] for r in records if "D_r1" in r]
        first = 2 if task == "srgan" else 0  # SR's GAN phases start after the pixel pretraining
        assert with_penalty == [s + 1 for s in range(first, 10) if (s - first) % 4 == 0], task
        assert all(np.isfinite(r["D_r1"]) and np.isfinite(r["D_r2"]) and np.isfinite(r["loss_D"]) for r in records
                   if "D_r1" in r)
