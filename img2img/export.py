"""Export a generator to ONNX with dynamic batch, height and width.

The exported graph takes and returns images in [0, 1] (N x C x H x W, float32), whatever the
network's own convention, and pads any size to what the architecture needs and crops back,
so an ONNX runtime needs no img2img code around it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from img2img.data.images import write_bytes_atomic, writing
from img2img.gan.checkpoint import GeneratorSpec, load_generator
from img2img.hints import install_hint
from img2img.translator import to_network_range, to_unit_range


class ExportError(Exception):
    """The export cannot run (missing extra, unsupported format)."""


class UnitRangeGenerator(nn.Module):
    """[0, 1] in, [0, 1] out, any size: normalisation, padding and cropping in the graph."""

    def __init__(self, module: nn.Module, spec: GeneratorSpec):
        super().__init__()
        self.module, self.pixel_range = module, spec.pixel_range
        self.multiple, self.scale = int(getattr(module, "multiple", 1)), int(spec.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        x = to_network_range(x, self.pixel_range)
        if self.multiple > 1:
            pad_h = (self.multiple - height % self.multiple) % self.multiple
            pad_w = (self.multiple - width % self.multiple) % self.multiple
            # translate reflects where the pad is smaller than the image, else replicates; a graph
            # with dynamic sizes cannot branch on that, so only small multiples (ResNet: 4) reflect.
            mode = "reflect" if self.multiple <= 4 else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return to_unit_range(self.module(x)[..., : height * self.scale, : width * self.scale], self.pixel_range)


def export_onnx(model: Path, out: Path, direction: str = "AtoB", opset: int = 17) -> GeneratorSpec:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError(f"ONNX export needs the onnx extra: {install_hint('onnx')}") from None
    module, spec = load_generator(Path(model), direction)
    wrapper = UnitRangeGenerator(module.float().eval(), spec).eval()
    channels = int(getattr(module, "in_channels", 0) or spec.hparams.get("in_ch", spec.hparams.get("num_in_ch", 3)))
    example = torch.rand(1, channels, 64, 64)
    temp = Path(out).with_name(f".{Path(out).name}.export")
    try:
        with writing(Path(out)), quiet_exporter():
            temp.parent.mkdir(parents=True, exist_ok=True)
            # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript and cannot
            # yet export the size-dependent padding with dynamic height and width.
            torch.onnx.export(
                wrapper, (example,), str(temp), input_names=["image"], output_names=["output"],
                dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                              "output": {0: "batch", 2: "out_height", 3: "out_width"}},
                opset_version=opset, dynamo=False,
            )
        write_bytes_atomic(Path(out), temp.read_bytes())
    finally:
        with suppress(OSError):  # a read-only folder holds no temporary to remove, and says so
            temp.unlink(missing_ok=True)
    return spec


@contextmanager
def quiet_exporter():
    """The exporter's notes about its own tracing (sizes read as Python values, InstanceNorm
    exported in its per-image mode, which is also what eval does without running statistics,
    Slice not constant-folded) say nothing a user can act on; the graph is checked against
    PyTorch by the tests instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r"(?s).*(instance_norm|Constant folding|TorchScript-based)")
        yield
