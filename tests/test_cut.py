"""CUT / FastCUT: exact resume, the command line (validation, samples, export, translate) and
settings that cannot work. How well it learns is measured by benchmarks/unpaired.py (see
benchmarks/RESULTS.md): at the CPU budgets a test can afford it does not learn the colour
mapping CycleGAN's learning test uses, so no learning test asserts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from img2img import api
from img2img.cli import app
from img2img.config import ConfigError, make_config
from img2img.data.images import Image, read_image, write_image
from img2img.gan import checkpoint
from img2img.progress import Silent
from img2img.tasks.cut import CUT
from helpers import CrashAt, flat, one_thread  # noqa: F401  (a fixture)
from test_cyclegan import colour_map, unpaired, write_domain  # noqa: F401  (the shared task)

runner = CliRunner()
TINY = {"size": 32, "load_size": 36, "netG": "resnet_2blocks", "ngf": 4, "ndf": 4, "num_patches": 16, "netf_nc": 8,
        "workers": 0, "device": "cpu", "seed": 3}


@pytest.mark.parametrize("task", ["cut", "cyclegan"])
def test_a_domain_with_fewer_images_than_the_sample_grid_shows(unpaired, tmp_path, task):
    import shutil

    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(unpaired["b"].iterdir())[:2]:
        shutil.copy(path, few / path.name)
    values = {"a": str(unpaired["a"]), "b": str(few), "steps": 2, "sample_every": 1, "out": str(tmp_path / "run"),
              **({k: v for k, v in TINY.items() if k in ("size", "load_size", "ngf", "ndf", "workers", "device")}),
              "netG": "resnet_2blocks"}
    api.train(make_config(task, values))
    grid = read_image(tmp_path / "run" / "samples" / "step_00000002.png")
    if task == "cut":  # a row per sample, as many as the smaller domain has
        assert grid.size[0] == 2 * 32


def test_resume_after_a_crash_gives_the_same_networks_as_a_straight_run(unpaired, tmp_path, one_thread):
    # FastCUT's flips, the patch draws, rpgan with lazy R1/R2 and the EMA all take part.
    values = {"a": str(unpaired["a"]), "b": str(unpaired["b"]), "steps": 6, "batch_size": 2, "save_every": 3,
              "log_every": 1, "mode": "fastcut", "gan_loss": "rpgan", "r1": 0.1, "r2": 0.1, "reg_every": 2, "ema": 0.9,
              **TINY}
    api.train(make_config("cut", {**values, "out": str(tmp_path / "straight")}))
    interrupted = make_config("cut", {**values, "out": str(tmp_path / "resumed")})
    with pytest.raises(KeyboardInterrupt):
        api.train(interrupted, reporter=CrashAt(5))  # dies after the step-3 checkpoint
    api.train(interrupted, resume=True)
    expected, _ = checkpoint.load_latest_state(tmp_path / "straight" / "checkpoints")
    got, _ = checkpoint.load_latest_state(tmp_path / "resumed" / "checkpoints")
    assert expected["step"] == got["step"] == 6 and set(expected["nets"]) == {"G", "F", "D"}
    for group in ("nets", "ema"):
        for net, weights in expected[group].items():
            for key, value in weights.items():
                assert torch.equal(value, got[group][net][key]), f"{group} {net}.{key}"
    records = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    losses = {key for r in records for key in r}
    assert {"loss_NCE", "loss_G_GAN", "D_r1", "D_r2"} <= losses and "loss_NCE_Y" not in losses  # FastCUT: no identity


def test_the_heads_are_built_from_the_generator_widths_before_any_data():
    cfg = make_config("cut", {**TINY, "nce_layers": "0,4,8", "netf_nc": 16})
    torch.manual_seed(0)
    first = CUT(cfg, torch.device("cpu"), Silent(), data=False)
    torch.manual_seed(0)
    second = CUT(cfg, torch.device("cpu"), Silent(), data=False)
    heads = first.nets["F"].state_dict()
    assert [tuple(heads[f"mlp_{i}.0.weight"].shape) for i in range(3)] == [(16, 3), (16, 8), (16, 16)]
    assert all(torch.equal(v, second.nets["F"].state_dict()[k]) for k, v in heads.items())  # same seed, same heads
    assert [p.name for p in first.phases] == ["D", "G"] and first.phases[1].nets == ("G", "F")


@pytest.mark.parametrize("setting, message", [
    ({"netG": "unet_256"}, "ResNet generator"),
    ({"mode": "slowcut"}, "--mode"),
    ({"nce_layers": "0,4,99"}, "--nce-layers"),
    ({"nce_layers": "a,b"}, "--nce-layers"),
    ({"gan_loss": "wgan"}, "--gan-loss"),
    ({"r1": -1.0}, "--r1"),
])
def test_settings_that_cannot_work_are_refused_with_a_hint(setting, message):
    with pytest.raises(ConfigError, match=message):
        CUT(make_config("cut", {**TINY, **setting}), torch.device("cpu"), Silent(), data=False)


@pytest.fixture(scope="module")
def held_out(unpaired, tmp_path_factory) -> dict[str, Path]:
    """Held-out photographs with their known translation (B = colour_map(A)) as targets."""
    from img2img.demo import photo_paths

    root = tmp_path_factory.mktemp("held_out")
    _, test = photo_paths()
    write_domain(root / "A", test[:4], 32)
    write_domain(root / "B", test[:4], 32, colour_map)
    return {"a": root / "A", "b": root / "B"}


def test_command_line_run_validates_samples_exports_and_translates(unpaired, held_out, tmp_path):
    out = tmp_path / "run"
    args = ["train", "cut", "--a", str(unpaired["a"]), "--b", str(unpaired["b"]), "--out", str(out), "--steps", "2",
            "--save-every", "2", "--val-a", str(held_out["a"]), "--val-b", str(held_out["b"]), "--size", "32",
            "--load-size", "36", "--netG", "resnet_2blocks", "--ngf", "4", "--ndf", "4", "--num-patches", "16",
            "--netf-nc", "8", "--workers", "0", "--device", "cpu", "--ema", "0.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = next(r["val"] for r in records if "val" in r)
    assert val.keys() == {"val_change", "val_l1", "val_l1_identity"} and 0 < val["val_l1_identity"] < 1
    assert (out / "checkpoints" / "best_generator.safetensors").is_file()  # picked by val_l1
    assert read_image(out / "samples" / "step_00000002.png").size == (3 * 32, 4 * 32)  # 3 rows: A | G(A) | B | G(B)

    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert info["arch"] == "cut_resnet" and info["task"] == "cut" and info["step"] == 2
    write_image(tmp_path / "in" / "odd.png", Image(rgb=torch.rand(3, 27, 41), alpha=None, gray=False, bits=8))
    translated = runner.invoke(app, ["translate", "--model", str(out), str(tmp_path / "in"), str(tmp_path / "out")])
    assert translated.exit_code == 0, translated.output
    assert read_image(tmp_path / "out" / "odd.png").size == (27, 41)

    refused = runner.invoke(app, [*args[:8], "--out", str(tmp_path / "bad"), "--netG", "unet_128"])
    assert refused.exit_code == 2 and "ResNet generator" in flat(refused.output)


@pytest.mark.parametrize("mode", ["cut", "fastcut"])
@pytest.mark.parametrize("given", [{}, {"lambda_nce": 2.0, "nce_idt": False, "flip_equivariance": True}])
def test_the_saved_config_holds_what_the_mode_decided(tmp_path, mode, given):
    """config.yaml says what ran: null for the mode's settings said nothing."""
    from img2img.config import load_config, save_config
    from img2img.tasks.cut import MODES

    cfg = make_config("cut", {**TINY, "mode": mode, **given})
    save_config(cfg, tmp_path / "config.yaml")
    saved = load_config(tmp_path / "config.yaml")
    for key, default in MODES[mode].items():
        assert getattr(saved, key) == given.get(key, default)
