"""The shape of the code: per-family configs, options declared once and checked in the library,
one resolution path for the CLI and the API, the core below reporting."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from img2img import infer
from img2img.cli import app
from img2img.cli_train import _split_shared_flag
from img2img.config import BaseConfig, ConfigError, make_config, option_of, resolve
from img2img.gan.loop import Task
from img2img.progress import Silent
from img2img.tasks import TASKS
from img2img.tasks.srgan import SRGANConfig

runner = CliRunner()
PACKAGE = Path(__file__).resolve().parents[1] / "img2img"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "gan").glob("*.py")), ids=lambda p: p.name)
def test_the_gan_core_imports_nothing_above_it(path):
    above = {"img2img.report", "img2img.evaluate", "img2img.tasks", "img2img.cli", "img2img.api", "img2img.infer"}
    assert not {name for name in imported_modules(path) if name.startswith(tuple(above))}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_family_is_a_task_with_its_own_config(name):
    task = TASKS[name]
    assert issubclass(task, Task) and issubclass(task.Config, BaseConfig) and task.Config is not BaseConfig
    cfg = make_config(name, {})
    assert cfg.task == name and cfg.out == f"runs/{name}"
    built = task(make_config(name, {"ngf": 4, "ndf": 4, "perceptual": "none"} if name == "srgan" else
                             {"ngf": 4, "ndf": 4, "size": 64}), torch.device("cpu"), Silent(), data=False)
    assert set(built.nets) >= {n for phase in built.phases for n in phase.nets}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_setting_with_a_flag_is_on_the_train_command(name):
    result = runner.invoke(app, ["train", name, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    cls = TASKS[name].Config
    for field in dataclasses.fields(cls):
        option = option_of(cls, field.name)
        if option is not None and option.cli:
            assert (option.flag or "--" + field.name.replace("_", "-")) in result.output, field.name
    assert "lambda_l1" not in result.output or name == "pix2pix"


def test_a_family_config_holds_only_its_own_settings():
    assert "lambda_l1" not in make_config("cyclegan", {}).to_dict()
    assert "scale" not in make_config("pix2pix", {}).to_dict()
    with pytest.raises(ConfigError, match="unknown setting 'lambda_l1'"):
        make_config("cyclegan", {"lambda_l1": 3})


def test_resolution_order_is_defaults_recipe_flags_then_sets(tmp_path):
    cfg = resolve("pix2pix", "facades", {"lambda_l1": 10.0, "ngf": 8}, sets=["ngf=16"])
    assert cfg.direction == "BtoA" and cfg.lambda_l1 == 10.0 and cfg.ngf == 16
    with pytest.raises(ConfigError, match="train cyclegan"):
        resolve("pix2pix", "horse2zebra")


def test_the_library_refuses_what_the_cli_refuses():
    cases = [("pix2pix", {"steps": 0}, "--steps 0: must be at least 1"),
             ("cyclegan", {"gan_loss": "wgan"}, "choose lsgan, vanilla, minimax, hinge, wgangp, ragan, rpgan"),
             ("srgan", {"scale": 8}, "--scale 8: must be at most 4"),
             ("pix2pix", {"val_a": "x"}, "both --val-a and --val-b"),
             ("pix2pix", {"seed": -1}, "--seed -1: must be at least 0"),
             ("cut", {"seed": 2**32}, "--seed 4294967296: must be at most"),
             ("pix2pix", {"lr": float("nan")}, "--lr nan: must be a finite number"),
             ("cyclegan", {"lambda_cycle": float("inf")}, "--lambda-cycle inf: must be a finite number"),
             ("srgan", {"steps": 5, "epochs": 2}, "--steps and --epochs both given"),
             *[(task, {"size": 64, "load_size": 32}, "--load-size 32 is smaller than --size 64")
               for task in ("pix2pix", "cyclegan", "cut")]]
    for task, values, message in cases:
        with pytest.raises(ConfigError, match=message):
            make_config(task, values)
    for options, message in [({"tile": 64, "tile_overlap": 32}, "--tile-overlap"), ({"ext": "gif"}, "--ext gif")]:
        with pytest.raises(infer.InputError, match=message):
            infer.Options(**options)


def test_a_length_given_replaces_the_other_kind_of_the_recipe_or_the_resumed_run(tmp_path):
    assert resolve("pix2pix", "facades", {"steps": 5}).epochs is None  # the recipe says 200 epochs
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(make_config("pix2pix", {"steps": 4}).to_dict()))
    resumed = resolve("pix2pix", overrides={"out": str(run), "epochs": 3}, resume=True)
    assert (resumed.steps, resumed.epochs) == (None, 3)
    with pytest.raises(ConfigError, match="the task is not a setting"):
        resolve("pix2pix", sets=["task=cyclegan"])


def test_srgan_lr_is_the_learning_rate_and_still_takes_the_old_folder():
    assert _split_shared_flag(SRGANConfig, {"lr": "1e-3"})["lr"] == 1e-3
    assert _split_shared_flag(SRGANConfig, {"lr": "lr_images/"}) == {"lr": None, "lr_dir": "lr_images/"}


def test_resume_starts_from_the_saved_config_and_old_flat_configs_still_load(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    flat = {**make_config("cyclegan", {"ngf": 8}).to_dict(), "lambda_l1": 100.0, "scale": 4, "world_size": 1}
    (run / "config.yaml").write_text(yaml.safe_dump(flat))
    cfg = resolve("cyclegan", overrides={"out": str(run), "steps": 9}, resume=True)
    assert cfg.ngf == 8 and cfg.steps == 9
    with pytest.raises(ConfigError, match="holds a cyclegan run"):
        resolve("pix2pix", overrides={"out": str(run)}, resume=True)


def test_a_recipe_given_with_resume_must_agree_with_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    started = resolve("pix2pix", "facades", {"out": str(run), "steps": 7})
    (run / "config.yaml").write_text(yaml.safe_dump(started.to_dict()))
    again = {"out": str(run), "steps": 7}  # the command that started the run, plus --resume
    assert resolve("pix2pix", "facades", again, resume=True).steps == 7
    with pytest.raises(ConfigError, match="--recipe maps sets --direction AtoB.*leave --recipe out"):
        resolve("pix2pix", "maps", again, resume=True)
    with pytest.raises(ConfigError, match="a cyclegan recipe"):
        resolve("pix2pix", "horse2zebra", again, resume=True)
    own = tmp_path / "own.yaml"  # a recipe that names its run folder: --resume finds the run there
    own.write_text(f"task: pix2pix\nout: {run}\nsteps: 7\ndirection: BtoA\n")
    assert resolve("pix2pix", str(own), {}, resume=True).out == str(run)


def test_a_config_built_directly_trains_with_its_task_and_the_checks_of_make_config(paired_photos, tmp_path):
    from img2img import api
    from img2img.tasks.pix2pix import Pix2PixConfig

    with pytest.raises(ConfigError, match="--load-size 20 is smaller than --size 32"):
        api.train(Pix2PixConfig(a=str(paired_photos["a"]), b=str(paired_photos["b"]), size=32, load_size=20))
    cfg = Pix2PixConfig(a=str(paired_photos["a"]), b=str(paired_photos["b"]), out=str(tmp_path / "run"), steps=1,
                        size=32, netG="unet_32", ngf=4, ndf=4, workers=0)
    assert api.train(cfg) == tmp_path / "run"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["task"] == "pix2pix"


def test_api_errors_give_the_python_names_of_the_flags_they_name_and_the_cli_does_not(tmp_path):
    """A usage message names flags; through the API it also says what they are called there."""
    from img2img import api
    from img2img.infer import InputError

    with pytest.raises(ConfigError) as err:
        resolve("pix2pix", overrides={"gan_loss": "lsgann", "data": str(tmp_path)})
    assert str(err.value).endswith("(in Python: --gan-loss is gan_loss)")
    assert err.value.message.startswith("--gan-loss 'lsgann' is not offered") and "Python" not in err.value.message
    with pytest.raises(InputError, match=r"--tile '64': must be a whole number"):
        api.translate(tmp_path, tmp_path, tmp_path / "out", tile="64")
    with pytest.raises(InputError, match=r"--max-memory .*in Python: --max-memory is max_memory"):
        api.translate(tmp_path, tmp_path, tmp_path / "out", max_memory=1.5)
    for wrong, said in (({"tiles": 128}, "no option 'tiles': did you mean 'tile'?"),
                        ({"max_memory": -5}, "--max-memory -5: must be at least 1"),
                        ({"writers": -1}, "--writers -1: must be at least 1")):
        with pytest.raises(InputError, match=re.escape(said)):
            api.translate(tmp_path, tmp_path, tmp_path / "out", **wrong)
    with pytest.raises(ConfigError, match=r"train\(\) takes a task's config, not dict: make one with resolve"):
        api.train({"task": "pix2pix", "data": str(tmp_path)})
    result = CliRunner().invoke(app, ["train", "pix2pix", "--data", str(tmp_path), "--gan-loss", "lsgann"])
    assert result.exit_code == 2 and "--gan-loss 'lsgann'" in result.output and "Python" not in result.output


@pytest.mark.parametrize("key, text, value", [("ngf", "8", 8), ("steps", "20", 20), ("dropout", "false", False),
                                              ("lr", "2e-4", 2e-4), ("steps", "null", None), ("flip", "no", False)])
def test_a_setting_given_as_text_is_read_as_set_reads_it_by_every_route(tmp_path, key, text, value):
    """A pipeline passes its settings as text (environment, JSON, quoted YAML): --set, a recipe
    and the API read them alike."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: pix2pix\n{key}: '{text}'\n")
    routes = [resolve("pix2pix", overrides={"data": str(tmp_path), key: text}),
              resolve("pix2pix", overrides={"data": str(tmp_path)}, sets=[f"{key}={text}"]),
              resolve("pix2pix", str(recipe), {"data": str(tmp_path)})]
    assert [getattr(cfg, key) for cfg in routes] == [value] * 3


@pytest.mark.parametrize("text, said", [("8.5", "not 8.5"), ("eight", "not 'eight'"), ("", "not an empty value")])
def test_a_text_that_is_no_whole_number_is_refused_alike_by_every_route(tmp_path, text, said):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: pix2pix\nngf: '{text}'\n")
    for route in (lambda: resolve("pix2pix", overrides={"data": str(tmp_path), "ngf": text}),
                  lambda: resolve("pix2pix", overrides={"data": str(tmp_path)}, sets=[f"ngf={text}"]),
                  lambda: resolve("pix2pix", str(recipe), {"data": str(tmp_path)})):
        with pytest.raises(ConfigError, match=f"setting 'ngf' takes an int, {said}"):
            route()
