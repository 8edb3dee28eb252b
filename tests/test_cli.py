"""The command line: train, info and translate through Typer's runner, one real subprocess,
and user mistakes that end in a message and an exit code rather than a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from img2img.cli import app
from img2img.data.images import read_image

runner = CliRunner()
TINY = ["--size", "32", "--netG", "unet_32", "--ngf", "4", "--ndf", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, aligned_photos) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    result = runner.invoke(app, ["train", "pix2pix", "--data", str(aligned_photos), "--out", str(out),
                                 "--steps", "3", "--save-every", "3", *TINY])
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_run_folder(run_dir):
    assert (run_dir / "checkpoints" / "generator.safetensors").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "log.jsonl").is_file()


def test_info_describes_the_generator(run_dir):
    result = runner.invoke(app, ["info", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["arch"] == "unet" and record["step"] == 3 and record["pixel_range"] == "-1,1"


def write_photo(path: Path, height: int, width: int, channels: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(height * width).integers(0, 255, (height, width, channels), dtype=np.uint8)
    cv2.imwrite(str(path), pixels[..., 0] if channels == 1 else pixels)


def test_translate_keeps_sizes_names_and_folders(run_dir, tmp_path):
    write_photo(tmp_path / "in" / "odd.png", 45, 37)
    write_photo(tmp_path / "in" / "sub" / "gray.jpg", 64, 80, channels=1)
    result = runner.invoke(app, ["translate", "--model", str(run_dir), str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    odd = read_image(tmp_path / "out" / "odd.png")
    gray = read_image(tmp_path / "out" / "sub" / "gray.jpg")
    assert odd.size == (45, 37) and not odd.gray
    assert gray.size == (64, 80) and gray.gray


def test_translate_reads_paths_from_stdin_and_skips_existing_outputs(run_dir, tmp_path, monkeypatch):
    for name in ("a.png", "deeper/b.png"):
        write_photo(tmp_path / "shots" / name, 32, 32)
    monkeypatch.chdir(tmp_path / "shots")  # absolute paths below the current folder: placed from it
    paths = f"{tmp_path / 'shots' / 'a.png'}\n{tmp_path / 'shots' / 'deeper' / 'b.png'}\n"
    args = ["translate", "--model", str(run_dir), "-", str(tmp_path / "out")]
    result = runner.invoke(app, args, input=paths)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "deeper" / "b.png").is_file()
    again = runner.invoke(app, args, input=paths)
    assert "skipped 2" in again.output


@pytest.mark.parametrize("separator", ["\n", "\r\n", "\0"])
def test_stdin_paths_end_with_newlines_or_nuls_and_keep_odd_names(run_dir, tmp_path, separator, monkeypatch):
    # find -print0 | img2img translate - out/: NUL-separated names may hold newlines and spaces.
    names = ["plain.png", "two words.png", "line\u2028separator.png"]
    if separator == "\0":
        names += ["new\nline.png", " leading space.png"]
    for name in names:
        write_photo(tmp_path / "shots" / name, 32, 32)
    monkeypatch.chdir(tmp_path / "shots")
    stdin = "".join(f"{tmp_path / 'shots' / name}{separator}" for name in names)
    result = runner.invoke(app, ["translate", "--model", str(run_dir), "-", str(tmp_path / "out")], input=stdin)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)


@pytest.mark.parametrize("args, code, message", [
    (["train", "pix2pix", "--data", "/no/such/folder"], 2, "/no/such/folder: no such folder"),
    (["train", "pix2pix"], 2, "give --data DIR"),
    (["train", "pix2pix", "--data", "."], 1, "no images found"),
    (["train", "pix2pix", "--data", ".", "--netG", "unet_77"], 2, "power of 2"),
    (["translate", "--model", "/no/model.pth", ".", "out"], 2, "no images found"),
    (["info", "/no/model.pth"], 2, "/no/model.pth: no such file"),
])
def test_user_mistakes_get_a_message_not_a_traceback(args, code, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_real_subprocess_translates_a_file(run_dir, tmp_path):
    write_photo(tmp_path / "photo.png", 40, 52)
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-m", "img2img", "translate", "--model", str(run_dir),
                           str(tmp_path / "photo.png"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_image(tmp_path / "out" / "photo.png").size == (40, 52)
    assert done.stdout == ""  # human messages go to stderr
