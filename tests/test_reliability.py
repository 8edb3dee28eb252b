"""Messy inputs, killed processes, signals, non-finite losses and hostile checkpoints."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image as PILImage
from typer.testing import CliRunner

from helpers import CrashAt, flat, save_tiny_generator
from img2img import api
from img2img.cli import app
from img2img.config import Option, ConfigError, config_class, make_config, option_of, resolve, save_config
from img2img.data import header, images
from img2img.data.datasets import DataError
from img2img.data.images import Image, write_image
from img2img.gan.checkpoint import GeneratorSpec, load_generator, save_generator
from img2img.gan.health import Health
from img2img.nets import registry
from img2img.tasks import TASKS

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_generator(tmp_path_factory.mktemp("model") / "g.safetensors")


def rgb(height=24, width=20) -> np.ndarray:
    return np.random.default_rng(height + width).integers(0, 255, (height, width, 3), dtype=np.uint8)


def bad_input_corpus(folder: Path) -> tuple[dict[str, str], list[str]]:
    """(bad file -> what the message must say, good files) for every kind of messy input."""
    folder.mkdir()
    PILImage.fromarray(rgb()).save(folder / "good.jpg", quality=90)
    data = (folder / "good.jpg").read_bytes()
    (folder / "zero.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    PILImage.fromarray(rgb()).save(folder / "whole.png")
    png = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "notes.png").write_text("this is not an image")
    (folder / "corrupt.png").write_bytes(png[:60] + b"\0" * (len(png) - 72) + png[-12:])
    PILImage.fromarray(rgb()).convert("CMYK").save(folder / "cmyk.jpg")
    PILImage.fromarray(rgb()).convert("P").save(folder / "palette.png")
    PILImage.fromarray(rgb()[..., :2]).convert("LA").save(folder / "gray_alpha.png")
    cv2.imwrite(str(folder / "deep.png"), (rgb().astype(np.uint16) * 257))
    cv2.imwrite(str(folder / "float.tiff"), rgb().astype(np.float32) / 255)
    PILImage.fromarray(rgb(1, 1)).save(folder / "tiny.png")
    bad = {"zero.png": "empty file (0 bytes)", "truncated.jpg": "truncated", "truncated.png": "truncated",
           "notes.png": "not an image", "corrupt.png": "corrupt"}
    good = ["good.jpg", "whole.png", "cmyk.jpg", "palette.png", "gray_alpha.png", "deep.png", "float.tiff", "tiny.png"]
    return bad, good


def test_translate_names_every_bad_file_and_writes_every_good_one(model, tmp_path):
    bad, good = bad_input_corpus(tmp_path / "in")
    result = runner.invoke(app, ["translate", "--model", str(model), "--workers", "0", "--json",
                                 str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = " ".join(result.stderr.split())
    for name, message in bad.items():
        assert f"{name}: " in errors and message in errors, name
    for name in good:
        written = images.read_image(tmp_path / "out" / name)
        assert written.size == images.read_image(tmp_path / "in" / name).size, name
    assert images.read_image(tmp_path / "out" / "gray_alpha.png").gray
    assert cv2.imread(str(tmp_path / "out" / "deep.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sum("error" in r for r in records) == len(bad) and len(records) == len(bad) + len(good)


def test_decompression_bombs_are_refused_below_a_configurable_limit(model, tmp_path):
    PILImage.fromarray(rgb(64, 64)).save(tmp_path / "big.png")
    result = runner.invoke(app, ["translate", "--model", str(model), "--max-pixels", "1000", "--workers", "0",
                                 str(tmp_path / "big.png"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "over the limit" in result.stderr and "--max-pixels" in result.stderr
    header.set_max_pixels(header.DEFAULT_MAX_PIXELS)


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    PILImage.fromarray(rgb()).save(path)
    real = Path.read_bytes

    def deny(self):
        if self.name == "secret.png":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(header.ImageError, match="secret.png: cannot be read: permission denied"):
        images.read_image(path)


def test_a_full_disk_leaves_nothing_partial_and_stops_the_run(model, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    for index in range(12):
        PILImage.fromarray(rgb()).save(tmp_path / "in" / f"{index:02d}.png")
    real_fdopen = os.fdopen
    attempts = []

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk(fd, mode):
        attempts.append(fd)
        return FullDisk(real_fdopen(fd, mode))

    monkeypatch.setattr(images.os, "fdopen", full_disk)
    command = ["translate", "--model", str(model), "--workers", "0", str(tmp_path / "in"), str(tmp_path / "out")]
    result = runner.invoke(app, command)
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert "Translation stopped: run the same command again" in flat(result.stderr)
    assert list((tmp_path / "out").iterdir()) == []
    assert len(attempts) < 12  # the images after the first failure were not computed to fail
    monkeypatch.undo()  # space again: the same command finishes the job
    assert runner.invoke(app, command).exit_code == 0
    assert len(list((tmp_path / "out").iterdir())) == 12


@pytest.mark.parametrize("full", ["checkpoint", "log"])
def test_a_full_disk_during_training_is_a_message_not_a_traceback(paired_photos, tmp_path, monkeypatch, full):
    from img2img.gan import record

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_mkstemp, real_open = images.tempfile.mkstemp, open
    if full == "checkpoint":  # the run folder's config is written; its first checkpoint is not
        monkeypatch.setattr(images.tempfile, "mkstemp", lambda **kw: no_space() if kw["dir"].name == "checkpoints"
                            else real_mkstemp(**kw))
    else:
        monkeypatch.setattr(record, "open", lambda path, *a: no_space() if Path(path).name == "log.jsonl"
                            else real_open(path, *a), raising=False)
    result = runner.invoke(app, train_cmd(paired_photos, tmp_path / "run", "--steps", 2, "--save-every", 1)[3:])
    assert result.exit_code == 1, result.output
    assert "could not be written: No space left on device: free space there" in flat(result.stderr)
    assert "Traceback" not in result.output and "OSError" not in result.output


@pytest.mark.parametrize("command", ["translate", "translate to a file", "train", "export"])
def test_an_output_that_cannot_be_created_is_one_message(model, paired_photos, tmp_path, command):
    # A path below a regular file cannot be created by anyone (root included), like a read-only disk.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    source = str(paired_photos["a"])
    one_image = str(next(paired_photos["a"].iterdir()))
    args = {"translate": ["translate", "--model", str(model), source, str(blocker / "out")],
            "translate to a file": ["translate", "--model", str(model), one_image, str(blocker / "out.png")],
            "train": train_cmd(paired_photos, blocker / "run", "--steps", 1)[3:],
            "export": ["export", str(blocker / "g.onnx"), "--model", str(model)]}[command]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    message = flat(result.stderr)
    assert f"{blocker}" in message and "could not be written" in message and message.count("could not") == 1
    assert "Traceback" not in result.output and blocker.read_text() == "not a folder"


def image_folders(task: str) -> dict[str, str]:
    """Every folder of images a train command reads -> its options panel."""
    from dataclasses import fields

    from img2img.config import config_class, option_of

    cls = config_class(task)
    options = {item.name: option_of(cls, item.name) for item in fields(cls)}
    return {name: o.panel for name, o in options.items() if o and o.path and o.panel in ("Data", "Validation")}


@pytest.mark.parametrize("task, folder", [(t, f) for t in TASKS for f in image_folders(t)])
def test_a_run_folder_inside_a_data_folder_is_refused(task, folder, tmp_path):
    # The validation folders come in partners: all given, so that only the run folder is wrong.
    values = {name: str(tmp_path / name) for name, panel in image_folders(task).items() if panel == "Validation"}
    values[folder] = str(tmp_path / "images")
    for path in values.values():
        Path(path).mkdir(exist_ok=True)
    cfg = make_config(task, {**values, "out": str(tmp_path / "images" / "run")})
    with pytest.raises(ConfigError, match="choose an --out outside it"):
        api.check_outside_data(cfg, Path(cfg.out))
    api.check_outside_data(cfg, tmp_path / "run")  # beside the data: fine


def test_a_run_inside_its_data_is_refused_before_anything_is_written(tmp_path):
    for folder in ("trainA", "trainB"):
        for index in range(2):
            write_image(tmp_path / "data" / folder / f"{index}.png",
                        Image(rgb=torch.rand(3, 40, 40), alpha=None, gray=False, bits=8))
    args = ["train", "cyclegan", "--size", "32", "--ngf", "4", "--ndf", "4", "--steps", "1", "--workers", "0",
            "--device", "cpu"]
    folders = ["--a", str(tmp_path / "data" / "trainA"), "--b", str(tmp_path / "data" / "trainB")]
    result = runner.invoke(app, [*args, *folders, "--out", str(tmp_path / "data" / "trainA" / "run")])
    assert result.exit_code == 2 and "choose an --out outside it" in flat(result.stderr)
    assert not (tmp_path / "data" / "trainA" / "run").exists()
    # --data reads the layout's trainA/ and trainB/: a run beside them is not inside what is read.
    result = runner.invoke(app, [*args, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "data" / "run")])
    assert result.exit_code == 0, result.output


def test_an_output_folder_inside_the_input_folder_is_not_read_back(model, tmp_path):
    PILImage.fromarray(rgb()).save(tmp_path / "a.png")
    for _ in range(2):
        result = runner.invoke(app, ["translate", "--model", str(model), "--workers", "0", "--overwrite",
                                     str(tmp_path), str(tmp_path / "out")])
        assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == ["a.png", "out/a.png"]


def test_stale_temporary_files_of_a_killed_run_are_removed(model, tmp_path):
    PILImage.fromarray(rgb()).save(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / f".a.png.x1y2{images.TEMP_SUFFIX}"
    stale.write_bytes(b"half an image")
    result = runner.invoke(app, ["translate", "--model", str(model), "--workers", "0", str(tmp_path / "a.png"),
                                 str(tmp_path / "out")])
    assert result.exit_code == 0 and not stale.exists() and (tmp_path / "out" / "a.png").is_file()


@pytest.mark.skipif(os.name != "posix", reason="whether a PID lives is asked with signal 0")
def test_a_resumed_run_removes_the_temporaries_a_killed_checkpoint_write_left(paired_photos, tmp_path):
    run = tmp_path / "run"
    values = tiny_run("pix2pix", copy_photos(paired_photos, tmp_path / "data"), run, steps=2) | {"save_every": 2}
    api.train(make_config("pix2pix", values))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = [run / "checkpoints" / f".state_step00000004.pt.{dead}-a1b2c3d4{images.TEMP_SUFFIX}",
             run / "checkpoints" / f".generator.safetensors.{dead}-e5f6g7h8{images.TEMP_SUFFIX}",
             run / f".log.jsonl.{dead}-i9j0k1l2{images.TEMP_SUFFIX}"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    api.train(make_config("pix2pix", values | {"steps": 4}), resume=True)
    assert not [path for path in stale if path.exists()]


@pytest.mark.skipif(os.name != "posix", reason="whether a PID lives is asked with signal 0")
def test_temporaries_that_another_live_process_is_writing_are_left_alone(model, tmp_path):
    # `ls *.png | xargs -P 4 -n 1 img2img translate ... out/`: each start must spare the others' files.
    PILImage.fromarray(rgb()).save(tmp_path / "a.png")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "out"
    out.mkdir()
    names = {"live": f".b.png.{os.getpid()}-k3j2h1g0{images.TEMP_SUFFIX}",
             "live, OpenCV's": f".c.jpg.{os.getpid()}-a1b2c3d4{images.TEMP_SUFFIX}.jpg",
             "dead": f".b.png.{int(dead.stdout)}-k3j2h1g0{images.TEMP_SUFFIX}",
             "dead buffer": f".d.tif.{int(dead.stdout)}-zz99yy88.buffer{images.TEMP_SUFFIX}",
             "not ours": ".b.png.notes"}
    for name in names.values():
        (out / name).write_bytes(b"in flight")
    result = runner.invoke(app, ["translate", "--model", str(model), "--workers", "0", str(tmp_path / "a.png"),
                                 str(out / "a.png")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["translate", "--model", str(model), "--workers", "0", str(tmp_path), str(out)])
    assert result.exit_code == 0, result.output
    left = {p.name for p in out.iterdir()}
    assert left == {"a.png", names["live"], names["live, OpenCV's"], names["not ours"]}


def test_metadata_never_decides_where_files_go(tmp_path):
    hparams = {"ngf": 4, "n_blocks": 1}
    spec = GeneratorSpec(arch="resnet", hparams=hparams, pixel_range="-1,1", task="../../escape",
                         direction="/etc/passwd", config={"out": "/tmp/evil"})
    save_generator(tmp_path / "g.safetensors", registry.build("resnet", **hparams), spec)
    PILImage.fromarray(rgb()).save(tmp_path / "a.png")
    result = runner.invoke(app, ["translate", "--model", str(tmp_path / "g.safetensors"), "--workers", "0",
                                 str(tmp_path / "a.png"), str(tmp_path / "out")])
    assert result.exit_code == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]
    assert not Path("/tmp/evil").exists()


# ---- training ---------------------------------------------------------------------------

TRAIN = ["--size", "32", "--load-size", "36", "--netG", "unet_32", "--ngf", "4", "--ndf", "4",
         "--workers", "0", "--device", "cpu", "--seed", "7", "--log-every", "1"]


def train_cmd(paired_photos, out, *extra):
    return [sys.executable, "-m", "img2img", "train", "pix2pix", "--a", str(paired_photos["a"]), "--b",
            str(paired_photos["b"]), "--out", str(out), *TRAIN, *map(str, extra)]


def wait_for_checkpoint(folder: Path, process: subprocess.Popen, newer_than: int = -1, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        steps = [int(p.stem.removeprefix("state_step")) for p in folder.glob("state_step*.pt")]
        if steps and max(steps) > newer_than:
            return
        time.sleep(0.05)


def test_sigkill_at_any_moment_then_resume_reaches_the_same_weights(paired_photos, tmp_path):
    steps = ["--steps", 40, "--save-every", 4]
    straight = subprocess.run(train_cmd(paired_photos, tmp_path / "straight", *steps), capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "killed"
    kills, last = 0, -1
    for delay in (0.0, 0.15, 0.4):  # right after a checkpoint appears, and part-way to the next
        args = train_cmd(paired_photos, run, *steps, *(["--resume"] if kills else []))
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_checkpoint(run / "checkpoints", process, newer_than=last)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        found = [int(p.stem.removeprefix("state_step")) for p in (run / "checkpoints").glob("state_step*.pt")]
        last = max(found)
        load_generator(run)  # whatever the moment of the kill, the files on disk read back
    assert kills >= 2
    finish = subprocess.run(train_cmd(paired_photos, run, *steps, "--resume"), capture_output=True, text=True,
                            timeout=300)
    assert finish.returncode == 0, finish.stderr
    # A run that finished before the last kill has nothing left, and says so.
    assert "resuming from" in finish.stderr or "the run is at step 40 of 40 already" in finish.stderr
    a, spec = load_generator(tmp_path / "straight")
    b, spec_b = load_generator(run)
    assert spec.step == spec_b.step == 40
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_write_a_checkpoint_and_exit(paired_photos, tmp_path, sig, code):
    process = subprocess.Popen(train_cmd(paired_photos, tmp_path / "run", "--steps", 100000, "--save-every", 100000),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    log = tmp_path / "run" / "log.jsonl"
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert "a checkpoint was written" in stderr and "--resume" in stderr
    states = list((tmp_path / "run" / "checkpoints").glob("state_step*.pt"))
    assert len(states) == 1 and int(states[0].stem.removeprefix("state_step")) >= 3


def test_losses_that_stay_non_finite_after_a_checkpoint_stop_the_run_instead_of_looping(paired_photos, tmp_path,
                                                                                         monkeypatch):
    from img2img.gan import losses, record

    calls = {"n": 0}
    real_g_loss = losses.g_loss

    def nan_from_step_12(kind, fake, real=None):
        calls["n"] += 1
        loss = real_g_loss(kind, fake, real)
        return loss * float("nan") if calls["n"] >= 13 else loss

    monkeypatch.setattr(losses, "g_loss", nan_from_step_12)
    cfg = make_config("pix2pix", {"a": str(paired_photos["a"]), "b": str(paired_photos["b"]), "out": str(tmp_path / "run"),
                                  "steps": 30, "save_every": 10, "size": 32, "netG": "unet_32", "ngf": 4, "ndf": 4,
                                  "workers": 0})
    with pytest.raises(record.TrainingDiverged, match="after step 20 again and again, down to x0.0625.*lower --lr"):
        api.train(cfg)
    assert calls["n"] < 100
    states = sorted((tmp_path / "run" / "checkpoints").glob("state_step*.pt"))
    assert [p.name for p in states] == ["state_step00000010.pt", "state_step00000020.pt"]


def test_repeated_non_finite_losses_roll_back_with_a_lower_learning_rate(paired_photos, tmp_path, monkeypatch):
    from img2img.gan import losses

    calls = {"n": 0}
    real_g_loss = losses.g_loss

    def sometimes_nan(kind, fake, real=None):
        calls["n"] += 1
        loss = real_g_loss(kind, fake, real)
        return loss * float("nan") if 13 <= calls["n"] <= 24 else loss

    monkeypatch.setattr(losses, "g_loss", sometimes_nan)
    messages = []

    class Recorder:
        def start(self, *args): pass
        def update(self, *args): pass
        def finish(self): pass
        def message(self, text): messages.append(text)

    cfg = make_config("pix2pix", {"a": str(paired_photos["a"]), "b": str(paired_photos["b"]), "out": str(tmp_path / "run"),
                                  "steps": 30, "save_every": 5, "size": 32, "netG": "unet_32", "ngf": 4, "ndf": 4,
                                  "workers": 0, "decay_start": 1.0})
    api.train(cfg, reporter=Recorder())
    # G losses of steps 12-23 are NaN: ten skips (12-21) trigger a roll-back to the step-20
    # checkpoint, whose steps 20 and 21 are then skipped once more.
    assert sum("not finite" in m for m in messages) == 12
    rollbacks = [m for m in messages if "rolled back" in m]
    assert len(rollbacks) == 1 and "rolled back to step 20" in rollbacks[0] and "x0.5" in rollbacks[0]
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["lr"]["G"] == pytest.approx(1e-4)
    state = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("state_step*.pt"))[-1], weights_only=True)
    assert state["lr_scale"] == 0.5 and state["step"] == 30


def test_a_discriminator_that_wins_outright_is_flagged_once():
    health = Health(win_steps=50)
    assert health.discriminator_wins(10, {"D_real": 0.99, "D_fake": 0.01}) is None
    warnings = [health.discriminator_wins(step, {"D_real": 0.99, "D_fake": 0.01}) for step in range(20, 200, 10)]
    assert sum(w is not None for w in warnings) == 1 and "won outright since step 10" in next(w for w in warnings if w)
    assert health.discriminator_wins(300, {"D_real": 0.7, "D_fake": 0.3}) is None
    assert health.nonfinite(1) is False


# ---- files that stop being readable while a run trains -------------------------------------------


def tiny_run(task: str, data: Path, out: Path, steps: int) -> dict:
    """A few-second run of `task` on the folders `data`/A and `data`/B (SR: B as HR photographs)."""
    common = {"out": str(out), "steps": steps, "batch_size": 2, "size": 32, "ngf": 4, "ndf": 4, "workers": 0,
              "device": "cpu", "save_every": 1000}
    folders = {"a": str(data / "A"), "b": str(data / "B")}
    return {"pix2pix": {**folders, "netG": "unet_32"},
            "cyclegan": {**folders, "netG": "resnet_1blocks", "load_size": 32},
            "cut": {**folders, "netG": "resnet_1blocks", "load_size": 32, "num_patches": 8},
            "srgan": {"hr": folders["b"], "scale": 2, "netG": "srvgg", "n_blocks": 1, "netD": "unet",
                      "perceptual": "none"}}[task] | common


class DamageAt:
    """A reporter that runs `damage` once the run reaches `step`, and keeps the messages."""

    def __init__(self, step: int, damage):
        self.step, self.damage, self.messages = step, damage, []

    def start(self, total, done, description): pass
    def finish(self): pass

    def message(self, text):
        self.messages.append(text)

    def update(self, done, info=""):
        if done >= self.step and self.damage is not None:
            self.damage()
            self.damage = None


def copy_photos(paired_photos, root: Path) -> Path:
    import shutil

    for side in ("a", "b"):
        shutil.copytree(paired_photos[side], root / side.upper())
    return root


@pytest.mark.parametrize("task", sorted(TASKS))
def test_files_lost_during_training_are_skipped_and_named_once(task, paired_photos, tmp_path):
    data = copy_photos(paired_photos, tmp_path / "data")
    read = data / ("B" if task == "srgan" else "A")
    deleted, broken, shrunk = sorted(read.iterdir())[:3]

    def damage():
        deleted.unlink()
        broken.write_text("a half-synced file")
        write_image(shrunk, Image(rgb=torch.rand(3, 8, 8), alpha=None, gray=False, bits=8))  # fine, if small

    reporter = DamageAt(2, damage)
    cfg = make_config(task, tiny_run(task, data, tmp_path / "run", steps=40))
    api.train(cfg, reporter=reporter)  # 40 steps of 2 draw every one of the 24 images again
    skipped = " | ".join(m for m in reporter.messages if m.startswith("skipped"))
    assert f"skipped {deleted}: no such file" in skipped and f"skipped {broken}: not an image" in skipped
    shrunk_says = {"srgan": f"skipped {shrunk}: now 8x8, smaller than the 32 px HR patch",  # others resize
                   "pix2pix": f"skipped {shrunk} (8x8) and {data / 'B' / shrunk.name} (64x64) are no longer the same"}
    if task in shrunk_says:
        assert shrunk_says[task] in skipped
    assert skipped.count("skipped") == 2 + (task in shrunk_says), reporter.messages
    assert load_generator(tmp_path / "run")[1].step == 40
    if task == "srgan":  # its validation images (the first training images) are decoded late
        assert f"validation goes on without {deleted}: no such file" in reporter.messages
        assert f"validation goes on without {shrunk}: now 8x8, too small to measure SSIM at x2" in reporter.messages


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_resume_with_other_network_settings_is_refused_and_leaves_the_run_as_it_was(task, paired_photos, tmp_path):
    run = tmp_path / "run"
    api.train(make_config(task, tiny_run(task, copy_photos(paired_photos, tmp_path / "data"), run, steps=2)))
    saved = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    with pytest.raises(ConfigError) as refused:
        api.train(resolve(task, overrides={"out": str(run), "steps": 3, "ngf": 8}, resume=True), resume=True)
    assert "Settings this command changes: steps 2 -> 3, ngf 4 -> 8." in str(refused.value)
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == saved
    api.train(resolve(task, overrides={"out": str(run), "steps": 3}, resume=True), resume=True)
    assert load_generator(run)[1].step == 3
    finished = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    again = DamageAt(0, None)
    api.train(resolve(task, overrides={"out": str(run), "lr": 1e-3}, resume=True), resume=True, reporter=again)
    assert again.messages[-1] == "the run is at step 3 of 3 already: nothing to train; give a larger --steps to go on"
    assert not any("resuming from" in message for message in again.messages)
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == finished


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_resumed_run_logs_each_step_once(task, paired_photos, tmp_path):
    """Steps logged after the checkpoint a resume goes on from are trained, and logged, again."""
    values = {**tiny_run(task, copy_photos(paired_photos, tmp_path / "data"), tmp_path / "run", steps=8),
              "log_every": 1, "save_every": 4}
    with pytest.raises(KeyboardInterrupt):
        api.train(make_config(task, values), reporter=CrashAt(6))  # steps 1-5 logged, checkpoint at 4
    api.train(make_config(task, values), resume=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if "img_per_s" in r]
    assert logged == list(range(1, 9))


def test_accumulated_micro_batches_print_the_effective_batch(paired_photos, tmp_path):
    said = DamageAt(0, None)
    cfg = make_config("pix2pix", tiny_run("pix2pix", copy_photos(paired_photos, tmp_path / "data"), tmp_path / "run",
                                          steps=1))
    cfg.batch_size, cfg.grad_accum = 2, 3
    api.train(cfg, reporter=said)
    assert "1 process x batch 2 x 3 accumulated = effective batch 6" in said.messages


def _another_value(option, value):
    if isinstance(value, bool):
        return not value
    if option.choices:
        return next(choice for choice in option.choices if choice != value)
    return int(option.min) if value != option.min else int(option.max)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_resume_cannot_change_what_the_run_learns(task, tmp_path):
    """Direction, objective, dropout, mode, scale: the same networks, another run."""
    run = tmp_path / "run"
    cls = config_class(task)
    kept = [f.name for f in dataclasses.fields(cls) if (option_of(cls, f.name) or Option("")).kept]
    assert kept, f"{task} keeps nothing on resume"
    saved = make_config(task, {"out": str(run), "steps": 2})
    run.mkdir()
    save_config(saved, run / "config.yaml")
    for key in kept:
        other = _another_value(option_of(cls, key), getattr(saved, key))
        with pytest.raises(ConfigError, match=f"--resume: the run in {run} was trained with .*a resumed run keeps it"):
            resolve(task, overrides={"out": str(run), key: other}, resume=True)
        assert getattr(resolve(task, overrides={"out": str(run), key: getattr(saved, key)}, resume=True), key) \
            == getattr(saved, key)  # the same value again is no change


def test_a_run_started_with_relative_folders_resumes_from_another_working_folder(paired_photos, tmp_path, monkeypatch):
    project = tmp_path / "project"
    copy_photos(paired_photos, project / "data")
    monkeypatch.chdir(project)
    api.train(make_config("pix2pix", tiny_run("pix2pix", Path("data"), Path("run"), steps=2)))
    monkeypatch.chdir(tmp_path)
    api.train(resolve("pix2pix", overrides={"out": str(project / "run"), "steps": 3}, resume=True), resume=True)
    assert load_generator(project / "run")[1].step == 3
    saved = yaml.safe_load((project / "run" / "config.yaml").read_text())
    assert saved["a"] == str(project / "data" / "A") and saved["out"] == str(project / "run")


def test_a_resume_with_another_effective_batch_says_so(paired_photos, tmp_path):
    run = tmp_path / "run"
    api.train(make_config("pix2pix", tiny_run("pix2pix", copy_photos(paired_photos, tmp_path / "data"), run, steps=2)))
    told = DamageAt(0, None)
    api.train(resolve("pix2pix", overrides={"out": str(run), "steps": 3, "batch_size": 4}, resume=True), resume=True,
              reporter=told)
    assert ("the run was trained with an effective batch of 2; it goes on with 4 (1 process(es) x batch 4 x 1 "
            "accumulated)") in told.messages


@pytest.mark.parametrize("task", sorted(TASKS))
def test_best_metric_is_checked_against_what_validation_measures_before_training(task, paired_photos, tmp_path):
    data = copy_photos(paired_photos, tmp_path / "data")
    held_out = {} if task == "srgan" else {"val_a": str(data / "A"), "val_b": str(data / "B")}
    values = tiny_run(task, data, tmp_path / "run", steps=1) | held_out
    with pytest.raises(ConfigError, match=f"--best-metric val_foo: {task} validation measures "):
        api.train(make_config(task, values | {"best_metric": "val_foo"}))
    assert not (tmp_path / "run").exists()
    api.train(make_config(task, values))
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    measured = {"pix2pix": ("val_l1", "val_psnr", "val_l1_identity", "val_psnr_identity"),
                "cyclegan": ("val_cycle_A", "val_cycle_B", "val_change_A", "val_change_B"),
                "cut": ("val_change", "val_l1", "val_l1_identity"),
                "srgan": ("psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic")}[task]
    assert [tuple(r["val"]) for r in logged if "val" in r] == [measured]


def test_best_metric_without_validation_images_is_refused(paired_photos, tmp_path):
    data = copy_photos(paired_photos, tmp_path / "data")
    with pytest.raises(ConfigError, match="--best-metric val_change: this run has no validation images"):
        api.train(make_config("cut", tiny_run("cut", data, tmp_path / "run", steps=1) | {"best_metric": "val_change"}))


def test_sr_training_leaves_out_photographs_smaller_than_the_patch_and_says_so(paired_photos, tmp_path):
    data = copy_photos(paired_photos, tmp_path / "data")
    thumbnail = data / "B" / "thumbnail.png"
    write_image(thumbnail, Image(rgb=torch.rand(3, 16, 20), alpha=None, gray=False, bits=8))
    told = DamageAt(0, None)
    api.train(make_config("srgan", tiny_run("srgan", data, tmp_path / "run", steps=2)), reporter=told)
    assert (f"left out 1 image(s) smaller than the HR patch: {thumbnail} is 20x16, smaller than the 32 px HR "
            "patch (--size)") in told.messages
    for path in (data / "B").iterdir():
        if path != thumbnail:
            path.unlink()
    with pytest.raises(DataError, match=r"every image is smaller than the 32 px HR patch \(--size\)"):
        api.train(make_config("srgan", tiny_run("srgan", data, tmp_path / "run2", steps=2)))


def test_sr_training_on_lr_hr_pairs_leaves_out_pairs_smaller_than_the_patch(paired_photos, tmp_path):
    data = copy_photos(paired_photos, tmp_path / "data")
    lr, hr = tmp_path / "lr", data / "B"
    lr.mkdir()
    for path in hr.iterdir():  # LR partners at half the size
        write_image(lr / path.name, Image(rgb=torch.rand(3, 32, 32), alpha=None, gray=False, bits=8))
    write_image(hr / "thumbnail.png", Image(rgb=torch.rand(3, 16, 20), alpha=None, gray=False, bits=8))
    write_image(lr / "thumbnail.png", Image(rgb=torch.rand(3, 8, 10), alpha=None, gray=False, bits=8))
    told = DamageAt(0, None)
    values = tiny_run("srgan", data, tmp_path / "run", steps=2) | {"lr_dir": str(lr)}
    api.train(make_config("srgan", values), reporter=told)
    assert (f"left out 1 image(s) smaller than the HR patch: {hr / 'thumbnail.png'} is 20x16, smaller than the "
            "32 px HR patch (--size)") in told.messages


@pytest.mark.parametrize("out, message", [("", "--out is empty"), ("file.txt", "is a file, not a folder")])
def test_an_out_that_cannot_be_a_run_folder_is_a_usage_error(tmp_path, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("notes")
    with pytest.raises(ConfigError, match=message):
        api.train(make_config("pix2pix", {"a": "A", "b": "B", "out": out}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_data_folder_gone_during_training_saves_the_run_and_resume_finishes_it(paired_photos, tmp_path, workers):
    data = copy_photos(paired_photos, tmp_path / "data")
    gone = tmp_path / "unmounted"
    values = tiny_run("cyclegan", data, tmp_path / "run", steps=30) | {"workers": workers}
    with pytest.raises(DataError) as stopped:  # loader workers' prefetched batches are used first
        api.train(make_config("cyclegan", values), reporter=DamageAt(3, lambda: data.rename(gone)))
    message = str(stopped.value)
    assert message.startswith("16 training images in a row could not be read now, the last: ")
    assert "no such file" in message and "Traceback" not in message and "worker" not in message
    saved = int(message.split("saved at step ")[1].split(":")[0])
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("state_*")] == [f"state_step{saved:08d}.pt"]

    gone.rename(data)
    api.train(make_config("cyclegan", values), resume=True)
    assert load_generator(tmp_path / "run")[1].step == 30


def corrupt_pixels(path: Path) -> None:
    """A PNG whose header reads and whose image data does not decode (CRCs kept valid), so that
    it passes the scan before training and fails where it is first decoded."""
    import struct
    import zlib

    data = bytearray(cv2.imencode(".png", rgb(40, 40))[1].tobytes())
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    for index in range(at + 6, at + 4 + length - 2, 3):
        data[index] ^= 0xFF
    data[at + 4 + length : at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 4 + length])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_an_undecodable_first_image_is_left_out_of_samples_and_validation_not_the_run(task, paired_photos, tmp_path):
    """The sample grid and the validation set take the first images of a folder: one that does
    not decode is passed over and named, as training passes over it."""
    data = copy_photos(paired_photos, tmp_path / "data")
    for side in ("A", "B"):
        first = sorted((data / side).iterdir())[0]
        corrupt_pixels(first)
    reporter = DamageAt(0, None)
    values = tiny_run(task, data, tmp_path / "run", steps=2) | {"sample_every": 1}
    if task in ("pix2pix", "cyclegan"):
        values |= {"val_a": str(data / "A"), "val_b": str(data / "B")}
    api.train(make_config(task, values), reporter=reporter)
    assert load_generator(tmp_path / "run")[1].step == 2
    named = [m for m in reporter.messages if "the PNG data is corrupt" in m]
    assert named and all(str(data) in m for m in named), reporter.messages
    assert any("(left out of the sample grid)" in m for m in named), named
    assert list((tmp_path / "run" / "samples").glob("*.png"))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_says_what_its_validation_measures_and_on_what(task, paired_photos, tmp_path):
    data = copy_photos(paired_photos, tmp_path / "data")
    reporter = DamageAt(0, None)
    held_out = ({"val_hr": str(data / "B")} if task == "srgan" else {"val_a": str(data / "A"), "val_b": str(data / "B")})
    TASKS[task](make_config(task, tiny_run(task, data, tmp_path / "run", steps=1) | held_out), torch.device("cpu"),
                reporter)  # the networks and the data, as a run starts
    said = [m for m in reporter.messages if m.startswith("validation: ")]
    assert len(said) == 1 and str(data / "A" if task != "srgan" else data / "B") in said[0], reporter.messages
    if task != "srgan":  # a fixed batch at the training crop's size; SR measures whole images
        assert {"pix2pix": "on 24 held-out", "cyclegan": "on the first 16 of 24", "cut": "on the first 16 of 24"}[task] in said[0]
        assert "resized to 32x32 px" in said[0]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_held_out_images_none_of_which_decodes_are_named_and_the_run_goes_on_without_validation(
        task, paired_photos, tmp_path):
    data = copy_photos(paired_photos, tmp_path / "data")
    for side in ("A", "B"):
        (tmp_path / "val" / side).mkdir(parents=True)
        corrupt_pixels(tmp_path / "val" / side / "only.png")
    reporter = DamageAt(0, None)
    held_out = ({"val_hr": str(tmp_path / "val" / "B")} if task == "srgan" else
                {"val_a": str(tmp_path / "val" / "A"), "val_b": str(tmp_path / "val" / "B")})
    values = tiny_run(task, data, tmp_path / "run", steps=2) | held_out | {"val_every": 1}
    api.train(make_config(task, values), reporter=reporter)
    assert load_generator(tmp_path / "run")[1].step == 2
    assert "none of the 1 image(s) for validation can be read: the run goes on without validation" in reporter.messages
    assert any(m.startswith("skipped ") and "only.png" in m and "(left out of validation)" in m
               for m in reporter.messages), reporter.messages


def crash_on(crashing: Path, monkeypatch) -> None:
    """Make the codec kill its process on the file `crashing`, as a segfault on a crafted file
    does. Forked processes (loader workers, the check's decoders) inherit the patch."""
    import multiprocessing

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("needs forked worker processes to inherit a patched decoder")
    poison, real = crashing.read_bytes(), cv2.imdecode

    def imdecode(buffer, flags):
        if len(buffer) == len(poison) and buffer.tobytes() == poison:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_file_that_crashes_its_decoder_is_excluded_and_the_run_goes_on(task, paired_photos, tmp_path, monkeypatch):
    data = copy_photos(paired_photos, tmp_path / "data")
    crashing = sorted((data / ("B" if task == "srgan" else "A")).iterdir())[5]  # not among SR's validation images
    crash_on(crashing, monkeypatch)
    reporter = DamageAt(0, lambda: None)
    api.train(make_config(task, tiny_run(task, data, tmp_path / "run", steps=30) | {"workers": 2}), reporter=reporter)
    assert load_generator(tmp_path / "run")[1].step == 30
    skipped = [m for m in reporter.messages if m.startswith("skipped")]
    assert skipped == [f"skipped {crashing}: decoding it killed the decoding process (a file the image decoder "
                       "cannot handle); another image takes its place"]


def test_data_check_names_a_file_that_crashes_its_decoder(paired_photos, tmp_path, monkeypatch):
    crash_on(sorted(paired_photos["a"].iterdir())[3], monkeypatch)
    result = runner.invoke(app, ["data", "check", "--decode", str(paired_photos["a"])])
    assert result.exit_code == 1 and "1 problem(s)" in result.stderr
    assert f"{sorted(paired_photos['a'].iterdir())[3]}: decoding it killed the decoding process" in flat(result.stderr)


@contextmanager
def held_by_another_process(run: Path):
    """The run folder's lock, held by a second process as a training still running would."""
    run.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, sys
lock = open({str(run / ".img2img-training.lock")!r}, "a+")
fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
lock.truncate(0); lock.write("process 4242 on gpu-7\\n"); lock.flush()
print("held", flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("")


@pytest.mark.parametrize("second", ["--resume", "a new run before the first checkpoint",
                                    "--resume before the first checkpoint"])
def test_a_run_folder_being_trained_is_refused_to_a_second_command(paired_photos, tmp_path, second):
    run = tmp_path / "run"
    args = train_cmd(paired_photos, run, "--steps", 2)[3:]
    if second == "--resume":
        assert runner.invoke(app, args).exit_code == 0
        args = [*args, "--resume", "--steps", "4"]
    if second == "--resume before the first checkpoint":  # the first run trains, with no checkpoint yet
        assert runner.invoke(app, args).exit_code == 0
        shutil.rmtree(run / "checkpoints")  # its config.yaml written, its first checkpoint not yet
        with held_by_another_process(run):
            result = runner.invoke(app, [*args, "--resume"])
        assert result.exit_code == 2 and f"{run} is being trained by process 4242" in flat(result.stderr)
        assert "no checkpoint yet" not in result.stderr
        return
    with held_by_another_process(run):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"{run} is being trained by process 4242 on gpu-7 now: wait for it" in flat(result.stderr)
        assert "resuming from" not in result.stderr  # the refusal alone: this command resumes nothing
    if second == "--resume":
        assert load_generator(run)[1].step == 2  # untouched
    else:
        assert not list(run.glob("checkpoints/*"))
    result = runner.invoke(app, args)  # the lock is free again
    assert result.exit_code == 0, result.output
    assert load_generator(run)[1].step == (4 if second == "--resume" else 2)


@pytest.mark.parametrize("damage", [b"steps: [1, 2\n", b"\xff\xfe\x00garbage", b"- a list\n- of things\n"])
def test_a_damaged_config_yaml_fails_the_resume_as_a_bad_file_naming_it(paired_photos, tmp_path, damage):
    run = tmp_path / "run"
    args = train_cmd(paired_photos, run, "--steps", 2)[3:]
    assert runner.invoke(app, args).exit_code == 0
    (run / "config.yaml").write_bytes(damage)
    result = runner.invoke(app, [*args, "--resume", "--steps", "4"])
    assert result.exit_code == 1 and f"{run / 'config.yaml'}: not" in flat(result.stderr), result.output
    assert "restore the file" in flat(result.stderr) and "Traceback" not in result.output


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_a_signal_mid_translate_leaves_whole_files_and_says_so(model, tmp_path, sig, code, said):
    """`kill` or a batch system's stop while results are written: each file on disk is whole,
    no temporary is left, one line says why it stopped, and the exit code is the signal's."""
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for index in range(400):
        PILImage.fromarray(rgb(96 + index % 5, 128)).save(source / f"{index:03d}.png", compress_level=0)
    process = subprocess.Popen([sys.executable, "-m", "img2img", "translate", "--json", "--model", str(model),
                                str(source), str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.png"))) < 5:
        time.sleep(0.02)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == said and "Traceback" not in stderr
    written = sorted(out.iterdir())
    assert 5 <= len(written) < 400, "the signal came after the run had ended: more images are needed"
    for path in written:
        assert path.suffix == ".png", f"left behind: {path.name}"
        index = int(path.stem)
        assert images.read_image(path).size == (96 + index % 5, 128)
    reported = {Path(json.loads(line)["output"]).name for line in stdout.splitlines()}
    assert reported == {path.name for path in written}  # a pipeline learns of every file written, and only those


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("layout", ["img2img", "foreign"])
def test_a_generator_with_non_finite_weights_is_refused_not_written_as_black_images(tmp_path, value, layout):
    module = registry.build("srvgg", num_feat=4, num_conv=2, upscale=2)
    with torch.no_grad():
        next(module.parameters())[0] = value
    if layout == "img2img":
        model = tmp_path / "g.safetensors"
        save_generator(model, module, GeneratorSpec(arch="srvgg", hparams={"num_feat": 4, "num_conv": 2, "upscale": 2},
                                                    pixel_range="0,1", scale=2))
    else:
        model = tmp_path / "g.pth"
        torch.save({"params": module.state_dict()}, model)
    PILImage.fromarray(rgb()).save(tmp_path / "a.png")
    for command in (["translate", "--model", str(model), str(tmp_path / "a.png"), str(tmp_path / "out")],
                    ["info", str(model)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1 and "NaN or infinite values" in flat(result.stderr), result.output
    assert not (tmp_path / "out").exists()


def _command(model: Path, source: Path, name: str) -> list[str]:
    return {"translate --json": ["translate", "--model", str(model), "--json", str(source), str(source.parent / "out")],
            "info --json": ["info", str(model), "--json"], "recipes": ["recipes"]}[name]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("name", ["translate --json", "info --json", "recipes"])
def test_a_full_stdout_is_a_message_and_exit_1_not_a_traceback(model, tmp_path, name):
    (tmp_path / "in").mkdir()
    PILImage.fromarray(rgb()).save(tmp_path / "in" / "a.png")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "img2img", *_command(model, tmp_path / "in", name)], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "standard output could not be written (No space left on device)" in flat(done.stderr)


@pytest.mark.skipif(os.name != "posix", reason="closes file descriptor 1 of the child")
def test_a_closed_stdout_is_a_message_not_results_lost_in_silence(model, tmp_path):
    done = subprocess.run([sys.executable, "-m", "img2img", "info", str(model), "--json"], stderr=subprocess.PIPE,
                          text=True, timeout=120, preexec_fn=lambda: os.close(1))
    assert done.returncode == 1 and "standard output is closed" in flat(done.stderr), done.stderr


def test_a_reader_that_goes_away_ends_translate_quietly_with_sigpipes_status(model, tmp_path):
    """`img2img translate --json ... | head -1`: no message, no traceback, exit 141, whole files."""
    (tmp_path / "in").mkdir()
    for index in range(200):  # many more than are done between the first line and the close
        PILImage.fromarray(rgb(20 + index % 40, 30)).save(tmp_path / "in" / f"{index:03d}.png")
    process = subprocess.Popen([sys.executable, "-m", "img2img", *_command(model, tmp_path / "in", "translate --json")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(process.stdout.readline())["input"].endswith("000.png")
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141 and "Traceback" not in stderr and "error" not in stderr, stderr
    assert all(images.read_image(path).size[1] == 30 for path in (tmp_path / "out").iterdir())


def test_losses_non_finite_before_any_checkpoint_stop_the_run_too(paired_photos, tmp_path, monkeypatch):
    from img2img.gan import losses, record

    real_g_loss = losses.g_loss
    monkeypatch.setattr(losses, "g_loss", lambda kind, fake, real=None: real_g_loss(kind, fake, real) * float("nan"))
    cfg = make_config("pix2pix", {"a": str(paired_photos["a"]), "b": str(paired_photos["b"]), "out": str(tmp_path / "run"),
                                  "steps": 400, "save_every": 1000, "size": 32, "netG": "unet_32", "ngf": 4, "ndf": 4,
                                  "workers": 0})
    with pytest.raises(record.TrainingDiverged, match="before the first checkpoint again and again"):
        api.train(cfg)
