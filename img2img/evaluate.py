"""`img2img eval`: how close a folder of outputs is to a folder of targets.

Paired metrics (PSNR, SSIM, LPIPS) compare each output with the target of the same relative
path and file stem (any extension: `out/x/1.png` with `gt/x/1.jpg`). Set metrics (FID, KID)
compare the two folders as distributions of features, so every image counts, paired or not
(CycleGAN outputs have no targets of their own).

PSNR and SSIM are img2img.metrics' kornia-based functions: on RGB by default, on the BT.601
Y channel with `y_channel` (BasicSR's convention), after cropping `crop_border` pixels from each
side. LPIPS, FID and KID are torchmetrics' (with torch-fidelity's Inception for FID/KID).
Nothing is ever downloaded: the weights come from `weights_dir` or torch's hub cache, and a
missing file stops the evaluation before any image is read, naming the file.

The FID/KID feature extractor is pluggable (`feature_extractor`): any module mapping uint8
NCHW images in [0, 255] to (N, features), which is how tests run without Inception weights.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from img2img import metrics as pixel_metrics
from img2img.config import ConfigError, require_folder
from img2img.data.header import failure
from img2img.data.images import files_by_key, read_image
from img2img.hints import install_hint
from img2img.progress import Reporter, Silent

PAIRED_METRICS = ("psnr", "ssim", "lpips")
SET_METRICS = ("fid", "kid")
METRICS = PAIRED_METRICS + SET_METRICS

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
# LPIPS = torchvision's ImageNet backbone + linear heads that ship inside torchmetrics.
LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
TORCHVISION_URL = "https://download.pytorch.org/models/"

# Below this many images per set the FID estimate is strongly biased (its covariances have
# 2048 dimensions); KID is unbiased and is the usual advice for small sets.
FID_RELIABLE_IMAGES = 2048
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000  # torch-fidelity's default, reduced to fit smaller sets
FEATURE_BATCH = 16
MAX_LISTED = 20  # unmatched names shown in human messages (JSON lists them all)


@dataclass
class Matching:
    pairs: list[tuple[str, Path, Path]]  # (key, output, target); key = relative path without extension
    unmatched_pred: list[Path]
    unmatched_target: list[Path]
    problems: list[str]  # e.g. two files of one folder sharing a key


@dataclass
class Evaluation:
    metrics: tuple[str, ...]
    means: dict[str, float] = field(default_factory=dict)  # fid/kid: the value for the two sets
    images: list[dict] = field(default_factory=list)  # one per pair: names and paired values
    counts: dict[str, int] = field(default_factory=dict)
    unmatched_pred: list[Path] = field(default_factory=list)
    unmatched_target: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # images that could not be measured
    warnings: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """Plain JSON: an infinite PSNR (identical images) becomes null."""
        return {
            "metrics": {k: _finite(v) for k, v in self.means.items()},
            "count": self.counts,
            "settings": self.settings,
            "images": [{k: _finite(v) for k, v in image.items()} for image in self.images],
            "unmatched": {"pred": [str(p) for p in self.unmatched_pred],
                          "target": [str(p) for p in self.unmatched_target]},
            "failures": self.failures,
            "warnings": self.warnings,
        }


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ---- which metrics, which files ---------------------------------------------------------


def parse_metrics(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ConfigError(f"--metrics: name at least one of {', '.join(METRICS)}")
    for name in names:
        if name not in METRICS:
            close = difflib.get_close_matches(name, METRICS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"--metrics: unknown metric {name!r}{hint}; choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


def match_folders(pred_dir: Path, target_dir: Path) -> Matching:
    """Pair files by relative path and stem; list what has no partner, by name."""
    for flag, folder in (("PRED_DIR", pred_dir), ("TARGET_DIR", target_dir)):
        require_folder(folder, flag)
    pred, target = files_by_key(Path(pred_dir)), files_by_key(Path(target_dir))
    for flag, folder, files in (("PRED_DIR", pred_dir, pred), ("TARGET_DIR", target_dir, target)):
        if not files:
            raise ConfigError(f"{flag} {folder}: no images found (png, jpg, webp, bmp, tif)")
    problems = [f"{', '.join(str(p) for p in paths)}: several files named {key}.*, cannot tell which to compare"
                for files in (pred, target) for key, paths in sorted(files.items()) if len(paths) > 1]
    pairs = [(key, pred[key][0], target[key][0]) for key in sorted(pred.keys() & target.keys())
             if len(pred[key]) == 1 and len(target[key]) == 1]
    unmatched_pred = [p for key in sorted(pred.keys() - target.keys()) for p in pred[key]]
    unmatched_target = [p for key in sorted(target.keys() - pred.keys()) for p in target[key]]
    return Matching(pairs, unmatched_pred, unmatched_target, problems)


# ---- weights ------------------------------------------------------------------------------


def weight_places(weights_dir: Path | None) -> list[Path]:
    return ([Path(weights_dir)] if weights_dir else []) + [Path(torch.hub.get_dir()) / "checkpoints"]


def required_weights(metrics: tuple[str, ...], lpips_net: str) -> list[tuple[str, str, str]]:
    """(metric, file name, where to get it) for each weights file the metrics need."""
    needed = []
    if "lpips" in metrics:
        name = LPIPS_BACKBONES[lpips_net]
        needed.append(("lpips", name, TORCHVISION_URL + name))
    if any(m in metrics for m in SET_METRICS):
        needed.append(("/".join(m for m in SET_METRICS if m in metrics), INCEPTION_FILE, INCEPTION_URL))
    return needed


def find_weights(metrics: tuple[str, ...], lpips_net: str, weights_dir: Path | None) -> dict[str, Path]:
    """File name -> path for every weights file needed; one error naming all missing ones."""
    if weights_dir is not None:
        require_folder(weights_dir, "--weights")
    places = weight_places(weights_dir)
    found, missing = {}, []
    for metric, name, url in required_weights(metrics, lpips_net):
        path = next((place / name for place in places if (place / name).is_file()), None)
        if path is None:
            missing.append(f"  {metric}: {name} (from {url})")
        else:
            found[name] = path
    if missing:
        looked = " and ".join(str(p) for p in places)
        raise ConfigError(
            "missing weights, and nothing is downloaded:\n" + "\n".join(missing) +
            f"\nlooked in {looked}. Copy the file(s) into a folder and pass --weights DIR, or into "
            f"{places[-1]} (torch's hub cache). --metrics psnr,ssim needs no weights.")
    for path in found.values():
        _check_plain_tensors(path)
    return found


def _check_plain_tensors(path: Path) -> None:
    """The libraries load these files with full unpickling; make sure they hold only tensors."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling or format error means: not a plain state dict
        raise ConfigError(f"{path}: not a plain file of weights ({err.__class__.__name__}); "
                          "refusing to load it (it could run code)") from err


