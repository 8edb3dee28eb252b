"""Export a generator to ONNX with dynamic batch, height and width.

The exported graph takes and returns images in [0, 1] (N x C x H x W, float32), whatever the
network's own convention, and pads any size to what the architecture needs and crops back,
so an ONNX runtime needs no img2img code around it.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from torch import nn

from img2img.config import ConfigError
from img2img.data.images import write_bytes_atomic, writing
from img2img.gan.checkpoint import GeneratorSpec, load_generator
from img2img.hints import install_hint
from img2img.translator import input_channels, pad_to_multiple, to_network_range, to_unit_range


class ExportError(Exception):
    """The export cannot run (missing extra, unsupported format)."""


class UnitRangeGenerator(nn.Module):
    """[0, 1] in, [0, 1] out, any size: normalisation, padding and cropping in the graph."""

    def __init__(self, module: nn.Module, spec: GeneratorSpec, multiple: int | None = None):
        super().__init__()
        self.module, self.pixel_range = module, spec.pixel_range
        self.multiple = export_multiple(module) if multiple is None else multiple
        self.min_size, self.square = int(getattr(module, "min_size", 1)), bool(getattr(module, "square", False))
        self.scale = int(spec.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, height, width = pad_to_multiple(to_network_range(x, self.pixel_range), self.multiple, self.min_size,
                                           self.square)
        return to_unit_range(self.module(x)[..., : height * self.scale, : width * self.scale], self.pixel_range)


def export_multiple(module: nn.Module) -> int:
    """The size multiple the graph pads to. Window-attention networks (SwinIR, HAT, ...) pad to
    their window inside, in Python arithmetic that tracing freezes at the example's size: padded
    to the window first, that padding is 0 at every size, as it was when traced."""
    multiple = int(getattr(module, "multiple", 1))
    window = getattr(getattr(module, "net", None), "window_size", None)
    return math.lcm(multiple, window) if isinstance(window, int) and window > 0 else multiple


MIN_OPSET = 11  # dynamic padding (Pad with sizes computed in the graph)


def export_onnx(model: Path, out: Path, direction: str | None = None, opset: int = 17) -> GeneratorSpec:
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset}: the graph pads images of any size, which needs opset {MIN_OPSET} or newer")
    try:
        import onnx
    except ImportError:
        raise ExportError(f"ONNX export needs the onnx extra: {install_hint('onnx')}") from None
    if opset > (newest := onnx.defs.onnx_opset_version()):
        raise ConfigError(f"--opset {opset}: the installed onnx knows opsets up to {newest}; the default, 17, suits "
                          "every architecture img2img builds")
    refuse_to_replace(Path(model), Path(out))
    module, spec = load_generator(Path(model), direction)
    wrapper = UnitRangeGenerator(module.float().eval(), spec).eval()
    channels = input_channels(module, spec)
    example = torch.rand(1, channels, 64, 64)
    temp = Path(out).with_name(f".{Path(out).name}.export")
    try:
        with writing(Path(out)), quiet_exporter():
            temp.parent.mkdir(parents=True, exist_ok=True)
            # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript and cannot
            # yet export the size-dependent padding with dynamic height and width.
            try:
                torch.onnx.export(
                    wrapper, (example,), str(temp), input_names=["image"], output_names=["output"],
                    dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                  "output": {0: "batch", 2: "out_height", 3: "out_width"}},
                    opset_version=opset, dynamo=False,
                )
            except OSError:  # the file could not be written: `writing` says so, naming it
                raise
            except Exception as err:  # the exporter's messages can hold the whole traced graph
                advice = ("the default, 17, suits every architecture img2img builds" if opset != 17 else
                          "an operation of this architecture that the exporter cannot write")
                raise ExportError(f"{model}: the ONNX exporter failed at --opset {opset} ({_short(err)}); "
                                  f"{advice}") from None
        check_graph(temp, wrapper, channels, spec)
        write_bytes_atomic(Path(out), temp.read_bytes())
    finally:
        with suppress(OSError):  # a read-only folder holds no temporary to remove, and says so
            temp.unlink(missing_ok=True)
    return spec


def refuse_to_replace(model: Path, out: Path) -> None:
    """OUT never replaces the model it exports, nor a file that is no ONNX graph (a photo, a
    run's config.yaml): translate refuses to write over its input, and so does export."""
    if out.exists() and out.resolve() == model.resolve():
        raise ConfigError(f"OUT {out} is the --model file: the export would replace the generator; give another "
                          "path, e.g. model.onnx")
    if out.exists() and out.suffix.lower() != ".onnx":
        raise ConfigError(f"OUT {out} exists and is no .onnx file: the export would replace it; give a .onnx path")


def check_graph(path: Path, wrapper: UnitRangeGenerator, channels: int, spec: GeneratorSpec) -> None:
    """Run the graph at a size that is no multiple of anything and compare with what translate
    gives (the network padded only to its own multiple): an architecture whose forward computes
    with sizes in Python traces to a graph that is right at the example's size only, and one
    that pads inside in its own way may not match the graph's padding. Needs onnxruntime (the
    onnx extra holds it); without it, unchecked."""
    try:
        import onnxruntime
    except ImportError:
        return
    side = max(37, wrapper.min_size + 5)
    translate = UnitRangeGenerator(wrapper.module, spec, multiple=int(getattr(wrapper.module, "multiple", 1)))
    quiet = onnxruntime.SessionOptions()
    quiet.log_severity_level = 4  # its errors are ours to report, in one line, not its log on stderr
    session = onnxruntime.InferenceSession(str(path), quiet, providers=["CPUExecutionProvider"])
    for height, width in ((side, side + 8), (3, 5)):  # the second one smaller than any network's minimum
        image = torch.rand(1, channels, height, width)
        with torch.inference_mode():
            expected = translate(image).numpy()
        try:
            got = session.run(None, {"image": image.numpy()})[0]
            gap = float(abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        except Exception as err:
            gap, reason = float("inf"), _short(err)
        else:
            reason = f"{gap:.3g} from PyTorch's result"
        if gap > 1e-3:
            raise ExportError(f"the exported {spec.arch} graph does not give translate's result at {height}x{width} "
                              f"px ({reason}): its forward pass pads or computes with image sizes in ways ONNX "
                              "tracing cannot follow; nothing was written")


def _short(err: Exception, limit: int = 160) -> str:
    """The first sentence of an error's first line, cut at a word: the exporter's and onnxruntime's
    messages run on (node names, advice to file an issue)."""
    line = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    node = re.search(r"while running (\w+) node", line)  # onnxruntime: which operation failed
    if node:
        return f"onnxruntime failed in a {node.group(1)} node"
    sentence = line.split(". ")[0]
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + " ..."


@contextmanager
def quiet_exporter():
    """The exporter's notes about its own tracing (sizes read as Python values, InstanceNorm
    exported in its per-image mode, which is also what eval does without running statistics,
    Slice not constant-folded) say nothing a user can act on; the graph is checked against
    PyTorch by the tests instead."""
    with warnings.catch_warnings(), _output_dropped():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r"(?s).*(instance_norm|Constant folding|TorchScript-based)")
        yield


@contextmanager
def _output_dropped():
    """fds 1 and 2 to nowhere: the exporter switches its own logging on (torch 2.x reads the
    switch's function for its value) and, on a failure, prints the whole traced graph from C++
    (hundreds of lines, into stdout, which a pipeline reads); its first line reaches the user in
    the ExportError instead."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    try:
        with open(os.devnull, "wb") as sink:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
