"""pix2pix learns something real: restoring faded, blurred photographs it never saw, with each
generator the command offers and the defaults a user would pass (only the length, the crop,
the batch and the widths are smaller)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from img2img import api, infer
from img2img.config import make_config
from img2img.data.images import list_images, read_image


def mean_l1(folder_a, folder_b) -> float:
    return float(np.mean([float((read_image(p).rgb - read_image(folder_b / p.name).rgb).abs().mean())
                          for p in list_images(folder_a)]))


@pytest.mark.slow
@pytest.mark.parametrize("netG, steps", [
    ("unet_256", 300),
    # A ResNet has no skip from input to output and must first learn to redraw the photograph:
    # measured on the 2-core CPU, 0.96 of the identity's error after 300 steps, 0.90 after 600.
    ("resnet_9blocks", 600),
])
def test_pix2pix_restores_held_out_photographs_better_than_the_identity(paired_photos, tmp_path, netG, steps,
                                                                         one_thread):
    cfg = make_config("pix2pix", {
        "a": str(paired_photos["a"]), "b": str(paired_photos["b"]), "out": str(tmp_path / "run"),
        "netG": netG, "size": 64, "ngf": 16, "ndf": 16, "batch_size": 4, "steps": steps,
        "save_every": steps, "workers": 0, "device": "cpu"})
    start = time.process_time()
    run = api.train(cfg)
    seconds = time.process_time() - start
    infer.translate(run, str(paired_photos["test_a"]), tmp_path / "out", device=api.resolve_device("cpu"))

    identity = mean_l1(paired_photos["test_a"], paired_photos["test_b"])
    model = mean_l1(tmp_path / "out", paired_photos["test_b"])
    print(f"{netG}: held-out L1 (0-255) identity {255 * identity:.2f}, pix2pix {255 * model:.2f} "
          f"({model / identity:.2f} of the identity's); {seconds:.0f} s CPU")
    assert model < identity