def _require_torchmetrics() -> None:
    try:
        import torchmetrics  # noqa: F401
    except ImportError as err:
        raise ConfigError("LPIPS, FID and KID need torchmetrics and torch-fidelity: "
                          f"{install_hint('eval')} (PSNR and SSIM need neither)") from err


@contextlib.contextmanager
def _hub_cache_holding(path: Path) -> Iterator[None]:
    """torchvision finds backbone weights only in the hub cache: point it at `path` for a moment."""
    cache = Path(torch.hub.get_dir())
    if path.parent == cache / "checkpoints":
        yield
        return
    temp = Path(tempfile.mkdtemp(prefix="img2img-weights-"))
    try:
        (temp / "checkpoints").mkdir()
        link = temp / "checkpoints" / path.name
        try:
            link.symlink_to(path.resolve())
        except OSError:  # no symlinks on this file system
            shutil.copyfile(path, link)
        torch.hub.set_dir(str(temp))
        yield
    finally:
        torch.hub.set_dir(str(cache))
        shutil.rmtree(temp, ignore_errors=True)


# ---- the metrics --------------------------------------------------------------------------


class Lpips:
    """torchmetrics' LPIPS on [0, 1] images, one pair at a time."""

    def __init__(self, net: str, weights: Path, device: torch.device):
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        with _hub_cache_holding(weights):
            self.metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> float:
        self.metric.reset()
        self.metric.update(output.to(self.device), target.to(self.device))
        return float(self.metric.compute())


