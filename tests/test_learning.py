"""pix2pix learns something real: restoring faded, blurred photographs it never saw, with each
generator the command offers and the defaults a user would pass (only the length, the crop,
the batch and the widths are smaller)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from img2img import api, infer
from img2img.config import make_config
from img2img.data.images import list_images, read_image


def mean_l1(folder_a, folder_b) -> float:
    return float(np.mean([float((read_image(p).rgb - read_image(folder_b / p.name).rgb).abs().mean())
                          for p in list_images(folder_a)]))


@pytest.fixture
def one_thread():
    """The figures then do not depend on the core count, and a busy CI machine does not pay
    for threads spinning while they wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("netG", ["unet_256", "resnet_9blocks"])
def test_pix2pix_restores_held_out_photographs_better_than_the_identity(paired_photos, tmp_path, netG, one_thread):
    cfg = make_config("pix2pix", {
        "a": str(paired_photos["a"]), "b": str(paired_photos["b"]), "out": str(tmp_path / "run"),
        "netG": netG, "size": 64, "ngf": 16, "ndf": 16, "batch_size": 4, "steps": 300,
        "save_every": 300, "workers": 0, "device": "cpu"})
    start = time.process_time()
    run = api.train(cfg)
    seconds = time.process_time() - start
    infer.translate(run, str(paired_photos["test_a"]), tmp_path / "out", device=api.resolve_device("cpu"))

    identity = mean_l1(paired_photos["test_a"], paired_photos["test_b"])
    model = mean_l1(tmp_path / "out", paired_photos["test_b"])
    print(f"{netG}: held-out L1 (0-255) identity {255 * identity:.2f}, pix2pix {255 * model:.2f} "
          f"({model / identity:.2f} of the identity's); {seconds:.0f} s CPU")
    assert model < 0.7 * identity
