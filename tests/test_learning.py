"""pix2pix learns something real: restoring faded, blurred photographs it never saw."""

from __future__ import annotations

import numpy as np
import pytest

from img2img import api, infer
from img2img.config import make_config
from img2img.data.images import list_images, read_image
from img2img.demo import photo_paths, write_pairs


def mean_l1(folder_a, folder_b) -> float:
    return float(np.mean([float((read_image(p).rgb - read_image(folder_b / p.name).rgb).abs().mean())
                          for p in list_images(folder_a)]))


@pytest.mark.slow
def test_pix2pix_restores_held_out_photographs_better_than_the_identity(tmp_path):
    train, held_out = photo_paths()
    write_pairs(train, tmp_path / "A", tmp_path / "B", size=96)
    write_pairs(held_out, tmp_path / "test_A", tmp_path / "test_B", size=96)
    cfg = make_config("pix2pix", {
        "a": str(tmp_path / "A"), "b": str(tmp_path / "B"), "out": str(tmp_path / "run"),
        "size": 64, "load_size": 96, "ngf": 32, "ndf": 32, "batch_size": 4, "gan_loss": "lsgan",
        "lr": 5e-4, "steps": 400, "save_every": 400, "workers": 1, "seed": 0,
    })
    run = api.train(cfg)
    infer.translate(run, str(tmp_path / "test_A"), tmp_path / "out", device=api.resolve_device("cpu"))

    identity = mean_l1(tmp_path / "test_A", tmp_path / "test_B")
    model = mean_l1(tmp_path / "out", tmp_path / "test_B")
    print(f"held-out L1 (0-255): identity {255 * identity:.2f}, pix2pix {255 * model:.2f}")
    assert model < 0.7 * identity
