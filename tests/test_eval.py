"""`img2img eval`: PSNR/SSIM against scikit-image on real photographs, FID/KID against
independent numpy/scipy computations with a small local feature extractor standing in for
Inception, the missing-weights message, and the command line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn
from typer.testing import CliRunner

from img2img.cli import app
from img2img.config import ConfigError
from img2img.demo import photo_paths
from img2img.evaluate import INCEPTION_FILE, LPIPS_BACKBONES, evaluate, match_folders, parse_metrics
from helpers import flat, one_thread  # noqa: F401  (one_thread is a fixture)

pytest.importorskip("torchmetrics")
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]), params)


def add_noise(rgb: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma * 255, rgb.shape)
    return np.clip(rgb + noise, 0, 255).round().astype(np.uint8)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return rgb if sigma == 0 else cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Six bundled 192 px photographs as targets, and two perturbed copies as outputs; the noisy
    copies are JPEGs, to pair by stem across extensions."""
    root = tmp_path_factory.mktemp("photos")
    for i, path in enumerate(sorted(photo_paths()[0])[::4][:6]):
        rgb = read_rgb(path)
        write_rgb(root / "target" / f"{path.stem}.png", rgb)
        write_rgb(root / "blur" / f"{path.stem}.png", blur(rgb, 1.5))
        write_rgb(root / "noise" / f"{path.stem}.jpg", add_noise(rgb, 0.05, i))
    return {name: root / name for name in ("target", "blur", "noise")}


def skimage_values(out: np.ndarray, ref: np.ndarray, y_channel: bool, border: int) -> tuple[float, float]:
    """PSNR and SSIM as BasicSR defines them, computed by scikit-image on the 0..255 arrays."""
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    if y_channel:
        weights = np.array([65.481, 128.553, 24.966]) / 255.0
        out, ref = 16.0 + out @ weights, 16.0 + ref @ weights
    if border:
        out, ref = out[border:-border, border:-border], ref[border:-border, border:-border]
    channel_axis = None if y_channel else 2
    psnr = peak_signal_noise_ratio(ref, out, data_range=255)
    ssim = structural_similarity(ref, out, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=channel_axis)
    return psnr, ssim


@pytest.mark.parametrize("kind", ["blur", "noise"])
@pytest.mark.parametrize("y_channel,border", [(False, 0), (False, 4), (True, 0), (True, 4)])
def test_psnr_and_ssim_match_skimage(photos, kind, y_channel, border):
    result = evaluate(photos[kind], photos["target"], "psnr,ssim", crop_border=border, y_channel=y_channel)
    assert len(result.images) == 6 and not result.failures
    for image in result.images:
        psnr, ssim = skimage_values(read_rgb(Path(image["pred"])), read_rgb(Path(image["target"])), y_channel, border)
        assert image["psnr"] == pytest.approx(psnr, abs=1e-4)
        assert image["ssim"] == pytest.approx(ssim, abs=2e-5)
    assert result.means["psnr"] == pytest.approx(np.mean([i["psnr"] for i in result.images]))
    assert result.settings["channels"] == ("Y" if y_channel else "RGB")


def test_identical_images_score_perfectly(photos):
    result = evaluate(photos["target"], photos["target"], "psnr,ssim")
    assert result.means["psnr"] == float("inf") and result.means["ssim"] == pytest.approx(1.0)
    assert result.to_json()["metrics"]["psnr"] is None  # JSON has no infinity


# ---- pairing ----------------------------------------------------------------------------------


def test_pairs_by_relative_path_and_stem_and_names_the_rest(tmp_path):
    rgb = np.full((32, 32, 3), 128, np.uint8)
    for name in ("pred/a.png", "pred/sub/b.jpg", "pred/only_pred.png", "pred/twin.png", "pred/twin.jpg",
                 "target/a.jpg", "target/sub/b.png", "target/only_target.png", "target/twin.png", "target/b.png"):
        write_rgb(tmp_path / name, rgb)
    matching = match_folders(tmp_path / "pred", tmp_path / "target")
    assert [key for key, _, _ in matching.pairs] == ["a", "sub/b"]
    assert [p.name for p in matching.unmatched_pred] == ["only_pred.png"]
    assert sorted(p.name for p in matching.unmatched_target) == ["b.png", "only_target.png"]
    assert len(matching.problems) == 1 and "twin" in matching.problems[0]


