"""Reports: a real (tiny) pix2pix run's report.html and plots, a translate gallery with targets
and per-image metrics, checked by parsing the HTML (and by a headless Chromium screenshot when
/usr/bin/chromium exists), TensorBoard export, and the log reader's tolerance."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from img2img.cli import app
from img2img.evaluate import evaluate
from img2img.gan.record import tensorboard_scalars
from img2img.gan.record import fmt
from img2img.progress import Silent
from img2img.report import GALLERY_FILE, probability_keys, read_log, write_run_report
from helpers import flat, one_thread  # noqa: F401  (one_thread is a fixture)

pytest.importorskip("matplotlib")
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield
TINY = ["--size", "32", "--netG", "unet_32", "--ngf", "4", "--ndf", "4", "--workers", "0"]
ODD_NAME = 'we<i>rd & "name"'
CHROMIUM = Path("/usr/bin/chromium")


class Page(HTMLParser):
    """The parts of a page the tests look at: image sources, link targets and the text."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.links, self.text = [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])

    def handle_data(self, data):
        self.text.append(data)


def resolve(page_dir: Path, url: str) -> Path:
    assert "://" not in url and not url.startswith("/"), url  # relative links only
    return (page_dir / urllib.parse.unquote(url)).resolve()


def decode_data_uri(uri: str) -> np.ndarray:
    head, payload = uri.split(",", 1)
    assert head == "data:image/jpeg;base64"
    return cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)


def tree(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, paired_photos) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    result = runner.invoke(app, ["train", "pix2pix", "--a", str(paired_photos["a"]), "--b", str(paired_photos["b"]),
                                 "--out", str(out), "--steps", "6", "--save-every", "3", "--log-every", "1", *TINY])
    assert result.exit_code == 0, result.output
    return out


def test_run_report_shows_samples_plots_and_config(run_dir, tmp_path_factory):
    # Training writes the report when it ends; `img2img report` rewrites it and nothing else.
    written_by_training = {Path("run/report.html"), Path("run/plots"), Path("run/plots/losses.png"),
                           Path("run/plots/d_probabilities.png")}
    assert written_by_training <= tree(run_dir.parent)
    (run_dir / "report.html").unlink()
    before = tree(run_dir.parent)
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    report = Path(result.stdout.strip())
    assert report == run_dir / "report.html"
    assert tree(run_dir.parent) - before == {Path("run/report.html")}
    for name in ("losses", "d_probabilities"):
        plot = cv2.imread(str(run_dir / "plots" / f"{name}.png"))
        assert plot is not None and plot.shape[1] > 300 and plot.std() > 10  # drawn, not blank
    page = Page(report.read_text())
    assert page.images and all(resolve(run_dir, src).is_file() for src in page.images)
    assert "each row: input | output | target" in report.read_text()  # pix2pix's caption
    samples = [src for src in page.images if src.startswith("samples/")]
    assert samples == ["samples/step_00000006.png", "samples/step_00000003.png"]  # newest first
    text = " ".join(page.text)
    assert "D(real) / D(fake)" in text and "loss_G_GAN" in text and "lambda_l1" in text


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in flat(result.stderr)
    assert not (tmp_path / "report.html").exists()


@pytest.fixture(scope="module")
def gallery(run_dir, paired_photos, tmp_path_factory) -> Path:
    """translate --targets on the held-out photos, one of them under a name that needs escaping."""
    root = tmp_path_factory.mktemp("gallery")
    shutil.copytree(paired_photos["test_a"], root / "in")
    shutil.copytree(paired_photos["test_b"], root / "targets")
    first = sorted((root / "in").glob("*.png"))[0]
    first.rename(root / "in" / f"{ODD_NAME}.png")
    target = cv2.imread(str(root / "targets" / first.name))
    (root / "targets" / first.name).unlink()
    cv2.imwrite(str(root / "targets" / f"{ODD_NAME}.jpg"), target)  # paired by stem across extensions
    result = runner.invoke(app, ["translate", "--model", str(run_dir), str(root / "in"), str(root / "out"),
                                 "--targets", str(root / "targets")])
    assert result.exit_code == 0, result.output
    assert "gallery.html" in flat(result.stderr)
    return root


def test_gallery_rows_link_existing_files_and_embed_thumbnails(gallery):
    out = gallery / "out"
    assert tree(out) == tree(gallery / "in") | {Path(GALLERY_FILE)}  # nothing else lands in OUTPUT
    raw = (out / GALLERY_FILE).read_text()
    page = Page(raw)
    inputs = sorted((gallery / "in").glob("*.png"))
    assert len(page.images) == 3 * len(inputs)  # input | output | target per row
    for uri in page.images:
        thumb = decode_data_uri(uri)
        assert thumb is not None and max(thumb.shape[:2]) <= 256
    linked = {resolve(out, url) for url in page.links}
    assert all(path.is_file() for path in linked)
    expected = {p.resolve() for folder in ("in", "out", "targets") for p in (gallery / folder).glob("*.*")} - {
        (out / GALLERY_FILE).resolve()}
    assert linked == expected
    assert ODD_NAME in "".join(page.text) and ODD_NAME not in raw and "we&lt;i&gt;rd &amp; &quot;name&quot;" in raw


