"""Recipes and --set overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from img2img import recipes
from img2img.cli import app
from img2img.config import ConfigError, make_config, parse_overrides
from img2img.progress import Silent
from img2img.tasks import TASKS
from img2img.tasks.common import load_size

runner = CliRunner()
EXPECTED = {"horse2zebra", "monet2photo", "summer2winter_yosemite", "facades", "maps", "edges2shoes", "cityscapes",
            "horse2zebra_cut", "horse2zebra_fastcut",
            "srresnet_x4", "srgan_x4", "esrgan_x4", "realesrgan_x4"}


def test_every_classic_setup_has_a_recipe():
    assert EXPECTED <= set(recipes.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_recipe_parses_and_builds_its_networks_at_tiny_size(name, monkeypatch):
    task, values = recipes.load(name)
    assert recipes.summary(name) and "data:" in recipes.text(name)
    # The VGG-style discriminator takes 128 px patches only (as BasicSR's).
    tiny = {"ngf": 4, "ndf": 4, "size": 128, "perceptual": "none", "n_blocks": 1} if task == "srgan" else {"ngf": 4, "ndf": 4, "size": 64}
    cfg = make_config(task, tiny, values)
    built = TASKS[task](cfg, torch.device("cpu"), Silent(), data=False)
    assert built.nets and built.phases
    for key, value in values.items():
        if key not in tiny:
            assert getattr(cfg, key) == value, key
    if task != "srgan":  # the reference's resize before the crop: 286 for 256, and in step with a smaller --size
        assert load_size(make_config(task, {}, values)) == 286 and load_size(cfg) == 72


def test_overrides_are_typed_and_checked():
    assert parse_overrides(["lambda_l1=50", "lr=2e-4", "flip=false", "load_size=null"]) == {
        "lambda_l1": 50.0, "lr": 2e-4, "flip": False, "load_size": None}
    with pytest.raises(ConfigError, match="did you mean 'lambda_l1'"):
        parse_overrides(["lamda_l1=3"])
    with pytest.raises(ConfigError, match="takes an int"):
        parse_overrides(["steps=many"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])


def test_an_unknown_recipe_gets_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'facades'"):
        recipes.load("facdes")


def test_recipes_command_lists_and_prints(tmp_path):
    listing = runner.invoke(app, ["recipes"])
    assert listing.exit_code == 0 and all(name in listing.stdout for name in EXPECTED)
    one = runner.invoke(app, ["recipes", "horse2zebra"])
    assert yaml.safe_load(one.stdout)["task"] == "cyclegan"


def test_train_with_a_recipe_and_overrides_saves_the_resolved_config(aligned_photos, tmp_path):
    result = runner.invoke(app, ["train", "pix2pix", "--recipe", "facades", "--data", str(aligned_photos),
                                 "--out", str(tmp_path / "run"), "--steps", "1", "--workers", "0",
                                 "--set", "ngf=4", "--set", "ndf=4", "--set", "size=32", "--set", "lambda_l1=50"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["direction"] == "BtoA" and saved["lambda_l1"] == 50.0 and saved["ngf"] == 4 and saved["steps"] == 1


def test_a_recipe_of_another_task_is_refused(tmp_path):
    result = runner.invoke(app, ["train", "pix2pix", "--recipe", "horse2zebra", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "train cyclegan" in result.stderr


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_users_recipe_may_leave_the_task_to_the_command(task, tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("steps: 3\n")
    assert recipes.load(str(own), task) == (task, {"steps": 3})
    with pytest.raises(ConfigError, match="with the 'task'") as refused:  # no command to take it from
        recipes.load(str(own))
    assert all(name in str(refused.value) for name in TASKS)  # every family, the next one too


@pytest.mark.parametrize("text, said", [("", "the recipe holds no settings"), ("# to be filled in\n", "the recipe holds no settings"),
                                         ("{}\n", "the recipe holds no settings"),
                                         ("task: pix2pix\n", "the recipe holds no settings"),
                                         ("task: pix2pix\nngf: 8\nsteps: 3\nngf: 16\n",
                                          "'ngf' is given twice, on lines 2 and 4")])
def test_an_empty_recipe_or_one_with_a_key_twice_is_refused_not_half_used(tmp_path, text, said):
    own = tmp_path / "mine.yaml"
    own.write_text(text)
    with pytest.raises(ConfigError, match=f"mine.yaml: {said}$"):
        recipes.load(str(own), "pix2pix")
    result = runner.invoke(app, ["train", "pix2pix", "--recipe", str(own), "--data", str(tmp_path)])
    assert result.exit_code == 2 and said in result.stderr and not (tmp_path / "runs").exists()


def test_a_recipe_with_both_steps_and_epochs_is_refused_as_the_flags_are(tmp_path):
    own = tmp_path / "both.yaml"
    own.write_text("task: pix2pix\nsteps: 5\nepochs: 3\n")
    with pytest.raises(ConfigError, match="both.yaml: steps and epochs both given"):
        recipes.load(str(own))


@pytest.mark.parametrize("recipe", ["horse2zebra_cut", "horse2zebra_fastcut"])
@pytest.mark.parametrize("mode", ["cut", "fastcut"])
def test_mode_given_with_a_cut_recipe_brings_its_own_settings(recipe, mode):
    from img2img.tasks.cut import MODES

    cfg = make_config("cut", {"mode": mode}, recipes.load(recipe)[1])
    assert {key: getattr(cfg, key) for key in MODES[mode]} == MODES[mode]


def test_every_reference_option_spelt_otherwise_is_answered_and_in_the_readme():
    from img2img.config import REFERENCE_OPTIONS, reference_row

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in REFERENCE_OPTIONS:
        assert f"| `{name}` | {reference_row(name)} |" in readme, name
        for task in TASKS:  # each answered in the flags of the task at hand, or said to have none there
            with pytest.raises(ConfigError, match=f"for the reference code's {name}: ") as answered:
                make_config(task, {name: 1})
            flags = re.findall(r"--[a-z][\w-]*", str(answered.value).split("reference code's")[1])
            offered = _flags(task)
            assert all(flag in offered for flag in flags if flag not in ("--set", "--resume", "--nproc-per-node")), \
                (task, name, flags)
    with pytest.raises(ConfigError) as far:  # a name far from every setting gets no guess
        make_config("pix2pix", {"preproces_mode": 1})
    assert "did you mean" not in str(far.value)


def _flags(task: str) -> str:
    return runner.invoke(app, ["train", task, "--help"], env={"COLUMNS": "200"}).output