def test_size_mismatch_is_named_and_the_rest_is_measured(tmp_path):
    write_rgb(tmp_path / "pred" / "a.png", np.zeros((32, 32, 3), np.uint8))
    write_rgb(tmp_path / "target" / "a.png", np.zeros((32, 32, 3), np.uint8))
    write_rgb(tmp_path / "pred" / "b.png", np.zeros((32, 40, 3), np.uint8))
    write_rgb(tmp_path / "target" / "b.png", np.zeros((32, 32, 3), np.uint8))
    result = evaluate(tmp_path / "pred", tmp_path / "target", "psnr")
    assert [i["name"] for i in result.images] == ["a"]
    assert len(result.failures) == 1 and "40x32" in result.failures[0] and "b.png" in result.failures[0]


def test_a_border_crop_too_large_for_ssim_keeps_psnr_and_one_too_large_for_every_image_is_a_usage_error(tmp_path):
    rng = np.random.default_rng(0)
    for name, side in (("small", 40), ("large", 80)):
        write_rgb(tmp_path / "pred" / f"{name}.png", rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        write_rgb(tmp_path / "target" / f"{name}.png", rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    result = evaluate(tmp_path / "pred", tmp_path / "target", "psnr,ssim", crop_border=15)  # small: 10x10 left
    small = next(i for i in result.images if i["name"] == "small")
    assert "psnr" in small and "ssim" not in small and result.means["ssim"] == result.images[0]["ssim"]
    assert not result.failures and len(result.warnings) == 1  # measured, but for its SSIM
    assert "smaller than SSIM's 11x11 window" in result.warnings[0]
    cli = runner.invoke(app, ["eval", str(tmp_path / "pred"), str(tmp_path / "target"), "--crop-border", "40"])
    assert cli.exit_code == 2 and "--crop-border 40 leaves nothing of any image" in flat(cli.stderr), cli.output


def test_unknown_metric_suggests_a_name():
    with pytest.raises(ConfigError, match="did you mean lpips"):
        parse_metrics("psnr,lpip")


# ---- FID and KID with a small local feature extractor ------------------------------------------


class TinyFeatures(nn.Module):
    """A fixed random conv net standing in for Inception: uint8 NCHW -> 24 features."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2), nn.ReLU(), nn.Conv2d(12, 24, 3, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with torch.no_grad():
            for param in self.net.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 255.0)


BLUR_LEVELS = (0.0, 0.7, 1.4, 2.8)
NOISE_LEVELS = (0.0, 0.02, 0.05, 0.1)


@pytest.fixture(scope="module")
def crop_sets(tmp_path_factory) -> dict[str, Path]:
    """64 crops of the bundled photos as the targets; blurred and noisy copies at rising strength."""
    root = tmp_path_factory.mktemp("sets")
    train, held_out = photo_paths()
    for i, path in enumerate(sorted(train + held_out)):
        rgb = read_rgb(path)
        for j, crop in enumerate((rgb[:96, :96], rgb[96:, 96:])):
            name = f"{path.stem}_{j}.png"
            write_rgb(root / "target" / name, crop)
            for sigma in BLUR_LEVELS[1:]:
                write_rgb(root / f"blur{sigma}" / name, blur(crop, sigma))
            for sigma in NOISE_LEVELS[1:]:
                write_rgb(root / f"noise{sigma}" / name, add_noise(crop, sigma, 2 * i + j))
    return {"root": root, "target": root / "target"}


def folder(crop_sets, kind: str, sigma: float) -> Path:
    return crop_sets["target"] if sigma == 0 else crop_sets["root"] / f"{kind}{sigma}"


def features_of(path: Path) -> np.ndarray:
    """The extractor run independently: files read by OpenCV, one image at a time."""
    net = TinyFeatures().eval()
    with torch.no_grad():
        rows = [net(torch.from_numpy(read_rgb(p).copy()).permute(2, 0, 1)[None]) for p in sorted(path.glob("*.png"))]
    return torch.cat(rows).double().numpy()


def reference_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():  # a few of the random net's features are always 0
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def reference_kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel over whole sets: KID when the subset is the set."""
    d, m = real.shape[1], len(real)
    kernel = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    k_rr, k_ff, k_rf = kernel(real, real), kernel(fake, fake), kernel(real, fake)
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))  # noqa: E731
    return float(off(k_rr) + off(k_ff) - 2 * k_rf.mean())


