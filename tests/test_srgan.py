"""Super-resolution training end to end: the pixel-loss stage learns (beats bicubic on held-out
photographs), the GAN stage runs and moves the outputs, the perceptual loss loads local VGG19
weights or says how to get them, --init, exact resume, and the CLI through translate."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import vgg19
from typer.testing import CliRunner

from img2img import api
from img2img.cli import app
from img2img.config import ConfigError, make_config
from img2img.data.datasets import DataError
from img2img.data.images import read_image
from img2img.demo import photo_paths
from img2img.gan import checkpoint
from img2img.gan.checkpoint import load_generator
from img2img.gan.perceptual import PerceptualLoss, build_perceptual, vgg19_layer_names
from helpers import CrashAt, flat

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """The bundled 192 px photographs: 24 for training, the 8 crops of two others held out."""
    root = tmp_path_factory.mktemp("sr_photos")
    train, held_out = photo_paths()
    for folder, paths in (("train", train), ("val", held_out)):
        (root / folder).mkdir()
        for path in paths:
            shutil.copy(path, root / folder / path.name)
    return {"train": root / "train", "val": root / "val"}


def tiny(photos, out, **overrides):
    values = {"hr": str(photos["train"]), "val_hr": str(photos["val"]), "out": str(out), "scale": 2,
              "size": 32, "netG": "msrresnet", "ngf": 8, "n_blocks": 1, "netD": "unet", "ndf": 4,
              "batch_size": 2, "steps": 6, "pretrain_steps": 3, "perceptual": "none", "ema": 0,
              "lr": 1e-3, "workers": 0, "save_every": 3, "log_every": 1, "seed": 1}
    return make_config("srgan", {**values, **overrides})


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def train_records(run: Path) -> list[dict]:
    """The per-step records (not validation or best-checkpoint ones)."""
    return [r for r in records(run) if "img_per_s" in r]


def upscale(run: Path, image: torch.Tensor) -> torch.Tensor:
    module, _ = load_generator(run)
    with torch.no_grad():
        return module(image[None])[0]


@pytest.mark.slow
@pytest.mark.parametrize("netG, ngf, steps", [
    ("msrresnet", 32, 300),
    ("srvgg", 32, 300),
    # RRDBNet starts as a bilinear upscale (its init) and gains about 0.1 dB per 100 steps here:
    # +0.08 dB after 300 steps, +0.28 at step 400 of a 600-step run (2-core CPU, 8 wide).
    ("rrdbnet", 8, 400),
])
def test_pixel_loss_training_beats_bicubic_on_held_out_photographs(photos, tmp_path, netG, ngf, steps, one_thread):
    """Each generator at its published depth (small widths), x4, the default learning rate and
    EMA, a pixel-loss run of a few hundred steps against the bicubic upscale of the same LR images, on
    photographs it never saw."""
    cfg = make_config("srgan", {"hr": str(photos["train"]), "val_hr": str(photos["val"]), "out": str(tmp_path / "run"),
                                "netG": netG, "ngf": ngf, "size": 48, "batch_size": 8, "steps": steps,
                                "pretrain_steps": steps, "workers": 0, "device": "cpu",
                                **({"grow_ch": ngf // 2} if netG == "rrdbnet" else {})})
    start = time.process_time()
    run = api.train(cfg)
    seconds = time.process_time() - start
    final = [r["val"] for r in records(run) if "val" in r][-1]
    gain = final["psnr_y"] - final["psnr_y_bicubic"]
    print(f"{netG}: held-out PSNR-Y {final['psnr_y']:.2f} dB vs bicubic {final['psnr_y_bicubic']:.2f} dB "
          f"({gain:+.2f} dB); SSIM-Y {final['ssim_y']:.4f} vs {final['ssim_y_bicubic']:.4f}; {seconds:.0f} s CPU")
    assert gain > 0, final
    state, _ = checkpoint.load_latest_state(run / "checkpoints")
    assert set(state["nets"]) == {"G"}  # a pixel-loss-only run builds no discriminator


def test_gan_stage_runs_after_pretraining_and_moves_the_outputs(photos, tmp_path):
    # A strong GAN weight and a constant LR so that three GAN steps visibly move the outputs.
    settings = {"lambda_gan": 1.0, "decay_start": 1.0, "val_every": 6}
    pretrained = api.train(tiny(photos, tmp_path / "pre", steps=3, **settings))
    with_gan = api.train(tiny(photos, tmp_path / "gan", **settings))
    pixel_only = api.train(tiny(photos, tmp_path / "pixel", pretrain_steps=6, **settings))

    log = train_records(with_gan)
    assert all("loss_D" not in r and "loss_G_pixel" in r for r in log[:3])
    assert all({"loss_D", "D_real", "D_fake", "loss_G_GAN"} <= r.keys() for r in log[3:])
    assert 0 <= log[-1]["D_real"] <= 1

    image = read_image(sorted(photos["val"].iterdir())[0]).rgb[:, :64, :64]
    before, after, more_pixel = (upscale(run, image) for run in (pretrained, with_gan, pixel_only))
    assert after.shape == (3, 128, 128)
    assert float((after - before).abs().mean()) > 1e-3
    assert float((after - more_pixel).abs().mean()) > 1e-4  # the GAN loss, not just 3 more steps


def test_validation_reports_the_bicubic_baseline_and_samples_show_three_columns(photos, tmp_path):
    run = api.train(tiny(photos, tmp_path / "run", steps=3, val_every=3))
    val = [r for r in records(run) if "val" in r]
    assert [r["step"] for r in val] == [3]
    assert set(val[0]["val"]) == {"psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic"}
    assert 20 < val[0]["val"]["psnr_y_bicubic"] < 60
    assert (run / "checkpoints" / "best_generator.safetensors").is_file()  # picked by psnr_y
    grid = read_image(run / "samples" / "step_00000003.png")
    assert grid.size == (4 * 32, 3 * 32)  # 4 rows of LR (nearest) | SR | HR
    _, spec = load_generator(run)
    assert (spec.pixel_range, spec.scale, spec.task, spec.arch) == ("0,1", 2, "srgan", "msrresnet")


def test_vgg_discriminator_relativistic_loss_and_realesrgan_degradation(photos, tmp_path):
    # 96 px HR patches, SRGAN's own size: the VGG-style D is not limited to BasicSR's 128 and 256.
    cfg = tiny(photos, tmp_path / "run", size=96, scale=4, netD="vgg", gan_loss="ragan", pretrain_steps=0,
               steps=2, degradation="realesrgan", netG="srvgg", n_blocks=2)
    run = api.train(cfg)
    assert {"loss_D", "D_real", "D_fake"} <= train_records(run)[-1].keys()
    assert upscale(run, torch.rand(3, 20, 24)).shape == (3, 80, 96)


def test_bad_settings_are_refused_with_a_suggestion(photos, tmp_path):
    cases = [({"netG": "rrdbnet", "scale": 3, "size": 48}, "x2 or x4"),
             ({"gan_loss": "wgangp"}, "choose vanilla"),
             ({"netG": "unet_256"}, "choose msrresnet"),
             ({"size": 33}, "multiple of --scale 2")]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            api.train(tiny(photos, tmp_path / "run", **overrides))


@pytest.mark.parametrize("length", [{"steps": 2}, {"steps": None, "epochs": 1}])
def test_a_pixel_loss_only_run_neither_builds_nor_checks_a_discriminator(photos, tmp_path, monkeypatch, length):
    # The U-Net D needs patches of a multiple of 8 px: 36 px cannot feed it, but a pixel-only run needs no D,
    # nor VGG19 weights, also where --epochs makes its length known only after the data scan.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    run = api.train(tiny(photos, tmp_path / "run", size=36, pretrain_steps=100, perceptual="vgg19", **length))
    state, _ = checkpoint.load_latest_state(run / "checkpoints")
    assert set(state["nets"]) == {"G"} and set(state["optimizers"]) == {"G_pixel"}
    with pytest.raises(ConfigError, match="--netD unet needs --size to be a multiple of 8"):
        api.train(tiny(photos, tmp_path / "gan", size=36, steps=3, pretrain_steps=2))
    with pytest.raises(ConfigError, match="--netD unet needs --size to be a multiple of 8"):  # epochs past the pixel stage
        api.train(tiny(photos, tmp_path / "gan_epochs", size=36, steps=None, epochs=3, pretrain_steps=2))
    pixel = api.train(tiny(photos, tmp_path / "pixel", steps=2, pretrain_steps=2))
    with pytest.raises(ConfigError, match=f"with --init {pixel} and another --out"):  # no D to go on with
        api.train(tiny(photos, pixel, steps=4, pretrain_steps=2), resume=True)


def test_a_validation_image_too_small_for_ssim_is_named_before_training(photos, tmp_path):
    import cv2
    import numpy as np

    val = tmp_path / "val"
    val.mkdir()
    cv2.imwrite(str(val / "tiny.png"), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(DataError, match="tiny.png is 20x20, smaller than the 23 px needed to measure SSIM at x2"):
        api.train(tiny(photos, tmp_path / "run", val_hr=str(val)))
    assert not (tmp_path / "run" / "log.jsonl").exists()


# ---- perceptual loss ---------------------------------------------------------------------


def random_vgg19_file(path: Path, layers: int = 9) -> Path:
    """A randomly initialised VGG19's first layers in torchvision's key layout."""
    features = vgg19(weights=None).features[:layers]
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_perceptual_loss_with_a_local_weights_file(photos, tmp_path):
    weights = random_vgg19_file(tmp_path / "vgg.pth")
    cfg = tiny(photos, tmp_path / "run", perceptual="vgg19", perceptual_weights=str(weights),
               perceptual_layers="conv1_2:0.1,conv2_2:1", pretrain_steps=1, steps=3)
    run = api.train(cfg)
    log = train_records(run)
    assert "loss_G_perceptual" not in log[0] and log[-1]["loss_G_perceptual"] > 0


def test_perceptual_network_is_frozen_and_takes_features_before_relu(tmp_path):
    loss = build_perceptual(str(random_vgg19_file(tmp_path / "vgg.pth")), "conv2_2:1")
    assert vgg19_layer_names()[34] == "conv5_4" and vgg19_layer_names()[7] == "conv2_2"
    assert isinstance(loss, PerceptualLoss) and len(loss.features) == 8  # conv1_1 .. conv2_2, no ReLU after
    assert all(not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    value = loss(x, torch.rand(1, 3, 32, 32))
    value.backward()
    assert x.grad is not None and float(loss(x, x.detach())) == 0.0
    assert bool((loss.extract(x)[7] < 0).any())  # pre-activation features keep negative values


def test_missing_vgg_weights_say_where_to_put_them(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        api.train(tiny(photos, tmp_path / "run", perceptual="vgg19", pretrain_steps=0, steps=1))
    text = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in text
    assert "--perceptual-weights" in text and "--perceptual none" in text
    # A pixel-loss-only run never uses the perceptual loss, so it needs no weights.
    api.train(tiny(photos, tmp_path / "pixel", perceptual="vgg19", pretrain_steps=2, steps=2))


def test_wrong_weights_file_is_named(photos, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="bad.pth"):
        build_perceptual(str(bad), "conv5_4:1")
    with pytest.raises(ConfigError, match="unknown VGG19 layer"):
        build_perceptual(str(bad), "conv9_9:1")


# ---- --init and resume -------------------------------------------------------------------


def test_init_starts_from_an_earlier_generator_of_the_same_architecture(photos, tmp_path):
    first = api.train(tiny(photos, tmp_path / "first", steps=2, pretrain_steps=2))
    # lr 0: the weights stay what --init loaded.
    second = api.train(tiny(photos, tmp_path / "second", init=str(first), pretrain_lr=0.0, steps=1, pretrain_steps=1))
    expected, got = load_generator(first)[0].state_dict(), load_generator(second)[0].state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    basicsr = tmp_path / "net_g.pth"  # the BasicSR layout: {"params_ema": ..., "params": ...}
    torch.save({"params_ema": expected, "params": expected}, basicsr)
    third = api.train(tiny(photos, tmp_path / "third", init=str(basicsr), pretrain_lr=0.0, steps=1, pretrain_steps=1))
    assert torch.equal(load_generator(third)[0].state_dict()["conv_first.weight"], expected["conv_first.weight"])

    with pytest.raises(ConfigError, match="--netG msrresnet --ngf 8 --n-blocks 1 --scale 2"):
        api.train(tiny(photos, tmp_path / "wide", init=str(first), ngf=16))


def test_init_takes_a_basicsr_rrdbnet_of_any_width_and_growth(photos, tmp_path):
    """BasicSR keeps 32 growth channels at any num_feat; the growth was tied to half of --ngf."""
    from img2img.nets import registry

    hparams = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 16, "num_block": 1, "num_grow_ch": 8, "scale": 2}
    torch.save({"params_ema": registry.build("rrdbnet", **hparams).state_dict()}, tmp_path / "net_g.pth")
    rrdb = {"netG": "rrdbnet", "ngf": 16, "n_blocks": 1, "init": str(tmp_path / "net_g.pth"), "pretrain_lr": 0.0,
            "steps": 1, "pretrain_steps": 1}
    with pytest.raises(ConfigError, match="pass --netG rrdbnet --ngf 16 --n-blocks 1 --grow-ch 8 --scale 2"):
        api.train(tiny(photos, tmp_path / "default_growth", **rrdb))
    run = api.train(tiny(photos, tmp_path / "growth_8", **rrdb, grow_ch=8))
    assert load_generator(run)[1].hparams["num_grow_ch"] == 8


@pytest.mark.parametrize("source", ["srvgg with relu", "gray msrresnet", "spandrel SPAN"])
def test_init_from_a_generator_no_flags_build_says_so_in_one_line(photos, tmp_path, source):
    from img2img.nets import registry

    path = tmp_path / "g.pth"
    if source == "spandrel SPAN":
        span = pytest.importorskip("spandrel.architectures.SPAN", reason="the spandrel extra is not installed")
        torch.save(span.SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=4).state_dict(), path)
    elif source == "gray msrresnet":
        torch.save(registry.build("msrresnet", num_in_ch=1, num_out_ch=1, num_feat=8, num_block=1, upscale=2).state_dict(),
                   path)
    else:
        torch.save(registry.build("srvgg", num_feat=8, num_conv=2, upscale=2, act_type="relu").state_dict(), path)
    result = runner.invoke(app, ["train", "srgan", "--hr", str(photos["train"]), "--init", str(path), "--scale", "2",
                                 "--netG", "srvgg", "--ngf", "8", "--n-blocks", "2", "--size", "32", "--steps", "1",
                                 "--pretrain-steps", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no flags of train srgan build that generator" in flat(result.stderr), result.output
    assert "Traceback" not in result.output and "pass --netG" not in result.stderr


def test_resume_across_the_stage_boundary_gives_the_same_weights(photos, tmp_path):
    overrides = {"ema": 0.9, "degradation": "realesrgan", "save_every": 2}
    straight = api.train(tiny(photos, tmp_path / "straight", **overrides))
    interrupted = tiny(photos, tmp_path / "resumed", **overrides)
    with pytest.raises(KeyboardInterrupt):
        api.train(interrupted, reporter=CrashAt(5))  # after the step-4 checkpoint, in the GAN stage
    api.train(interrupted, resume=True)
    expected, got = load_generator(straight)[0].state_dict(), load_generator(tmp_path / "resumed")[0].state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ---- command line ------------------------------------------------------------------------


def test_cli_trains_then_translates_at_input_size_times_scale(photos, tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:  # what a user's terminal would show
        warnings.simplefilter("always")
        result = runner.invoke(app, [
            "train", "srgan", "--hr", str(photos["train"]), "--scale", "2", "--size", "32", "--netG", "srvgg",
            "--ngf", "8", "--n-blocks", "2", "--netD", "unet", "--ndf", "4", "--pretrain-steps", "1", "--steps", "2",
            "--batch-size", "2", "--perceptual", "none", "--ema", "0.5", "--learning-rate", "1e-3", "--workers", "0",
            "--save-every", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "first 4 training images" in " ".join(result.output.split())  # no --val-hr: said, not hidden
    # e.g. torch's about the GAN stage's scheduler stepping before its optimizer's first step
    assert not caught, [str(w.message) for w in caught]
    assert any("val" in r for r in records(out))

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(sorted(photos["val"].iterdir())[0], inputs / "photo.jpg")
    result = runner.invoke(app, ["translate", "--model", str(out), str(inputs), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert read_image(tmp_path / "out" / "photo.jpg").size == (384, 384)

    result = runner.invoke(app, ["info", str(out), "--json"])
    record = json.loads(result.stdout)
    assert (record["arch"], record["scale"], record["pixel_range"], record["task"]) == ("srvgg", 2, "0,1", "srgan")


def test_cli_trains_on_explicit_lr_folders(photos, tmp_path):
    import cv2

    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for path in photos["train"].iterdir():
        cv2.imwrite(str(lr_dir / f"{path.stem}.png"), cv2.resize(cv2.imread(str(path)), (64, 64),
                                                                 interpolation=cv2.INTER_AREA))
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "srgan", "--hr", str(photos["train"]), "--lr", str(lr_dir), "--scale", "3", "--size", "48",
        "--ngf", "8", "--n-blocks", "1", "--netD", "unet", "--ndf", "4", "--steps", "1", "--batch-size", "2",
        "--perceptual", "none", "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    _, spec = load_generator(out)
    assert spec.scale == 3 and spec.config["lr_dir"] == str(lr_dir) and spec.config["lr"] == 1e-4

    result = runner.invoke(app, ["train", "srgan", "--hr", str(photos["train"]), "--lr", str(lr_dir), "--scale", "2",
                                 "--size", "32", "--netD", "unet", "--out", str(tmp_path / "bad"), "--perceptual", "none"])
    assert result.exit_code == 1 and "must be 96x96" in " ".join(result.output.split())


@pytest.mark.parametrize("key", [(slice(None), slice(None)), (slice(3, 17), slice(5, 40)), (slice(-9, None), slice(None, -4)),
                                 (slice(10, 500), slice(0, 7)), (slice(20, 10), slice(2, 3))])
def test_lazy_windows_of_a_decoded_photo_convert_to_what_the_whole_photo_gives(photos, key):
    from img2img.data.images import decode_image
    from img2img.data.sr_data import Lazy

    path = sorted(photos["train"].iterdir())[0]
    whole = read_image(path).rgb.permute(1, 2, 0).numpy()
    lazy = Lazy(decode_image(path))
    assert lazy.shape == whole.shape
    outer = (slice(2, -3), slice(4, None))  # a window of a window, as load_item's trim then a crop make
    assert np.array_equal(np.asarray(lazy[key]), whole[key])
    assert np.array_equal(np.asarray(lazy[outer][key]), whole[outer][key])
    assert lazy[outer][key].shape == whole[outer][key].shape


def test_each_stage_decays_its_learning_rate_over_its_own_steps():
    """A GAN stage after a pixel stage of half the run or more started already decaying and never
    trained at --lr; BasicSR trains it as a run of its own."""
    from img2img.gan.loop import Trainer
    from img2img.progress import Silent
    from img2img.tasks import TASKS

    cfg = make_config("srgan", {"steps": 20, "pretrain_steps": 15, "scale": 2, "size": 16, "netG": "srvgg",
                                "n_blocks": 1, "ngf": 4, "ndf": 4, "netD": "unet", "perceptual": "none", "device": "cpu"})
    trainer = Trainer(TASKS["srgan"](cfg, torch.device("cpu"), Silent(), data=False), cfg, torch.device("cpu"),
                      total_steps=20, reporter=Silent())
    pixel, gan = trainer.schedulers["G_pixel"].lr_lambdas[0], trainer.schedulers["G"].lr_lambdas[0]
    assert [pixel(step) for step in (0, 7, 11, 18)] == [1.0, 1.0, 0.5, 0.0]  # constant for 7 of 15, then to 0 (not below)
    assert [gan(step) for step in (15, 17, 18)] == pytest.approx([1.0, 1.0, 2 / 3])  # constant for 2 of 5, then to 0


def test_a_pixel_stage_longer_than_the_run_decays_over_the_run():
    """--recipe srresnet_x4 (a million pixel steps) --steps 20 ended at full LR, never decaying."""
    from img2img.gan.loop import Trainer
    from img2img.progress import Silent
    from img2img.tasks import TASKS

    cfg = make_config("srgan", {"steps": 20, "pretrain_steps": 1_000_000, "scale": 2, "size": 16, "netG": "srvgg",
                                "n_blocks": 1, "ngf": 4, "device": "cpu"})
    trainer = Trainer(TASKS["srgan"](cfg, torch.device("cpu"), Silent(), data=False), cfg, torch.device("cpu"),
                      total_steps=20, reporter=Silent())
    pixel = trainer.schedulers["G_pixel"].lr_lambdas[0]
    assert [pixel(step) for step in (0, 9, 15, 20)] == pytest.approx([1.0, 1.0, 0.5, 0.0])


def test_the_gan_stage_updates_g_before_d_as_basicsr():
    """BasicSR's SRGAN/ESRGAN/Real-ESRGAN models step G against the D of the last step, then D
    on this step's output (it matters for the relativistic losses, which see D(real) in G's loss)."""
    from img2img.progress import Silent
    from img2img.tasks import TASKS

    cfg = make_config("srgan", {"steps": 4, "pretrain_steps": 2, "scale": 2, "size": 16, "netG": "srvgg",
                                "n_blocks": 1, "ngf": 4, "ndf": 4, "netD": "unet", "perceptual": "none",
                                "r1": 0.1, "device": "cpu"})
    task = TASKS["srgan"](cfg, torch.device("cpu"), Silent(), data=False)
    assert [phase.name for phase in task.phases if phase.active(2)][:2] == ["G", "D"]
