"""Checkpoints: generator files (safetensors + metadata), training state, foreign weights.

- A generator file is everything `translate` needs: weights plus a JSON `img2img` metadata
  entry with the architecture, its hyper-parameters, the pixel convention and the config.
- Training state is a dict of tensors and plain numbers written with torch.save and read
  with `weights_only=True`, so reading a file never runs code.
- Foreign `.pth` / `.safetensors` files are unwrapped and recognised by nets.recognise (our
  layouts, the older ESRGAN layouts, the CycleGAN/pix2pix family by structure); what it does
  not claim goes to spandrel when the `zoo` extra is installed (nets.zoo).
Every write goes to a temp file in the same folder, is fsynced, then renamed over the target.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save as safetensors_bytes
from torch import nn

from img2img.config import ConfigError
from img2img.data.images import write_bytes_atomic
from img2img.nets import recognise, registry, zoo

FORMAT_VERSION = 1
STATE_PATTERN = "state_step*.pt"
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
UNREADABLE = "{}: not a readable PyTorch checkpoint (truncated, corrupt, or another kind of file)"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and what to do."""


@dataclass
class GeneratorSpec:
    """What a generator file says about itself (its safetensors metadata)."""

    arch: str
    hparams: dict
    pixel_range: str  # "-1,1" or "0,1"
    scale: int = 1
    task: str = ""
    direction: str = ""
    step: int = 0
    config: dict = field(default_factory=dict)
    source: str = "img2img"  # or the foreign layout it was read from
    details: dict = field(default_factory=dict)  # what spandrel says of a community model
    guessed: str = ""  # what a foreign file does not say and was assumed (translate says so)

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "format_version": FORMAT_VERSION})

    @classmethod
    def from_json(cls, text: str) -> "GeneratorSpec":
        data = json.loads(text)
        data.pop("format_version", None)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def save_generator(path: Path, module: nn.Module, spec: GeneratorSpec) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    data = safetensors_bytes(tensors, metadata={"img2img": spec.to_json()})
    write_bytes_atomic(Path(path), data)


def load_generator(path: Path, direction: str | None = None) -> tuple[nn.Module, GeneratorSpec]:
    """A generator in eval mode, from our .safetensors, a foreign .pth/.safetensors, or a run
    folder. `direction` picks a CycleGAN run's generator (None: AtoB, or a file's own)."""
    if direction not in (None, "AtoB", "BtoA"):
        raise ValueError(f"direction {direction!r}: choose 'AtoB' or 'BtoA'")
    stated, direction = direction is not None, direction or "AtoB"
    path = resolve_generator_path(Path(path), direction)
    module, spec = _load(path, direction, stated)
    _refuse_non_finite(module, path)
    return module, spec


def _refuse_non_finite(module: nn.Module, path: Path) -> None:
    """NaN or infinite weights (a run that diverged, a damaged file) make every output black or
    undefined: refused here, once, rather than written as a folder of black images."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: the weights hold NaN or infinite values ({name}), so every output would "
                                  "be black or undefined; use an earlier checkpoint of the run")


def _load(path: Path, direction: str, stated: bool = False) -> tuple[nn.Module, GeneratorSpec]:
    if path.suffix not in (".safetensors", *TORCH_SUFFIXES):
        raise CheckpointError(f"{path}: not a generator file; give a .safetensors file written by img2img, "
                              f"a PyTorch checkpoint ({', '.join(TORCH_SUFFIXES)}) or a run folder")
    if path.suffix == ".safetensors":
        state_dict, metadata = _read_safetensors(path)
        if "img2img" in metadata:
            spec = GeneratorSpec.from_json(metadata["img2img"])
            _check_direction(path, spec, direction, stated)
            return loaded_module(spec.arch, spec.hparams, state_dict, path), spec
    else:
        state_dict = safe_torch_load(path)
        if isinstance(state_dict, dict) and state_dict.get("format") == "img2img-train-state":
            written = [str(file) for name in GENERATOR_NAMES if (file := path.parent / name).is_file()]
            where = f"the generator files of that run: {', '.join(written)}" if written else \
                "that run has written no generator file yet"
            raise CheckpointError(f"{path}: a training state, for --resume; {where} (or give the run folder)")
    try:
        chosen = recognise.unwrap(state_dict, direction)
        if direction == "BtoA" and _same_tensors(chosen, recognise.unwrap(state_dict, "AtoB")):
            raise ConfigError(f"{path}: --direction BtoA, but this file holds one generator, which maps what it was "
                              "trained to map; --direction picks one of the two of a CycleGAN checkpoint. Leave "
                              "out --direction to use this one.")
    except recognise.NotAStateDict as err:
        raise CheckpointError(f"{path}: {err}") from None
    return load_foreign(path, chosen)


def channels(hparams: dict) -> tuple[int, int]:
    """(input, output) channels of one of our architectures, by either family's names for them."""
    return (int(hparams.get("in_ch", hparams.get("num_in_ch", 3))),
            int(hparams.get("out_ch", hparams.get("num_out_ch", 3))))


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[key] is b[key] for key in a)