def test_gallery_shows_the_metrics_eval_computes(gallery):
    page = Page((gallery / "out" / GALLERY_FILE).read_text())
    text = [t.strip() for t in page.text if t.strip()]
    assert "psnr" in text and "ssim" in text
    result = evaluate(gallery / "out", gallery / "targets", "psnr,ssim")
    assert not result.failures and not result.unmatched_pred
    row = text.index(f"{ODD_NAME}.png")  # the row's name cell, then its cells' captions and values
    odd = next(i for i in result.images if i["name"] == ODD_NAME)
    assert fmt(odd["psnr"]) in text[row:row + 8] and fmt(odd["ssim"]) in text[row:row + 8]
    assert re.fullmatch(r"\d+\.\d\d", fmt(odd["psnr"]))  # 12.00 dB, not 12
    assert fmt(result.means["psnr"]) in text[:text.index("name")]  # the means table comes first


def test_targets_of_another_size_are_named_not_dropped_in_silence(run_dir, paired_photos, tmp_path):
    shutil.copytree(paired_photos["test_a"], tmp_path / "in")
    (tmp_path / "targets").mkdir()
    for path in sorted((tmp_path / "in").glob("*.png")):
        cv2.imwrite(str(tmp_path / "targets" / path.name), cv2.imread(str(path))[::2, ::2])
    result = runner.invoke(app, ["translate", "--model", str(run_dir), str(tmp_path / "in"), str(tmp_path / "out"),
                                 "--targets", str(tmp_path / "targets")])
    assert result.exit_code == 0, result.output
    said = flat(result.stderr)
    assert "not measured in full against their targets" in said and "the target" in said
    page = (tmp_path / "out" / GALLERY_FILE).read_text()
    assert "not measured in full" in page and "PSNR (dB) and SSIM on RGB" not in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: the HTML checks above stand in")