def inception_extractor(weights: Path) -> nn.Module:
    """torch-fidelity's Inception v3 (2048-d pool features) as torchmetrics wraps it."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    # antialias=False resizes to 299 px like torch-fidelity and the original TensorFlow FID,
    # so values compare with published ones (older torchmetrics, without the option, resize that way).
    options = {"antialias": False} if "antialias" in inspect.signature(NoTrainInceptionV3).parameters else {}
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=str(weights), **options)
    net.num_features = 2048
    return net


class Precomputed(nn.Module):
    """Features in, features out: lets FID and KID share one pass of the extractor."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


class SetMetrics:
    """FID and KID between the features of target images (real) and of outputs (fake)."""

    def __init__(self, names: tuple[str, ...], extractor: nn.Module, device: torch.device):
        self.names, self.device = names, device
        self.extractor = extractor.to(device).eval()
        self.features: dict[bool, list[torch.Tensor]] = {True: [], False: []}
        self.pending: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    def add(self, image: torch.Tensor, real: bool) -> None:
        """Queue one 3xHxW image; images of one size go through the extractor together."""
        queue = self.pending[real]
        if queue and (queue[0].shape != image.shape or len(queue) >= FEATURE_BATCH):
            self._flush(real)
        self.pending[real].append(image)

    @torch.no_grad()
    def _flush(self, real: bool) -> None:
        if self.pending[real]:
            batch = to_uint8(torch.stack(self.pending[real])).to(self.device)
            self.features[real].append(self.extractor(batch).reshape(len(batch), -1).double().cpu())
            self.pending[real] = []

    def compute(self) -> tuple[dict[str, float], list[str]]:
        self._flush(True)
        self._flush(False)
        real, fake = (torch.cat(self.features[r]) if self.features[r] else torch.zeros(0, 1) for r in (True, False))
        n = min(len(real), len(fake))
        if n < 2:
            raise ConfigError(f"FID/KID need at least 2 readable images in each folder, got {len(fake)} "
                              f"output(s) and {len(real)} target(s)")
        values, notes = {}, []
        if "fid" in self.names:
            values["fid"] = _fid(real, fake)
            if n < FID_RELIABLE_IMAGES:
                notes.append(f"FID from {n} images per set is biased upwards and noisy (reliable from about "
                             f"{FID_RELIABLE_IMAGES}, published values use 10,000+): compare FIDs only at equal "
                             "image counts, and prefer KID for small sets")
        if "kid" in self.names:
            subset = min(KID_SUBSET_SIZE, len(real), len(fake))
            values["kid"], values["kid_std"] = _kid(real, fake, subset)
            if subset < KID_SUBSET_SIZE:  # as clean-fid does; torch-fidelity would refuse
                notes.append(f"KID from subsets of {subset} images, the smaller set's size (the usual subset "
                             f"size is {KID_SUBSET_SIZE})")
        return values, notes


def _fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return max(0.0, float(metric.compute()))  # rounding can leave -1e-12 for identical sets