def load_foreign(path: Path, state_dict: dict) -> tuple[nn.Module, GeneratorSpec]:
    """Our own architecture where one computes what the file describes; else spandrel's."""
    misfit = None
    try:
        found = recognise.recognise(state_dict)
    except recognise.Misfit as err:
        found, misfit = None, str(err)
    if found is not None:
        try:
            zoo.refuse_channels(found.arch, *channels(found.hparams))
        except zoo.ZooRefused as err:
            raise CheckpointError(f"{path}: {err}") from None
        arch = registry.get(found.arch)
        module = loaded_module(found.arch, found.hparams, found.state_dict, path, found.module)
        spec = GeneratorSpec(arch=found.arch, hparams=found.hparams, pixel_range=arch.pixel_range,
                             scale=int(getattr(module, "scale", 1)), source=f"foreign: {found.layout}",
                             guessed=found.guessed)
        return module, spec
    try:
        loaded = zoo.load(state_dict)
        zoo_note = f"; spandrel {zoo.spandrel_version()} is installed and knows none of its architectures either"
    except zoo.ZooMissing:
        loaded, zoo_note = None, f"; community SR/restoration models (SwinIR, HAT, DAT, SPAN, ...) need {zoo.INSTALL_HINT}"
    except zoo.ZooRefused as err:
        raise CheckpointError(f"{path}: {err}") from None
    if loaded is not None:
        module, hparams, details = loaded
        spec = GeneratorSpec(arch=details["architecture"], hparams=hparams, pixel_range="0,1",
                             scale=module.scale, source=f"spandrel {details['spandrel']}", details=details)
        return module, spec
    what = (f"the weights do not fit the architecture they describe ({misfit})" if misfit
            else "the weights match no known generator layout")
    raise CheckpointError(f"{path}: {what}. Found: {recognise.describe(state_dict)}. "
                          f"Supported: {recognise.SUPPORTED}{zoo_note}")


def _check_direction(path: Path, spec: GeneratorSpec, direction: str, stated: bool) -> None:
    """Refuse to run one of our single-direction generators (pix2pix, SR, a CycleGAN G_AB file)
    backwards just because no B->A file exists, and a CycleGAN G_BA file for a stated AtoB (AtoB
    is also the default, which any file's own direction answers); foreign files say nothing
    about their direction."""
    if stated and direction == "AtoB" and spec.source == "img2img" and spec.task == "cyclegan" \
            and spec.direction == "BtoA":
        raise ConfigError(f"{path}: --direction AtoB, but this CycleGAN generator maps BtoA (G_BA); give the run "
                          "folder for its A->B generator, or leave out --direction to use this one.")
    if direction != "BtoA" or spec.source != "img2img" or spec.direction == "BtoA":
        return
    trained = f"maps {spec.direction}" if spec.direction else "has one direction"
    raise ConfigError(f"{path}: --direction BtoA, but this {spec.task or 'img2img'} generator {trained}; "
                      "only CycleGAN runs hold a B->A generator (G_BA.safetensors). "
                      "Leave out --direction to use this one.")


def generator_files(path: Path) -> list[Path]:
    """The generator files a path stands for: itself, or those of a run folder (a CycleGAN run
    has two: G_AB and G_BA)."""
    path = Path(path)
    if path.is_file() or not path.exists():
        return [resolve_generator_path(path)]
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    both = [folder / "G_AB.safetensors", folder / "G_BA.safetensors"]
    return both if all(p.is_file() for p in both) else [resolve_generator_path(path)]


def describe_generators(path: Path) -> list[dict]:
    """What `img2img info` prints: one record per generator file."""
    records = []
    for file in generator_files(Path(path)):
        module, spec = load_generator(file, "BtoA" if file.stem == "G_BA" else "AtoB")
        records.append({"file": str(file), "arch": spec.arch, "hparams": spec.hparams,
                        "parameters": registry.count_parameters(module), "pixel_range": spec.pixel_range,
                        "scale": spec.scale, "task": spec.task, "direction": spec.direction or None,
                        "step": spec.step, "source": spec.source,
                        **({"details": spec.details} if spec.details else {})})
    return records