def test_gallery_renders_in_a_headless_browser(gallery, tmp_path):
    shot = tmp_path / "gallery.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1100,900", (gallery / "out" / GALLERY_FILE).as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (900, 1100)
    # Rendered thumbnails: many distinct colours, which a page of text and tables lacks.
    assert len(np.unique(image.reshape(-1, 3) // 16, axis=0)) > 200


def test_translate_without_targets_shows_input_and_output(run_dir, paired_photos, tmp_path):
    result = runner.invoke(app, ["translate", "--model", str(run_dir), str(paired_photos["test_a"]),
                                 str(tmp_path / "out"), "--gallery"])
    assert result.exit_code == 0, result.output
    page = Page((tmp_path / "out" / GALLERY_FILE).read_text())
    assert len(page.images) == 2 * len(list(paired_photos["test_a"].glob("*.png")))
    assert "psnr" not in page.text


def test_translate_rejects_a_missing_targets_folder(run_dir, paired_photos, tmp_path):
    result = runner.invoke(app, ["translate", "--model", str(run_dir), str(paired_photos["test_a"]),
                                 str(tmp_path / "out"), "--targets", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "--targets" in flat(result.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("output", ["targets", "targets/sub"])
def test_translate_refuses_an_output_inside_the_targets(run_dir, paired_photos, tmp_path, output):
    import shutil

    targets = tmp_path / "targets"
    shutil.copytree(paired_photos["test_b"], targets)
    before = {p: p.read_bytes() for p in targets.rglob("*")}
    result = runner.invoke(app, ["translate", "--model", str(run_dir), str(paired_photos["test_a"]),
                                 str(tmp_path / output), "--targets", str(targets), "--overwrite"])
    assert result.exit_code == 2 and "is inside --targets" in flat(result.stderr)
    assert {p: p.read_bytes() for p in targets.rglob("*")} == before


# ---- the log ------------------------------------------------------------------------------------


def test_log_reader_keeps_the_last_record_per_step_and_skips_broken_lines(tmp_path):
    lines = [{"step": 10, "loss_D": 1.0, "D_real": 0.6, "D_fake": 0.4}, {"step": 20, "loss_D": 0.9},
             {"step": 20, "val": {"psnr_y": 20.5}}, {"step": 20, "loss_D": 0.5},  # step 20 again: resumed
             {"step": 20, "best": {"psnr_y": 20.5}}]  # a new best, noted after the step's losses
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"step": 30, "loss_'  # cut short by a crash
    (tmp_path / "log.jsonl").write_text(text)
    log = read_log(tmp_path)
    assert [r["loss_D"] for r in log.train] == [1.0, 0.5]
    assert log.val == [lines[2]] and log.bad_lines == 1


def test_report_of_a_logged_sr_run_plots_validation_against_bicubic(tmp_path):
    records = [{"step": s, "loss_G_pixel": 1 / s, "loss_D": 0.7, "D_real": 0.6, "D_fake": 0.4} for s in (10, 20, 30)]
    records[-1]["warning"] = "D <wins> & G starves"
    records += [{"step": s, "val": {"psnr_y": 20 + s / 10, "psnr_y_bicubic": 21.0, "ssim_y": 0.7}} for s in (10, 30)]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "config.yaml").write_text("task: srgan\nsteps: 30\n")
    report = write_run_report(tmp_path)
    assert set(report.plots) == {"losses", "d_probabilities", "validation"} and not report.notes
    assert cv2.imread(str(report.plots["validation"])).std() > 10
    raw = report.path.read_text()
    page = Page(raw)
    assert "psnr_y_bicubic" in page.text and "23.00" in page.text  # the validation table: step 30's psnr_y
    assert "D &lt;wins&gt; &amp; G starves" in raw and "D <wins>" not in raw
    assert all(resolve(tmp_path, src).is_file() for src in page.images)


def test_a_run_stopped_between_log_lines_reports_its_saved_step_and_a_pixel_only_run_no_discriminator(tmp_path):
    records = [{"step": s, "loss_G_pixel": 1 / s} for s in (10, 20, 30, 35)]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "config.yaml").write_text("task: srgan\nsteps: 2000\npretrain_steps: 2000\nnetD: vgg\n"
                                          "gan_loss: vanilla\nnetG: srvgg\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "state_step00000039.pt").write_bytes(b"")  # Ctrl-C at step 39 saved it
    raw = write_run_report(tmp_path).path.read_text()
    assert "step <b>39</b> of 2000 (logged to step 35" in raw
    facts = raw[raw.index("<p>task"):].split("</p>")[0]
    assert "netG srvgg" in facts and "netD" not in facts and "gan_loss" not in facts


def test_probability_keys_cover_every_discriminator():
    records = [{"step": 1, "loss_D_A": 0.3, "D_A_real": 0.7, "D_A_fake": 0.2, "D_B_real": 0.6, "D_B_fake": 0.3,
                "img_per_s": 5.0, "lr": {"G": 1e-4}}]
    assert probability_keys(records) == ["D_A_real", "D_A_fake", "D_B_real", "D_B_fake"]
    tags = dict(tensorboard_scalars(records[0]))
    assert tags["loss/D_A"] == 0.3 and tags["D/D_B_fake"] == 0.3 and tags["lr/G"] == 1e-4
    assert tags["train/img_per_s"] == 5.0 and "step" not in tags


def test_tensorboard_export_replays_the_log(run_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runner.invoke(app, ["report", str(run_dir), "--tensorboard"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["report", str(run_dir), "--tensorboard"])  # replaces, never duplicates
    assert again.exit_code == 0
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars("loss/G_GAN")]
    assert steps == [r["step"] for r in read_log(run_dir).train]
    assert "D/D_real" in accumulator.Tags()["scalars"]


def test_tensorboard_drops_what_an_earlier_try_logged_from_the_step_a_run_goes_on_from(tmp_path):
    """A resumed run (or a new one where a killed one left its events) logs those steps again:
    TensorBoard shows each step once, the new value."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from img2img.gan.record import TensorBoardWriter

    killed = TensorBoardWriter(tmp_path)
    for step in (10, 20, 30):
        killed.write({"step": step, "loss_G": 1.0})
    killed.close()
    resumed = TensorBoardWriter(tmp_path)  # from the checkpoint of step 10, logging every 20 steps now
    resumed.purge_step = 11
    for step in (30,):
        resumed.write({"step": step, "loss_G": 2.0})
    resumed.close()
    accumulator = EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    tag = accumulator.Tags()["scalars"][0]
    assert [(event.step, event.value) for event in accumulator.Scalars(tag)] == [(10, 1.0), (30, 2.0)]


@pytest.mark.parametrize("task", ["pix2pix", "cyclegan", "cut", "srgan"])
def test_each_tasks_sample_caption_names_as_many_columns_as_its_grid_has(task):
    """The report explains the sample grids, which carry no labels: per task, and right."""
    from img2img.config import make_config
    from img2img.tasks import TASKS

    tiny = {"ngf": 4, "ndf": 4, "size": 32, "device": "cpu"}
    tiny.update({"netG": "srvgg", "n_blocks": 1, "scale": 2, "netD": "unet", "perceptual": "none"} if task == "srgan"
                else {"netG": "resnet_1blocks" if task != "pix2pix" else "unet_32"})
    cfg = make_config(task, tiny)
    job = TASKS[task](cfg, torch.device("cpu"), Silent(), data=False)
    batch = ({"lr": torch.rand(2, 3, 16, 16), "hr": torch.rand(2, 3, 32, 32)} if task == "srgan"
             else {"A": torch.rand(2, 3, 32, 32) * 2 - 1, "B": torch.rand(2, 3, 32, 32) * 2 - 1})
    with torch.no_grad():
        columns = job.sample_columns(job.nets, batch)
    caption = TASKS[task].sample_caption
    assert caption.startswith("each row: ") and caption.split(";")[0].count("|") + 1 == len(columns), caption
