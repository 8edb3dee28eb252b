"""Small pieces several test modules share (imported as `helpers`; pytest puts tests/ on the path)."""

from __future__ import annotations

import pytest
import torch


class CrashAt:
    """A reporter that dies at a given step, as a killed process would."""

    def __init__(self, step):
        self.step = step

    def start(self, total, done, description): pass
    def message(self, text): pass
    def finish(self): pass

    def update(self, done, info=""):
        if done == self.step:
            raise KeyboardInterrupt


def flat(text: str) -> str:
    """CLI messages with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def one_thread():
    """Tensors here are tiny: one thread is fastest, and other processes busy on the cores
    cannot stall it (intra-op threads wait for each other at every operation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny_generator(path):
    """A random resnet generator of a few hundred parameters: translate's file handling, fast."""
    from img2img.gan.checkpoint import GeneratorSpec, save_generator
    from img2img.nets import registry

    hparams = {"in_ch": 3, "out_ch": 3, "ngf": 4, "n_blocks": 1, "norm": "instance", "use_dropout": False}
    save_generator(path, registry.build("resnet", **hparams), GeneratorSpec(arch="resnet", hparams=hparams, pixel_range="-1,1"))
    return path


# Every registered generator at small widths, but the full depths and every activation / norm
# the flags allow (test_nets checks it covers the registry).
TRAINABLE = {
    "resnet": [{"ngf": 8, "n_blocks": 9, "norm": norm} for norm in ("batch", "instance", "none")],
    "unet": [{"ngf": 8, "num_downs": 8, "norm": norm} for norm in ("batch", "instance", "none")],
    "msrresnet": [{"num_feat": 16, "num_block": 16, "upscale": scale} for scale in (2, 3, 4)],
    "rrdbnet": [{"num_feat": 16, "num_block": 23, "num_grow_ch": 8, "scale": scale} for scale in (1, 2, 4)],
    "srvgg": [{"num_feat": 16, "num_conv": 32, "upscale": 4, "act_type": act} for act in ("prelu", "relu", "leakyrelu")],
    "cut_resnet": [{"ngf": 8, "n_blocks": 9, "norm": "instance", "antialias": True, "antialias_up": True},
                   {"ngf": 8, "n_blocks": 6, "norm": "instance", "antialias": False, "antialias_up": False}],
}


def generator_cases() -> list:
    """TRAINABLE as pytest parameters (arch, hparams), with readable ids."""
    return [pytest.param(arch, hparams, id=f"{arch}-" + "-".join(map(str, hparams.values())))
            for arch, cases in TRAINABLE.items() for hparams in cases]


def generator_input_size(arch: str) -> int:
    return 256 if arch in ("resnet", "unet", "cut_resnet") else 12