@pytest.mark.parametrize("kind,levels", [("blur", BLUR_LEVELS), ("noise", NOISE_LEVELS)])
def test_fid_and_kid_grow_with_the_perturbation(crop_sets, kind, levels):
    fids, kids = [], []
    for sigma in levels:
        result = evaluate(folder(crop_sets, kind, sigma), crop_sets["target"], "fid,kid", feature_extractor=TinyFeatures())
        fids.append(result.means["fid"])
        kids.append(result.means["kid"])
        assert result.counts == {"pred": 64, "target": 64}
    assert fids[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert all(a < b for a, b in zip(kids, kids[1:])), kids


def test_fid_and_kid_match_independent_computations(crop_sets):
    pred = folder(crop_sets, "blur", 1.4)
    result = evaluate(pred, crop_sets["target"], "fid,kid", feature_extractor=TinyFeatures())
    real, fake = features_of(crop_sets["target"]), features_of(pred)
    assert result.means["fid"] == pytest.approx(reference_fid(real, fake), rel=1e-4, abs=1e-8)
    assert result.means["kid"] == pytest.approx(reference_kid(real, fake), rel=1e-4, abs=1e-10)


def test_small_sets_warn_that_fid_is_unreliable(crop_sets):
    result = evaluate(folder(crop_sets, "blur", 0.7), crop_sets["target"], "fid,kid", feature_extractor=TinyFeatures())
    assert any("FID from 64 images" in w and "KID" in w for w in result.warnings)
    assert any("subsets of 64 images" in w for w in result.warnings)


def test_set_metrics_use_unpaired_files_too(crop_sets, tmp_path):
    """CycleGAN outputs have no targets of their own: FID/KID compare whatever the folders hold."""
    pred = tmp_path / "renamed"
    for i, path in enumerate(sorted(folder(crop_sets, "blur", 1.4).glob("*.png"))[:40]):
        write_rgb(pred / f"fake_{i}.png", read_rgb(path))
    result = evaluate(pred, crop_sets["target"], "fid", feature_extractor=TinyFeatures())
    assert result.counts == {"pred": 40, "target": 64} and result.means["fid"] > 0
    assert not result.unmatched_pred  # not a problem for set metrics
    with pytest.raises(ConfigError, match="no output .* has a target"):
        evaluate(pred, crop_sets["target"], "psnr,fid", feature_extractor=TinyFeatures())


# ---- weights ------------------------------------------------------------------------------------


@pytest.fixture
def empty_hub(tmp_path) -> Path:
    """torch's hub cache pointed at an empty folder, as on a machine that never downloaded."""
    hub, before = tmp_path / "hub", torch.hub.get_dir()
    hub.mkdir()
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(before)


def test_missing_weights_are_named_before_any_image_is_read(photos, empty_hub):
    with pytest.raises(ConfigError) as err:
        evaluate(photos["blur"], photos["target"], "psnr,lpips,fid")
    message = str(err.value)
    assert LPIPS_BACKBONES["alex"] in message and INCEPTION_FILE in message
    assert "--weights DIR" in message and str(empty_hub) in message and "psnr,ssim needs no weights" in message


def test_lpips_loads_its_backbone_from_the_weights_folder(photos, empty_hub, tmp_path):
    """A stand-in SqueezeNet backbone (random weights, 5 MB) in --weights: LPIPS runs, without
    the network, and agrees with torchmetrics' LPIPS computed on its own."""
    import torchvision
    from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), weights / LPIPS_BACKBONES["squeeze"])
    result = evaluate(photos["blur"], photos["target"], "lpips", weights_dir=weights, lpips_net="squeeze")
    assert torch.hub.get_dir() == str(empty_hub)  # the hub cache is left as it was
    (empty_hub / "checkpoints").mkdir()
    (empty_hub / "checkpoints" / LPIPS_BACKBONES["squeeze"]).write_bytes((weights / LPIPS_BACKBONES["squeeze"]).read_bytes())
    image = result.images[0]
    pred, target = (torch.from_numpy(read_rgb(Path(image[k])).copy()).permute(2, 0, 1)[None].float() / 255
                    for k in ("pred", "target"))
    expected = learned_perceptual_image_patch_similarity(pred, target, net_type="squeeze", normalize=True)
    assert image["lpips"] == pytest.approx(float(expected), rel=1e-4)
    same = evaluate(photos["target"], photos["target"], "lpips", lpips_net="squeeze")  # found in the hub cache
    assert same.means["lpips"] == pytest.approx(0.0, abs=1e-6)


def test_weights_that_could_run_code_are_refused(photos, empty_hub, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"model": Path("not a tensor")}, weights / INCEPTION_FILE)
    with pytest.raises(ConfigError, match="not a plain file of weights"):
        evaluate(photos["blur"], photos["target"], "fid", weights_dir=weights)


