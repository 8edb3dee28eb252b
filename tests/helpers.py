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
