"""Community models we do not own, through spandrel (`pip install "img2img[zoo]"`).

spandrel (the loader behind chaiNNer and ComfyUI) detects some 40 super-resolution and
restoration architectures from their weights: SwinIR, HAT, DAT, SPAN, OmniSR, RealPLKSR,
Real-CUGAN, RCAN, ... (`pip install spandrel-extra-arches` adds the ones under other licences,
which are then used too). A spandrel model enters our pipeline wrapped in ZooGenerator, which
states what the pipeline asks of a generator: scale, size multiple and minimum, input channels,
the reduced precisions the model supports and its advice on tiling. Only files our own
recognition does not claim get here: our architectures run faster in our pipeline.
The file is read by our own weights-only loader; spandrel only sees tensors.
"""

from __future__ import annotations

import json
import warnings
from importlib import metadata

import torch
from torch import nn

INSTALL_HINT = 'pip install "img2img[zoo]"'


class ZooMissing(ImportError):
    """spandrel is not installed."""


class ZooRefused(ValueError):
    """spandrel knows the model, but it is not an image-to-image model our pipeline can run."""


def spandrel_version() -> str | None:
    try:
        return metadata.version("spandrel")
    except metadata.PackageNotFoundError:
        return None


def _registry():
    with warnings.catch_warnings():  # some architectures warn about deprecations on import
        warnings.simplefilter("ignore")
        try:
            import spandrel
        except ImportError:
            raise ZooMissing(f"community models (SwinIR, HAT, DAT, SPAN, ...) need spandrel: {INSTALL_HINT}") from None
        try:  # architectures under other licences, when the user has chosen to install them
            import spandrel_extra_arches

            spandrel_extra_arches.install(ignore_duplicates=True)
        except ImportError:
            pass
    return spandrel


class ZooGenerator(nn.Module):
    """A spandrel model as one of our generators: [0, 1] images in and out."""

    channels_last = False  # spandrel's architectures are not all written for it

    def __init__(self, descriptor):
        super().__init__()
        self.net = descriptor.model  # a submodule, so .to(), .eval() and parameters() reach it
        self.descriptor = descriptor
        requirements = descriptor.size_requirements
        self.scale = int(descriptor.scale)
        self.multiple = int(requirements.multiple_of)
        self.min_size = max(1, int(requirements.minimum))
        self.square = bool(requirements.square)
        self.in_channels = int(descriptor.input_channels)
        self.tiling = descriptor.tiling.name.lower()  # supported, discouraged or internal
        self.tiling_reason = "its authors advise against tiling it"
        self.reduced_precision = tuple(dtype for dtype, ok in ((torch.bfloat16, descriptor.supports_bfloat16),
                                                                (torch.float16, descriptor.supports_half)) if ok)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The descriptor runs the architecture's own call convention (Translator has already
        # padded to the size requirements, so it pads nothing).
        return self.descriptor(x)


def refuse_channels(name: str, inputs: int, outputs: int) -> None:
    """translate reads and writes RGB or gray: a model of other channel counts (RGBA, 4-band) cannot run."""
    if inputs not in (1, 3) or outputs not in (1, 3):
        raise ZooRefused(f"a {name} model with {inputs} input and {outputs} output channels; translate runs RGB "
                         "and grayscale models")


def load(state_dict: dict[str, torch.Tensor]) -> tuple[ZooGenerator, dict, dict] | None:
    """(generator, hyper-parameters, description) for a state_dict spandrel recognises, None when it does not.
    Raises ZooMissing without spandrel, ZooRefused for models that are not image to image."""
    spandrel = _registry()
    try:
        with warnings.catch_warnings():  # deprecation notices from inside the architectures
            warnings.simplefilter("ignore")
            descriptor = spandrel.MAIN_REGISTRY.load(spandrel.canonicalize_state_dict(dict(state_dict)))
    except spandrel.UnsupportedModelError:
        return None
    except Exception as err:  # an architecture matched the keys but its loader failed
        # torch's load_state_dict says which tensors differ on the lines after its heading
        text = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        reason = " ".join(text[:2])[:300] if text else err.__class__.__name__
        raise ZooRefused(f"spandrel took it for a known architecture but could not load it ({reason})") from None
    name = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ZooRefused(f"a {name} model ({descriptor.purpose}) needs a mask as well as the image; "
                         "translate runs image-to-image models only")
    refuse_channels(name, descriptor.input_channels, descriptor.output_channels)
    generator = ZooGenerator(descriptor).eval()
    return generator, _plain(getattr(descriptor.model, "hyperparameters", {})), describe(descriptor)


def describe(descriptor) -> dict:
    requirements = descriptor.size_requirements
    return {
        "architecture": descriptor.architecture.name,
        "purpose": descriptor.purpose,
        "tags": list(descriptor.tags),
        "tiling": descriptor.tiling.name.lower(),
        "size_requirements": {"minimum": requirements.minimum, "multiple_of": requirements.multiple_of,
                              "square": requirements.square},
        "supports_fp16": descriptor.supports_half,
        "supports_bf16": descriptor.supports_bfloat16,
        "spandrel": spandrel_version(),
    }


def _plain(value):
    """Hyper-parameters as JSON values (tuples become lists; a function or class its name, not
    a repr holding its address, which would differ at each run; anything else becomes text)."""
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "__qualname__", None) or str(v)))