def test_set_metrics_run_through_torch_fidelity_inception(tmp_path, empty_hub, monkeypatch):
    """The real Inception path, end to end, on stand-in random weights put in the hub cache."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    with monkeypatch.context() as patch:  # build a random-weight network to save a stand-in file
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    (empty_hub / "checkpoints").mkdir()
    torch.save(net.state_dict(), empty_hub / "checkpoints" / INCEPTION_FILE)
    rng = np.random.default_rng(0)
    for i in range(2):
        write_rgb(tmp_path / "pred" / f"{i}.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
        write_rgb(tmp_path / "target" / f"{i}.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    # Random weights shrink activations to denormal floats, which the CPU computes many times
    # slower; flushing them to 0 holds for the calling thread (this module runs on one). KID
    # alone: FID's 2048x2048 eigenvalue problem is tested with the small extractor instead.
    torch.set_flush_denormal(True)
    try:
        result = evaluate(tmp_path / "pred", tmp_path / "target", "psnr,kid")
    finally:
        torch.set_flush_denormal(False)  # torch's default
    assert result.counts == {"pairs": 2, "psnr": 2, "pred": 2, "target": 2}
    assert np.isfinite(result.means["kid"]) and any("subsets of 2 images" in w for w in result.warnings)


# ---- the command line -------------------------------------------------------------------------


def test_cli_json_holds_means_and_per_image_values(photos, tmp_path):
    pred = tmp_path / "pred"
    for path in sorted(photos["blur"].glob("*.png")):
        write_rgb(pred / path.name, read_rgb(path))
    write_rgb(pred / "stray <1>.png", np.zeros((16, 16, 3), np.uint8))
    result = runner.invoke(app, ["eval", str(pred), str(photos["target"]), "--json", "--y-channel", "--crop-border", "4"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert set(record["metrics"]) == {"psnr", "ssim"} and len(record["images"]) == 6
    assert record["metrics"]["psnr"] == pytest.approx(np.mean([i["psnr"] for i in record["images"]]))
    assert record["settings"]["channels"] == "Y" and record["settings"]["crop_border"] == 4
    assert [Path(p).name for p in record["unmatched"]["pred"]] == ["stray <1>.png"]
    assert "stray <1>.png" in flat(result.stderr) and "without a target" in flat(result.stderr)


def test_cli_exit_codes(photos, tmp_path, empty_hub):
    target = str(photos["target"])
    assert runner.invoke(app, ["eval", str(tmp_path / "missing"), target]).exit_code == 2
    unknown = runner.invoke(app, ["eval", str(photos["blur"]), target, "--metrics", "psnr,fdi"])
    assert unknown.exit_code == 2 and "did you mean fid" in flat(unknown.stderr)
    no_weights = runner.invoke(app, ["eval", str(photos["blur"]), target, "--metrics", "lpips"])
    assert no_weights.exit_code == 2 and LPIPS_BACKBONES["alex"] in no_weights.stderr.replace("\n", "")
    write_rgb(tmp_path / "small" / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_rgb(tmp_path / "small_target" / "a.png", np.zeros((8, 8, 3), np.uint8))
    too_small = runner.invoke(app, ["eval", str(tmp_path / "small"), str(tmp_path / "small_target")])
    # its PSNR is measured and printed; the SSIM asked for is measured on no image: exit 1
    assert too_small.exit_code == 1 and "8x8 px is smaller than SSIM's 11x11 window" in flat(too_small.stderr)
    assert "SSIM: no image could be measured" in flat(too_small.stderr)
    assert "PSNR on RGB" in too_small.stdout and "ssim" not in too_small.stdout  # what was measured
    write_rgb(tmp_path / "small" / "b.png", np.zeros((16, 16, 3), np.uint8))
    write_rgb(tmp_path / "small_target" / "b.png", np.zeros((16, 16, 3), np.uint8))
    one_of_two = runner.invoke(app, ["eval", str(tmp_path / "small"), str(tmp_path / "small_target")])
    assert one_of_two.exit_code == 0 and "(on 1 of the 2 pairs)" in one_of_two.stdout  # not of the 2 pairs
    human = runner.invoke(app, ["eval", str(photos["noise"]), target])  # `eval P T > metrics.txt` holds the means
    assert human.exit_code == 0 and "PSNR/SSIM on RGB" in human.stdout and "psnr" in human.stdout
    assert "psnr" not in human.stderr
