"""What a new user meets: install hints, messages, exit codes, export, info, data check, help."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import flat
from img2img import hints
from img2img.cli import app
from img2img.export import export_onnx
from img2img.gan.checkpoint import GeneratorSpec, save_generator
from img2img.nets import registry

runner = CliRunner()
HPARAMS = {"ngf": 4, "n_blocks": 1, "norm": "instance"}


@pytest.fixture(scope="module")
def cyclegan_run(tmp_path_factory) -> Path:
    """A CycleGAN run folder's generators (instance norm, as exported by the task)."""
    run = tmp_path_factory.mktemp("first") / "run"
    for stem, direction in (("G_AB", "AtoB"), ("G_BA", "BtoA")):
        spec = GeneratorSpec(arch="resnet", hparams=HPARAMS, pixel_range="-1,1", task="cyclegan", direction=direction)
        save_generator(run / "checkpoints" / f"{stem}.safetensors", registry.build("resnet", **HPARAMS), spec)
    (run / "config.yaml").write_text("task: cyclegan\n")
    return run


@pytest.mark.parametrize("editable, expected", [(None, 'pip install "img2img[onnx]"'),
                                                 ("clone", 'pip install -e ".[onnx]"')])
def test_install_hints_keep_their_extra(editable, expected, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hints, "editable_source", lambda: None if editable is None else tmp_path.resolve())
    assert hints.install_hint("onnx") == expected
    monkeypatch.setitem(sys.modules, "onnx", None)  # the extra is not installed
    result = runner.invoke(app, ["export", str(tmp_path / "g.onnx"), "--model", str(tmp_path)])
    assert result.exit_code == 1 and expected in result.stderr