GENERATOR_NAMES = ("generator.safetensors", "G_AB.safetensors", "G_BA.safetensors", "G_ema.safetensors")


def resolve_generator_path(path: Path, direction: str = "AtoB") -> Path:
    if not path.exists():  # a path that cannot work: a usage error, as a missing INPUT is
        raise ConfigError(f"{path}: no such file or folder (give a .safetensors/.pth file or a run folder)")
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    names = [f"G_{direction[0]}{direction[-1]}.safetensors", "generator.safetensors", "G_ema.safetensors"]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(  # a folder that holds no model: a path that cannot work, as a missing one
        f"{path}: no generator file in this folder (looked for {', '.join(names)} in {folder}); "
        "is it a run folder whose training has written a checkpoint yet?"
    )


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        state_dict = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    return state_dict, metadata


def safe_torch_load(path: Path) -> Any:
    """torch.load that never unpickles arbitrary objects, with errors a person can act on."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    if not (head == b"PK" or head[:1] == b"\x80"):  # neither torch.save's zip nor its legacy pickle
        raise CheckpointError(UNREADABLE.format(path))
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol other than its own
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if (protocol := _pickle_protocol(path)) > 3:
            raise CheckpointError(
                f"{path}: refused to load: it was saved with pickle protocol {protocol}, which PyTorch's safe loader "
                "does not read (it reads torch.save's default, 2), and a pickle that cannot be checked could run "
                "code. If you trust its source, save it again with torch.save's default protocol or as "
                ".safetensors.") from None
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path}: refused to load: the file contains Python objects other than tensors and "
                "plain containers, and unpickling them could run arbitrary code. Only load it if you "
                "trust its source, and convert it to a plain state_dict first."
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
    except Exception:  # truncated or foreign files fail in many ways, whose texts mean nothing to a user
        raise CheckpointError(UNREADABLE.format(path)) from None


def _pickle_protocol(path: Path) -> int:
    """The protocol of the file's pickle (0 where unknown): byte 2 of torch.save's data.pkl in
    its zip, or of a legacy file's first pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
                head = archive.open(name).read(2)
        else:
            head = path.read_bytes()[:2]
    except (OSError, StopIteration, zipfile.BadZipFile):
        return 0
    return head[1] if len(head) == 2 and head[0] == 0x80 else 0


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


def loaded_module(arch: str, hparams: dict, state_dict: dict, path: Path, built: nn.Module | None = None) -> nn.Module:
    """`arch` built without a random init, the file's tensors assigned to it, in eval mode."""
    module = built if built is not None else registry.build_uninitialised(arch, **hparams)
    _load_state(module, state_dict, path)
    return module.eval()


def _load_state(module: nn.Module, state_dict: dict, path: Path) -> None:
    own = module.state_dict()
    # Old PyTorch saved running statistics for InstanceNorm; current InstanceNorm has none.
    state_dict = {k: v for k, v in state_dict.items()
                  if k in own or not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    # Assigned tensors keep their dtype: make it the module's, which is what the code computes in.
    state_dict = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        module.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        detail = str(err).splitlines()[0] if str(err) else "shape mismatch"
        raise CheckpointError(f"{path}: the weights do not fit the architecture they describe ({detail})") from None


# ---- training state --------------------------------------------------------------------


def save_state(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write state_step{N}.pt atomically; keep the newest `keep` files."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(folder) / f"state_step{step:08d}.pt"
    write_bytes_atomic(path, buffer.getvalue())
    for old in sorted(Path(folder).glob(STATE_PATTERN))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def saved_steps(folder: Path) -> list[int]:
    """The steps of the training states in `folder`, as their names say."""
    stems = (path.stem[len("state_step"):] for path in Path(folder).glob(STATE_PATTERN))
    return sorted(int(stem) for stem in stems if stem.isdigit())


def load_latest_state(folder: Path) -> tuple[dict, Path] | None:
    """The newest training state that reads back whole; broken files are skipped."""
    candidates = sorted(Path(folder).glob(STATE_PATTERN), reverse=True)
    for path in candidates:
        try:
            return safe_torch_load(path), path
        except CheckpointError:
            continue
    return None
