"""Hundreds of hostile files among good ones through every command that reads images:
`translate` (in the main process, and sharded over processes with loader workers and writer
threads), `data check`, `eval` and the scan before `train`. None may stop a run, print a
traceback or a codec library's own message, lose a good file or leave a temporary file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import cv2
import pytest
from typer.testing import CliRunner

from helpers import flat, one_thread, save_tiny_generator  # noqa: F401  (one_thread is a fixture)
from hostile import PHOTO_PX, Corpus, build_corpus, forged_png, photo_crops
from img2img.cli import app
from img2img.data import header, images, quiet

runner = CliRunner()
HOSTILE = 320  # broken files; plus one good file of every format variant


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """One thread here and in each device process: outputs compare byte for byte."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("hostile") / "in", HOSTILE)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_generator(tmp_path_factory.mktemp("model") / "g.safetensors")


@pytest.fixture(scope="module")
def clean_run(corpus, model, tmp_path_factory) -> Callable[[str], Path]:
    """The good files alone, translated on a device (a GPU computes other bits than a CPU):
    what the hostile runs on that device must write for them."""
    runs: dict[str, Path] = {}

    def on(device: str) -> Path:
        if device not in runs:
            root = tmp_path_factory.mktemp(f"clean-{device}")
            for path in corpus.good:
                shutil.copy(path, root / path.name)
            result = runner.invoke(app, ["translate", "--model", str(model), "--device", device, "--workers", "0",
                                         str(root), str(root / "out")])
            assert result.exit_code == 0, result.output
            runs[device] = root / "out"
        return runs[device]

    return on


def check_translation(corpus: Corpus, clean: Path, out: Path, stdout: str, stderr: str, code: int) -> None:
    assert code == 1 and "Traceback" not in stderr
    assert "Warning" not in stderr and "warn(" not in stderr, stderr  # a library's, naming no file
    records = {Path(r["input"]).name: r for r in map(json.loads, stdout.splitlines())}
    assert sorted(records) == sorted(p.name for p in corpus.files)  # every input accounted for
    for name, record in records.items():
        assert bool(record.get("output")) != bool(record.get("error")), record
        if record.get("error"):
            assert record["error"].startswith(str(corpus.folder / name) + ": ") and "\n" not in record["error"]
            assert not re.search(r" failed \(\w+(: |\))", record["error"]), record  # no fallback: a word for people
    for path in corpus.good:
        assert (out / path.name).read_bytes() == (clean / path.name).read_bytes(), path.name
    for path in corpus.forged:  # refused from the header, before any decoder allocated
        assert "megapixels" in records[path.name]["error"] or "header is corrupt" in records[path.name]["error"], path
    assert not list(out.rglob(f"*{images.TEMP_SUFFIX}"))
    written = [r for r in records.values() if r.get("output")]
    assert len(list(out.iterdir())) == len(written)


def test_translate_in_one_process(corpus, model, clean_run, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["translate", "--model", str(model), "--workers", "0", "--json",
                                 str(corpus.folder), str(out)])
    check_translation(corpus, clean_run("auto"), out, result.stdout, result.stderr, result.exit_code)