def _kid(real: torch.Tensor, fake: torch.Tensor, subset_size: int) -> tuple[float, float]:
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():  # its note that it keeps all features in memory
        warnings.simplefilter("ignore")
        metric = KernelInceptionDistance(feature=Precomputed(real.shape[1]), subsets=KID_SUBSETS,
                                         subset_size=subset_size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # the same subsets every time: reproducible values
        torch.manual_seed(0)
        mean, std = metric.compute()
    return float(mean), float(std)


def paired_values(output: torch.Tensor, target: torch.Tensor, metrics: tuple[str, ...], crop_border: int = 0,
                  y_channel: bool = False, lpips: Lpips | None = None) -> dict[str, float]:
    """Paired metrics of one 3xHxW output against its target, both in [0, 1]."""
    out, ref = output[None], target[None]
    psnr = pixel_metrics.psnr_y if y_channel else pixel_metrics.psnr_rgb
    ssim = pixel_metrics.ssim_y if y_channel else pixel_metrics.ssim_rgb
    values = {}
    # No 8-bit rounding: the files already hold their values (16-bit ones keep their precision).
    if "psnr" in metrics:
        values["psnr"] = psnr(out, ref, crop_border, quantize=False)
    if "ssim" in metrics:
        values["ssim"] = ssim(out, ref, crop_border, quantize=False)
    if "lpips" in metrics and lpips is not None:
        values["lpips"] = lpips(out, ref)
    return values


# ---- the evaluation -------------------------------------------------------------------------


def evaluate(pred_dir: str | Path, target_dir: str | Path, metrics: str | tuple[str, ...] = ("psnr", "ssim"), *,
             crop_border: int = 0, y_channel: bool = False, weights_dir: str | Path | None = None,
             lpips_net: str = "alex", device: torch.device | str = "cpu", feature_extractor: nn.Module | None = None,
             reporter: Reporter | None = None) -> Evaluation:
    """Measure the outputs in `pred_dir` against the targets in `target_dir`."""
    metrics = parse_metrics(metrics)
    if crop_border < 0:
        raise ConfigError(f"--crop-border {crop_border}: must be 0 or more")
    if lpips_net not in LPIPS_BACKBONES:
        raise ConfigError(f"--lpips-net {lpips_net}: choose one of {', '.join(LPIPS_BACKBONES)}")
    pred_dir, target_dir, device = Path(pred_dir), Path(target_dir), torch.device(device)
    matching = match_folders(pred_dir, target_dir)
    paired = tuple(m for m in metrics if m in PAIRED_METRICS)
    sets = tuple(m for m in metrics if m in SET_METRICS)
    if paired and not matching.pairs:
        example = f" (e.g. {matching.unmatched_pred[0].relative_to(pred_dir)})" if matching.unmatched_pred else ""
        raise ConfigError(f"no output in {pred_dir} has a target of the same relative path and stem in "
                          f"{target_dir}{example}, so {', '.join(paired)} cannot be measured")
    lpips, set_metrics = _load_networks(metrics, sets, lpips_net, weights_dir, device, feature_extractor)
    result = Evaluation(metrics, failures=list(matching.problems), settings={
        "pred_dir": str(pred_dir), "target_dir": str(target_dir), "crop_border": crop_border,
        "channels": "Y" if y_channel else "RGB"})
    if paired:  # files without a partner are only a problem for paired metrics
        result.unmatched_pred, result.unmatched_target = matching.unmatched_pred, matching.unmatched_target
    reporter = reporter or Silent()
    cropped_away = _measure(matching, paired, set_metrics, crop_border, y_channel, lpips, result, reporter)
    if paired and cropped_away == len(matching.pairs):
        raise ConfigError(f"--crop-border {crop_border} leaves nothing of any image: choose a smaller border")
    _summarise(result, paired, set_metrics)
    return result


def _load_networks(metrics, sets, lpips_net, weights_dir, device, feature_extractor):
    if "lpips" not in metrics and not sets:
        return None, None
    _require_torchmetrics()
    wanted = tuple(m for m in metrics if m == "lpips" or (m in SET_METRICS and feature_extractor is None))
    weights = find_weights(wanted, lpips_net, Path(weights_dir) if weights_dir else None)
    lpips = Lpips(lpips_net, weights[LPIPS_BACKBONES[lpips_net]], device) if "lpips" in metrics else None
    if not sets:
        return lpips, None
    extractor = feature_extractor if feature_extractor is not None else inception_extractor(weights[INCEPTION_FILE])
    return lpips, SetMetrics(sets, extractor, device)


def _measure(matching: Matching, paired: tuple[str, ...], set_metrics: SetMetrics | None, crop_border: int,
             y_channel: bool, lpips: Lpips | None, result: Evaluation, reporter: Reporter) -> int:
    """Measures into `result`; returns how many pairs the border crop left nothing of."""
    # Set metrics take every image, so files without a partner count as well.
    extra = ([(p, False) for p in matching.unmatched_pred] + [(p, True) for p in matching.unmatched_target]
             if set_metrics else [])
    reporter.start(len(matching.pairs) + len(extra), 0, "evaluating")
    done = cropped_away = 0
    for key, pred_path, target_path in matching.pairs:
        output, target = _read(pred_path, result), _read(target_path, result)
        if paired and output is not None and target is not None:
            cropped_away += _measure_pair(key, pred_path, target_path, output, target, paired, crop_border, y_channel,
                                          lpips, result)
        if set_metrics:
            for image, real in ((output, False), (target, True)):
                if image is not None:
                    set_metrics.add(image, real)
        done += 1
        reporter.update(done)
    for path, real in extra:
        image = _read(path, result)
        if image is not None:
            set_metrics.add(image, real)
        done += 1
        reporter.update(done)
    reporter.finish()
    return cropped_away


def _read(path: Path, result: Evaluation) -> torch.Tensor | None:
    try:
        return read_image(path).rgb
    except Exception as err:  # the per-file boundary: named, and the evaluation goes on
        result.failures.append(failure(path, err, "reading"))
        return None


def _measure_pair(key, pred_path, target_path, output, target, paired, crop_border, y_channel, lpips, result) -> bool:
    """Measures one pair into `result`; True where the border crop leaves nothing of it."""
    height, width = output.shape[1:]
    if output.shape != target.shape:
        result.failures.append(f"{pred_path} is {width}x{height} but {target_path} is "
                               f"{target.shape[2]}x{target.shape[1]}")
        return False
    if min(height, width) <= 2 * crop_border:
        result.failures.append(f"{pred_path}: {width}x{height} px leaves nothing after --crop-border {crop_border}")
        return True
    window = pixel_metrics.SSIM_WINDOW
    if "ssim" in paired and min(height, width) - 2 * crop_border < window:  # the others are measured
        cropped = f" after --crop-border {crop_border}" if crop_border else ""
        result.warnings.append(f"{pred_path}: {width - 2 * crop_border}x{height - 2 * crop_border} px{cropped} is "
                               f"smaller than SSIM's {window}x{window} window: its SSIM is left out")
        paired = tuple(name for name in paired if name != "ssim")
    try:
        values = paired_values(output, target, paired, crop_border, y_channel, lpips)
    except Exception as err:  # e.g. smaller than LPIPS's network allows
        result.failures.append(failure(pred_path, err, "measuring"))
        return False
    if values:
        result.images.append({"name": key, "pred": str(pred_path), "target": str(target_path), **values})
    return False


def _summarise(result: Evaluation, paired: tuple[str, ...], set_metrics: SetMetrics | None) -> None:
    result.counts = {"pairs": len(result.images)} if paired else {}
    for name in paired:
        values = [image[name] for image in result.images if name in image]
        result.counts[name] = len(values)  # fewer than the pairs where an image is too small for it
        if values:
            result.means[name] = sum(values) / len(values)
        elif result.images:  # asked for, and measured on no image: no figure to give
            result.failures.append(f"{name.upper()}: no image could be measured (see the warnings)")
    if paired and not result.images:
        result.failures.append("no pair could be measured")
    if set_metrics is not None:
        values, notes = set_metrics.compute()
        result.means.update(values)
        result.counts.update(pred=sum(len(f) for f in set_metrics.features[False]),
                             target=sum(len(f) for f in set_metrics.features[True]))
        result.warnings.extend(notes)


def describe_unmatched(result: Evaluation) -> list[str]:
    """Human lines naming the files left out of the paired metrics (at most MAX_LISTED each)."""
    lines = []
    for what, paths, other in (("output(s) without a target", result.unmatched_pred, "TARGET_DIR"),
                               ("target(s) without an output", result.unmatched_target, "PRED_DIR")):
        if paths:
            names = ", ".join(os.fspath(p) for p in paths[:MAX_LISTED])
            more = f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
            lines.append(f"{len(paths)} {what} (no file of the same relative path and stem in {other}): {names}{more}")
    return lines