def test_long_messages_are_not_wrapped_when_stderr_is_not_a_terminal(tmp_path):
    long = tmp_path / ("a-folder-with-a-rather-long-name-" * 4) / "weights-inception-2015-12-05-6726825d.pth"
    (tmp_path / "in").mkdir()
    result = runner.invoke(app, ["translate", "--model", str(long), str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 2 and "no images found" in result.stderr  # INPUT is checked first
    (tmp_path / "in" / "x.png").write_bytes(b"")
    result = runner.invoke(app, ["translate", "--model", str(long), str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert any(str(long) in line for line in result.stderr.splitlines()), result.stderr


def test_model_mistakes_follow_the_exit_code_rule(cyclegan_run, tmp_path):
    missing = runner.invoke(app, ["export", str(tmp_path / "g.onnx"), "--model", str(tmp_path / "nope.pth")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.stderr
    wrong = runner.invoke(app, ["info", str(cyclegan_run / "config.yaml")])
    assert wrong.exit_code == 1 and "not a generator file" in wrong.stderr and "pop from" not in wrong.stderr
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a zip file at all")
    result = runner.invoke(app, ["info", str(broken)])
    assert result.exit_code == 1 and "not a readable PyTorch checkpoint (truncated, corrupt" in result.stderr


def test_export_prints_no_warnings(cyclegan_run, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(cyclegan_run, tmp_path / "g.onnx")
    assert not caught, [str(w.message) for w in caught]
    result = runner.invoke(app, ["export", str(tmp_path / "h.onnx"), "--model", str(cyclegan_run)])
    assert result.exit_code == 0 and "Warning" not in result.output and result.stdout == ""


def test_more_loader_workers_than_cores_is_the_users_choice_without_torchs_advice(cyclegan_run, tmp_path):
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.full((16, 16, 3), 100, np.uint8))
    workers = (os.cpu_count() or 1) + 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["translate", "--model", str(cyclegan_run), "--workers", str(workers),
                                     str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "worker processes" in str(w.message)] and "Warning" not in result.output


def test_amp_fp16_on_a_cpu_says_it_runs_in_fp32(cyclegan_run, tmp_path):
    from img2img import api
    from img2img.config import make_config

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.full((32, 32, 3), 100, np.uint8))
    result = runner.invoke(app, ["translate", "--model", str(cyclegan_run), "--amp", "fp16", "--device", "cpu",
                                 str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 0 and "--amp fp16: a CPU has no fp16 autocast, so this runs in fp32" in result.stderr

    class Told:
        messages: list[str] = []
        start = finish = update = lambda *args, **kwargs: None
        message = messages.append

    api.train(make_config("pix2pix", {"a": str(tmp_path / "in"), "b": str(tmp_path / "in"), "size": 32, "ngf": 4,
                                      "ndf": 4, "netG": "unet_32", "steps": 1, "workers": 0, "device": "cpu",
                                      "amp": "fp16", "out": str(tmp_path / "run")}), reporter=Told())
    assert any("--amp fp16: a CPU has no fp16 autocast" in m for m in Told.messages)


@pytest.mark.parametrize("command", ["report", "data check", "eval", "translate --targets", "train pix2pix",
                                     "train srgan"])
def test_a_file_where_a_folder_is_needed_is_called_not_a_folder(cyclegan_run, tmp_path, command):
    file = tmp_path / "notes.png"
    file.write_text("notes")
    args = {"report": ["report", file], "data check": ["data", "check", file], "eval": ["eval", file, file],
            "translate --targets": ["translate", "--model", cyclegan_run, tmp_path, tmp_path / "o", "--targets", file],
            "train pix2pix": ["train", "pix2pix", "--a", file, "--b", file, "--out", tmp_path / "run"],
            "train srgan": ["train", "srgan", "--hr", file, "--perceptual", "none", "--out", tmp_path / "run"]}[command]
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 2 and f"{file}: not a folder" in result.stderr, result.output


def test_demo_refuses_a_missing_device_before_writing_its_data(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--device", "cuda", "--steps", "1"])
    assert result.exit_code == 2 and "no CUDA GPU" in result.stderr and not (tmp_path / "demo").exists()


@pytest.mark.parametrize("flags, message", [(["--aligned", "--b", "."], "no --b to give"),
                                            (["--unpaired"], "give the second domain as --b DIR")])
def test_data_check_refuses_flags_that_contradict_each_other(tmp_path, flags, message):
    result = runner.invoke(app, ["data", "check", str(tmp_path), *flags])
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("device", ["mps", "xpu", "meta"])
def test_a_device_kind_img2img_does_not_run_on_is_a_usage_error(cyclegan_run, tmp_path, device):
    result = runner.invoke(app, ["translate", "--model", str(cyclegan_run), str(tmp_path), str(tmp_path / "o"),
                                 "--device", device])
    assert result.exit_code == 2 and f"--device {device}: img2img runs on cpu or cuda" in result.stderr


def test_data_check_searches_folders_as_training_does(tmp_path):
    for name in ["a.png", ".hidden/b.png", "@eaDir/c.png", "._a.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / name), np.full((16, 16, 3), 100, np.uint8))
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    (tmp_path / "notes.txt").write_text("not an image")
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 1 and f"{tmp_path}: 1 images (and 1 unreadable)" in result.stderr
    assert f"1 other file(s) ignored, e.g. {tmp_path / 'notes.txt'}" in flat(result.stderr)
    assert f"{tmp_path / 'gone.png'}: no such file" in result.stderr and "._a.png" not in result.stderr.split("ignored")[0]


def test_more_loader_workers_than_cores_in_training_without_torchs_advice(tmp_path):
    from img2img import api
    from img2img.config import make_config

    (tmp_path / "in").mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), np.full((32, 32, 3), 60 * i, np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api.train(make_config("pix2pix", {"a": str(tmp_path / "in"), "b": str(tmp_path / "in"), "size": 32, "ngf": 4,
                                          "ndf": 4, "netG": "unet_32", "steps": 1, "device": "cpu",
                                          "workers": (os.cpu_count() or 1) + 1, "out": str(tmp_path / "run")}))
    assert not [w for w in caught if "worker processes" in str(w.message)]


@pytest.mark.parametrize("task", ["pix2pix", "cut"])
def test_validation_folders_are_named_by_their_own_flags(tmp_path, task):
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.full((32, 32, 3), 100, np.uint8))
    file = tmp_path / "in" / "a.png"
    result = runner.invoke(app, ["train", task, "--a", str(tmp_path / "in"), "--b", str(tmp_path / "in"),
                                 "--val-a", str(file), "--val-b", str(tmp_path / "in"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and f"--val-a {file}: not a folder" in result.stderr, result.output


def test_info_prints_both_generators_of_a_cyclegan_run_on_stdout(cyclegan_run):
    result = runner.invoke(app, ["info", str(cyclegan_run), "--json"])
    assert result.exit_code == 0 and result.stderr == ""
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["direction"] for r in records] == ["AtoB", "BtoA"]
    text = runner.invoke(app, ["info", str(cyclegan_run)])
    assert "G_AB.safetensors" in text.stdout and "G_BA.safetensors" in text.stdout


def test_data_check_names_a_bad_file_of_a_pair_once(tmp_path):
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        cv2.imwrite(str(tmp_path / side / "x.png"), np.full((16, 16, 3), 100, np.uint8))
    whole = (tmp_path / "a" / "x.png").read_bytes()
    (tmp_path / "a" / "x.png").write_bytes(whole[: len(whole) // 2])
    result = runner.invoke(app, ["data", "check", str(tmp_path / "a"), "--b", str(tmp_path / "b")])
    assert result.exit_code == 1 and flat(result.stderr).count("x.png: the file is truncated") == 1, result.stderr


def test_data_check_takes_unpaired_domains(tmp_path):
    import cv2
    import numpy as np

    for folder, names in (("horses", ["h1", "h2"]), ("zebras", ["z1"])):
        (tmp_path / folder).mkdir()
        for name in names:
            cv2.imwrite(str(tmp_path / folder / f"{name}.png"), np.zeros((8, 8, 3), np.uint8))
    paired = runner.invoke(app, ["data", "check", str(tmp_path / "horses"), "--b", str(tmp_path / "zebras")])
    assert paired.exit_code == 1 and "--unpaired" in paired.stderr and paired.stderr.count("no partner") == 0
    unpaired = runner.invoke(app, ["data", "check", str(tmp_path / "horses"), "--b", str(tmp_path / "zebras"), "--unpaired"])
    assert unpaired.exit_code == 0 and "no problems found" in unpaired.stderr


def test_cyclegan_help_and_errors_offer_only_cyclegan_choices(tmp_path):
    help_text = runner.invoke(app, ["train", "cyclegan", "--help"]).output
    assert "lambda_l1" not in help_text and "lambda_identity" in help_text
    result = runner.invoke(app, ["train", "cyclegan", "--a", str(tmp_path), "--b", str(tmp_path), "--gan-loss", "wgan"])
    assert result.exit_code == 2
    assert "choose lsgan, vanilla, minimax, hinge, wgangp" in result.stderr and "nonsaturating" not in result.stderr


@pytest.mark.parametrize("arguments", [
    ["translate", "--model", "RUN", "in", ""], ["translate", "--model", "", "in", "out"], ["export", "", "--model", "RUN"],
    ["train", "pix2pix", "--a", "a", "--b", "b", "--out", ""], ["train", "srgan", "--hr", "a", "--out="],
    ["train", "cyclegan", "--data", ""], ["eval", "", "b"], ["data", "check", ""], ["report", " "], ["demo", "--out", ""]])
def test_an_empty_argument_is_a_usage_error_not_the_current_folder(arguments, tmp_path, monkeypatch, capsys):
    """'' (a quoted unset shell variable) would otherwise name the current folder: train into it, or
    translate a folder into itself."""
    from img2img import launch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["img2img", *arguments])
    with pytest.raises(SystemExit) as stopped:
        launch.main()
    assert stopped.value.code == 2
    assert "empty" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command, advice", [(["demo"], "run the same command again to continue"),
                                             (["train", "pix2pix", "--data", "."], "run the same command with --resume to continue")])
def test_a_stopped_run_says_how_to_continue_it(tmp_path, monkeypatch, command, advice):
    """The demo continues by itself and refuses --resume."""
    import signal

    from img2img import api, demo
    from img2img.gan.loop import TrainingStopped

    def stopped(*args, **kwargs):
        raise TrainingStopped(signal.SIGINT, 5)

    monkeypatch.setattr(demo, "run_demo", stopped)
    monkeypatch.setattr(api, "train", stopped)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train").mkdir()
    result = runner.invoke(app, command)
    assert result.exit_code == 130
    assert result.stderr.strip().endswith(advice), result.stderr


def test_bad_files_of_both_training_folders_are_named_at_once_with_what_to_do(tmp_path):
    import cv2
    import numpy as np

    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        cv2.imwrite(str(tmp_path / side / "good.png"), np.full((40, 40, 3), 90, np.uint8))
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / "text.png").write_text("hi")
    for task in ("cyclegan", "cut"):
        result = runner.invoke(app, ["train", task, "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--out",
                                     str(tmp_path / task), "--steps", "1", "--size", "32", "--ngf", "4", "--ndf", "4"])
        said = flat(result.stderr)
        assert result.exit_code == 1 and "2 unusable file(s)" in said, said
        assert "empty.png: empty file" in said and "text.png: not an image" in said
        assert "Move these files out of the training folders" in said


def test_data_check_counts_every_problem_and_readable_images_alone(tmp_path):
    import cv2
    import numpy as np

    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    for i in range(30):
        cv2.imwrite(str(tmp_path / "a" / f"q{i}.png"), np.full((16, 16, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "b" / "q0.png"), np.full((16, 16, 3), 90, np.uint8))
    (tmp_path / "a" / "bad.png").write_text("x")
    result = runner.invoke(app, ["data", "check", str(tmp_path / "a"), "--b", str(tmp_path / "b")])
    said = flat(result.stderr)
    assert result.exit_code == 1 and "30 problem(s):" in said and "... and" not in said  # 29 partners + bad.png
    assert "30 images (and 1 unreadable)" in said
    assert said.count("bad.png") == 1  # unreadable, and not also without a partner