def test_translate_sharded_with_workers_prints_one_line_per_bad_file(corpus, model, clean_run, tmp_path):
    """Two device processes, each with a loader worker and writer threads; stderr is read at
    the file-descriptor level, where libpng and libjpeg print."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.run([sys.executable, "-m", "img2img", "translate", "--model", str(model), "--devices",
                              "cpu,cpu", "--workers", "1", "--json", str(corpus.folder), str(out)],
                             capture_output=True, text=True, timeout=300, env=env)
    check_translation(corpus, clean_run("cpu"), out, process.stdout, process.stderr, process.returncode)
    failed = [json.loads(line)["error"] for line in process.stdout.splitlines() if '"error"' in line]
    lines = process.stderr.splitlines()
    assert not [line for line in lines if quiet.NOISE.match(line.encode())]
    listed = lines[lines.index(f"{len(failed)} input(s) failed:") + 1:]
    assert sorted(line.strip() for line in listed) == sorted(failed)  # one line per bad file, nothing else
    summary = [line for line in lines[: -len(listed) - 1] if not line.startswith("translating on 2 devices ")]
    written = len(list(out.iterdir()))
    assert "".join(summary).replace(" ", "") == f"wrote {written} image(s) to {out}".replace(" ", ""), lines


def test_the_codec_libraries_do_print_without_the_filter(corpus):
    """What the test above filters is really there: libpng writes to fd 2 itself."""
    script = ("import sys, cv2, numpy as np\n"
              "for p in sys.argv[1:]: cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED)\n")
    crc = [str(p) for p in corpus.damaged if p.name.startswith("png_wrong_crc")]
    process = subprocess.run([sys.executable, "-c", script, *crc], capture_output=True, text=True, timeout=60)
    assert any(quiet.NOISE.match(line.encode()) for line in process.stderr.splitlines())


def test_data_check_and_the_train_scan_name_the_same_files(corpus, tmp_path):
    result = runner.invoke(app, ["data", "check", str(corpus.folder)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    named = flat(result.stderr)
    assert not [p for p in corpus.good if str(p) in named]
    assert not [p for p in corpus.forged if f"{p}: " not in named]
    count = int(named.split(" problem(s):")[0].split()[-1])
    decoded = runner.invoke(app, ["data", "check", "--decode", str(corpus.folder)])
    assert decoded.exit_code == 1 and "Traceback" not in decoded.output
    assert not [p for p in corpus.good if str(p) in flat(decoded.stderr)]

    b = tmp_path / "b"
    b.mkdir()
    for path in corpus.good:
        shutil.copy(path, b / path.name)
    train = runner.invoke(app, ["train", "cyclegan", "--a", str(corpus.folder), "--b", str(b), "--out",
                                str(tmp_path / "run"), "--steps", "1", "--size", "32", "--load-size", "32",
                                "--netG", "resnet_1blocks", "--ngf", "4", "--ndf", "4", "--workers", "0",
                                "--device", "cpu"])
    assert train.exit_code == 1 and "Traceback" not in train.output
    assert f"{count} unusable file(s) in {corpus.folder}" in flat(train.stderr)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_eval_measures_every_good_pair_and_names_every_other_file(corpus, tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    crop = photo_crops(1)[0]
    for path in corpus.files:
        cv2.imwrite(str(targets / f"{path.stem}.png"), crop[:, :, ::-1])
    result = runner.invoke(app, ["eval", str(corpus.folder), str(targets), "--json", "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    report = json.loads(result.stdout)
    measured = {Path(image["pred"]).name for image in report["images"]}
    failures = report["failures"]
    assert {p.name for p in corpus.good} <= measured
    for path in corpus.hostile:
        assert path.name in measured or [f for f in failures if f.startswith(f"{path}: ") or f.startswith(f"{path} is ")]


def test_a_png_declaring_90000_by_90000_px_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(forged_png(90000, 90000))
    with pytest.raises(header.ImageError, match=r"90000x90000 \(image\) is 8100 megapixels, over the limit"):
        images.read_image(path)


def test_a_small_pixel_limit_is_stated_in_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv(header.MAX_PIXELS_VARIABLE, "100")
    path = tmp_path / "small.png"
    path.write_bytes(forged_png(60, 60))
    with pytest.raises(header.ImageError, match=r"60x60 \(image\) is 3,600 pixels, over the limit of 100 pixels"):
        images.read_image(path)


def test_just_over_the_limit_the_counts_are_exact_not_rounded_to_the_same(tmp_path):
    path = tmp_path / "forged.png"
    path.write_bytes(forged_png(16001, 16001))
    with pytest.raises(header.ImageError, match=r"is 256,032,001 pixels, over the limit of 256,000,000 \("):
        images.read_image(path)


@pytest.mark.parametrize("variant", ["webp_animated", "tif_pages", "apng"])
def test_animated_and_multi_page_files_give_their_first_frame(tmp_path, variant):
    from hostile import ENCODERS

    crop = photo_crops(1)[0]
    ext, encode = ENCODERS[variant]
    (tmp_path / f"a{ext}").write_bytes(encode(crop))
    image = images.read_image(tmp_path / f"a{ext}")
    assert image.size == PHOTO_PX
    first = image.rgb.permute(1, 2, 0).numpy() * 255
    assert abs(first - crop).mean() < 8  # the first frame, not the flipped second one


def test_a_decoder_that_kills_its_process_fails_that_file_alone(model, tmp_path, monkeypatch):
    """A segfault in a codec is no exception: the decoding worker dies. The files in flight are
    decoded again one at a time, so the file that kills it is named and the rest are written."""
    import signal

    from img2img import infer

    folder = tmp_path / "in"
    folder.mkdir()
    for i, crop in enumerate(photo_crops(12)):
        cv2.imwrite(str(folder / f"{i:02d}.png"), crop[:, :, ::-1])
    real = infer.decode_image

    def crashing(path):
        if path.name == "05.png":
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(path)

    monkeypatch.setattr(infer, "decode_image", crashing)  # the forked workers inherit it
    results = infer.translate(model, str(folder), tmp_path / "out", workers=1)
    errors = {r.job.source.name: r.error for r in results if r.error}
    assert list(errors) == ["05.png"] and "decoder crashed on this file" in errors["05.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:02d}.png" for i in range(12) if i != 5]
