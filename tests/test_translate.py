"""Batched folder inference: sizes, batching, tiling, formats, pipelines, failures, export."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from img2img import infer, sharding
from img2img.cli import app
from img2img.data import images
from img2img.data.images import read_image
from img2img.gan.checkpoint import GeneratorSpec, load_generator, save_generator
from img2img.nets import registry
from img2img.tiling import run_tiled
from img2img.translator import Translator

from helpers import flat, generator_cases

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    resnet = {"in_ch": 3, "out_ch": 3, "ngf": 4, "n_blocks": 1, "norm": "instance", "use_dropout": False}
    save_generator(root / "resnet.safetensors", registry.build("resnet", **resnet),
                   GeneratorSpec(arch="resnet", hparams=resnet, pixel_range="-1,1"))
    srvgg = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_conv": 1, "upscale": 2, "act_type": "prelu"}
    sr = registry.build("srvgg", **srvgg)
    for p in sr.parameters():  # random weights with a real effect, so outputs depend on the input
        torch.nn.init.normal_(p, 0, 0.3)
    save_generator(root / "sr.safetensors", sr, GeneratorSpec(arch="srvgg", hparams=srvgg, pixel_range="0,1", scale=2))
    return root


def photo(path, height, width, channels=3, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(height * 1000 + width)
    top = 65535 if dtype == np.uint16 else 255
    smooth = cv2.GaussianBlur(rng.integers(0, top, (height, width, channels)).astype(np.float32), (0, 0), 3)
    pixels = np.clip((smooth - smooth.mean()) * 8 + top / 2, 0, top).astype(dtype)
    cv2.imwrite(str(path), pixels[..., 0] if channels == 1 else pixels)
    return path


def translate(models, name, source, out, **options):
    return infer.translate(models / name, str(source), out, options=infer.Options(**options))


def test_batches_of_mixed_sizes_give_the_same_images_as_one_at_a_time(models, tmp_path):
    for i, (h, w) in enumerate([(40, 52), (40, 52), (33, 17), (40, 52), (33, 17)]):
        photo(tmp_path / "in" / f"{i}.png", h, w)
    one = translate(models, "resnet.safetensors", tmp_path / "in", tmp_path / "one", batch_size=1, workers=0)
    many = translate(models, "resnet.safetensors", tmp_path / "in", tmp_path / "many", batch_size=4, workers=1)
    assert len(one) == len(many) == 5 and not any(r.error for r in one + many)
    for i in range(5):
        a, b = read_image(tmp_path / "one" / f"{i}.png"), read_image(tmp_path / "many" / f"{i}.png")
        assert a.size == b.size and (a.rgb - b.rgb).abs().max() <= 1 / 255


def test_batches_group_images_by_size(tmp_path):
    sizes = [(10, 12), (8, 8), (10, 12), (10, 12), (8, 8), (10, 12), (10, 12)]
    jobs = [infer.Job(photo(tmp_path / f"{i}.png", h, w), None) for i, (h, w) in enumerate(sizes)]
    batches = infer.size_batches(jobs, 4)
    assert sorted(i for batch in batches for i in batch) == list(range(7))
    assert all(len({sizes[i] for i in batch}) == 1 and len(batch) <= 4 for batch in batches)
    assert len(batches) == 3  # five of one size in 4 + 1, two of the other


def test_tiles_reproduce_the_whole_image_when_the_overlap_covers_the_receptive_field(models, tmp_path):
    image = read_image(photo(tmp_path / "big.png", 150, 230))
    module, spec = load_generator(models / "sr.safetensors")
    translator = Translator(module, spec, torch.device("cpu"))
    whole = translator.run(image.rgb[None])[0]
    largest_input = []
    run = translator.run
    translator.run = lambda x: (largest_input.append(x.numel()), run(x))[1]
    tiled = run_tiled(translator, image.rgb, tile=48, overlap=16, batch=3)
    assert tiled.shape == whole.shape == (3, 300, 460)
    assert (tiled - whole).abs().max() < 1e-4  # no seams
    assert max(largest_input) <= 3 * 3 * 48 * 48  # memory per pass is bounded by the tiles


def test_feathering_hides_seams_of_a_network_with_global_context(models, tmp_path):
    image = read_image(photo(tmp_path / "big.png", 120, 160))
    module, spec = load_generator(models / "resnet.safetensors")
    translator = Translator(module, spec, torch.device("cpu"))
    tiled = run_tiled(translator, image.rgb, tile=64, overlap=24, batch=4)
    # Across the middle of the overlap, neighbouring columns differ no more than elsewhere.
    column_steps = (tiled[:, :, 1:] - tiled[:, :, :-1]).abs().mean(dim=(0, 1))
    assert column_steps.max() < 4 * column_steps.median()


@pytest.mark.parametrize("arch, hparams", generator_cases())
def test_every_generator_says_whether_tiles_give_its_whole_image_result(arch, hparams):
    """Instance norm normalises each tile by itself and a U-Net's innermost level sees all of a
    tile: their tiles differ from the whole image (by 55 grey levels on average for a trained
    CycleGAN), so they are tiled only when asked or out of memory, and with a note."""
    from img2img.translator import tiling_advice

    net = registry.build(arch, **hparams)
    whole_image = arch == "unet" or hparams.get("norm") == "instance"
    assert tiling_advice(net, one_by_one=False)[0] == ("discouraged" if whole_image else "supported")
    assert tiling_advice(net, one_by_one=True)[0] == "discouraged"  # --bn-mode train: statistics per tile


class Messages(infer.Silent):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


@pytest.mark.parametrize("model, noted", [("resnet.safetensors", True), ("sr.safetensors", False)])
def test_tiles_of_a_whole_image_network_come_with_a_note_asked_or_not(models, tmp_path, model, noted):
    from img2img import memory

    photo(tmp_path / "in" / "a.png", 400, 400)
    module, spec = load_generator(models / model)
    need = memory.Need(400, 400, spec.scale, memory.widest_layer(module))
    budget = need.tiled(128, 1, False)  # far less than the whole image needs
    assert need.whole(1) > 2 * budget
    for options in ({"tile": 128}, {"max_memory": budget}):  # asked, and chosen to fit the budget
        told = Messages()
        results = infer.translate(models / model, str(tmp_path / "in"), tmp_path / "out" / next(iter(options)),
                                  options=infer.Options(workers=0, **options), reporter=told)
        assert not results[0].error
        assert any("tiled results of this model differ" in line for line in told.lines) == noted, told.lines
        if noted:
            assert any("instance norm" in line for line in told.lines), told.lines
        if "tile" in options:  # an image that fits in one tile is not split: nothing to note
            whole = Messages()
            infer.translate(models / model, str(tmp_path / "in"), tmp_path / "out" / "one_tile",
                            options=infer.Options(workers=0, tile=512), reporter=whole)
            assert not any("tiled results" in line for line in whole.lines), whole.lines
        if "max_memory" in options:  # the tile it chose is one that fits, and it says which
            chosen = [line for line in told.lines if "px tiles" in line]
            assert chosen and "128 px tiles" in chosen[0] and not any("would fit" in line for line in told.lines), \
                told.lines


def test_out_of_memory_retries_with_smaller_batches_then_tiles(models, tmp_path, monkeypatch):
    for i in range(4):
        photo(tmp_path / "in" / f"{i}.png", 160, 160)
    messages = []
    real_run = Translator.run

    def tight_memory(self, x):
        if x.numel() > 3 * 100 * 100:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(self, x)

    monkeypatch.setattr(Translator, "run", tight_memory)

    class Recorder(infer.Silent):
        def message(self, text):
            messages.append(text)

    results = infer.translate(models / "resnet.safetensors", str(tmp_path / "in"), tmp_path / "out",
                              options=infer.Options(batch_size=4, workers=0, tile_overlap=8), reporter=Recorder())
    assert not any(r.error for r in results) and len(list((tmp_path / "out").iterdir())) == 4
    assert any("batch size 2" in m for m in messages) and any("tiles" in m for m in messages)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp16_overflow_is_retried_in_fp32_and_bf16_is_not_checked(models, dtype):
    """fp16 output is checked (and its batch run again in fp32 when not finite); bf16 has fp32's
    range, and checking would make the host wait for the device after every batch."""
    module, spec = load_generator(models / "resnet.safetensors")
    translator = Translator(module, spec, torch.device("cpu"))
    translator.dtype = dtype
    translator.forward = lambda x: torch.full_like(x, float("inf"))
    y = translator.run(torch.rand(1, 3, 16, 16))
    retried = dtype == torch.float16
    assert translator.fp32_retries == int(retried)
    assert bool((y < 1).any()) == retried  # unchecked, inf clamps to white


@pytest.mark.parametrize("amp", ["auto", "off", "fp16", "bf16"])
def test_a_cpu_translates_in_bf16_only_when_asked(models, tmp_path, amp):
    """auto keeps a CPU in fp32, the precision of the reference outputs; --amp bf16 is honoured
    there (1.7x faster on CPUs with bf16 instructions) within the stated bf16 tolerance."""
    module, spec = load_generator(models / "resnet.safetensors")
    translator = Translator(module, spec, torch.device("cpu"), amp=amp)
    assert translator.dtype == (torch.bfloat16 if amp == "bf16" else None)
    photo(tmp_path / "in" / "a.png", 48, 64)
    for name in ("off", amp):
        result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), str(tmp_path / "in"),
                                     str(tmp_path / name), "--device", "cpu", "--amp", name])
        assert result.exit_code == 0, result.output
    fp32, ours = (read_image(tmp_path / name / "a.png").rgb for name in ("off", amp))
    psnr = 10 * torch.log10(1 / (ours - fp32).pow(2).mean().clamp_min(1e-12))
    assert psnr >= 40 if amp == "bf16" else torch.equal(ours, fp32)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".tif"])
def test_every_format_keeps_its_extension(models, tmp_path, ext):
    photo(tmp_path / "in" / f"x{ext}", 24, 20)
    results = translate(models, "resnet.safetensors", tmp_path / "in", tmp_path / "out", workers=0)
    assert not results[0].error and read_image(tmp_path / "out" / f"x{ext}").size == (24, 20)
    if os.name == "posix":  # readable as any new file is, not private like a temporary one
        assert (tmp_path / "out" / f"x{ext}").stat().st_mode & 0o777 == 0o666 & ~images.UMASK


def test_sixteen_bit_alpha_and_grayscale_are_kept(models, tmp_path):
    photo(tmp_path / "in" / "deep.png", 20, 24, dtype=np.uint16)
    photo(tmp_path / "in" / "gray.png", 20, 24, channels=1)
    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 24, dtype=np.uint8)
    PILImage.fromarray(rgba, "RGBA").save(tmp_path / "in" / "alpha.png")
    translate(models, "sr.safetensors", tmp_path / "in", tmp_path / "out", workers=0)
    deep = cv2.imread(str(tmp_path / "out" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (40, 48, 3)
    assert read_image(tmp_path / "out" / "gray.png").gray
    alpha = read_image(tmp_path / "out" / "alpha.png").alpha
    assert alpha is not None and alpha.shape == (1, 40, 48)
    assert alpha[0, :, 2].mean() < 0.1 and alpha[0, :, -2].mean() > 0.9  # upscaled, not replaced


def test_ext_chooses_the_output_format(models, tmp_path):
    photo(tmp_path / "in" / "a.jpg", 16, 16)
    translate(models, "resnet.safetensors", tmp_path / "in", tmp_path / "out", ext=".png", workers=0)
    assert (tmp_path / "out" / "a.png").is_file()


@pytest.mark.parametrize("form", ["folder", "stdin"])
@pytest.mark.parametrize("names", [("a.png", "a.jpg"), ("b.PNG", "b.png"), ("c.tif", "c.TIFF"),
                                   ("d.jpg", "d.png", "d.webp")])
def test_inputs_whose_results_would_be_one_file_are_refused_before_any_work(models, tmp_path, form, names):
    sources = [photo(tmp_path / "in" / name, 16, 16 + 4 * i) for i, name in enumerate(names)]
    given, stdin = (str(tmp_path / "in"), None) if form == "folder" else ("-", "".join(f"{p}\n" for p in sources))
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), "--ext", "png",
                                 given, str(tmp_path / "out")], input=stdin)
    assert result.exit_code == 2, result.output
    message = flat(result.stderr)
    assert all(str(p) in message for p in sources) and "leave out --ext" in message
    assert message.count("be written to") == 1  # one line per result, however many inputs share it
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_stdin_takes_a_path_listed_twice_once_and_leaves_out_earlier_results(models, tmp_path):
    shots = tmp_path / "shots"
    sources = [photo(shots / "a.png", 16, 16), photo(shots / "deep" / "b.png", 16, 20)]
    args = ["translate", "--model", str(models / "resnet.safetensors"), "--json", "-", str(shots / "out")]
    spellings = [sources[0], sources[1], sources[0], sources[0].parent / "deep" / ".." / "a.png"]
    first = runner.invoke(app, args, input="".join(f"{p}\n" for p in spellings))
    assert first.exit_code == 0, first.output
    assert len(first.stdout.splitlines()) == 2
    # find shots -name '*.png' again: it now lists the results in shots/out too.
    listed = sorted(str(p) for p in shots.rglob("*.png"))
    assert len(listed) == 4
    again = runner.invoke(app, args, input="\n".join(listed))
    assert again.exit_code == 0, again.output
    assert sorted(json.loads(line)["input"] for line in again.stdout.splitlines()) == sorted(map(str, sources))
    assert not (shots / "out" / "out").exists()


@pytest.mark.parametrize("listed", [["../a/x.png", "y.png"], ["sub/../../a/x.png", "y.png"], ["../a/x.png"]])
def test_stdin_paths_with_dot_dot_are_written_inside_output_never_onto_an_input(models, tmp_path, monkeypatch, listed):
    x, y = photo(tmp_path / "a" / "x.png", 16, 16), photo(tmp_path / "b" / "y.png", 16, 20)
    (tmp_path / "b" / "sub").mkdir()
    before = x.read_bytes(), y.read_bytes()
    monkeypatch.chdir(tmp_path / "b")
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), "--overwrite", "-",
                                 "../out"], input="\n".join(listed))
    assert result.exit_code == 0, result.output
    assert (x.read_bytes(), y.read_bytes()) == before
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png") if p not in (x, y))
    assert written == (["out/a/x.png", "out/y.png"] if len(listed) == 2 else ["out/a/x.png"])


def test_a_path_from_stdin_lands_where_it_is_listed_whatever_else_is_listed(models, tmp_path, monkeypatch):
    """find | translate - OUT finishes what an earlier run left, also when the list changed."""
    photo(tmp_path / "in" / "names" / "with space.png", 16, 16)
    photo(tmp_path / "in" / "orient" / "o1.png", 16, 20)
    monkeypatch.chdir(tmp_path)
    args = ["translate", "--model", str(models / "resnet.safetensors"), "--json", "-", "out"]
    first = runner.invoke(app, args, input="in/names/with space.png\n")
    second = runner.invoke(app, args, input=f"in/orient/o1.png\n{tmp_path}/in/../in/names/with space.png\n")
    assert first.exit_code == second.exit_code == 0, (first.output, second.output)
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["in/names/with space.png", "in/orient/o1.png"]  # the absolute spelling: the same place
    assert "skipped 1" in second.output
    marked = runner.invoke(app, args[:-1] + ["marked"], input=f"{tmp_path}/in/./names/with space.png\n")
    assert marked.exit_code == 0 and (tmp_path / "marked" / "names" / "with space.png").is_file()  # rsync -R's mark
    photo(tmp_path / "x" / "w.png", 16, 16)
    photo(tmp_path / "in" / "x" / "w.png", 16, 16)
    monkeypatch.chdir(tmp_path / "in")  # ../x/w.png (outside) and x/w.png: one place, and no --ext to blame
    clash = runner.invoke(app, args[:-1] + ["clash"], input="../x/w.png\nx/w.png\n")
    assert clash.exit_code == 2 and "would both be written" in clash.stderr and "--ext" not in clash.stderr
    assert "/./" in flat(clash.stderr)


def test_json_lines_on_stdout_and_failures_named_with_exit_code_1(models, tmp_path):
    photo(tmp_path / "in" / "good.png", 16, 20)
    photo(tmp_path / "in" / "sub" / "good2.jpg", 18, 22)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), "--json",
                                 "--workers", "0", str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    good = {r["input"].split("/")[-1]: r for r in records}
    assert good["good.png"]["size"] == [16, 20] and good["good.png"]["ms"] >= 0
    assert "broken.png" in good["broken.png"]["error"]
    assert (tmp_path / "out" / "sub" / "good2.jpg").is_file()
    assert "broken.png" in result.stderr
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]  # no temp files


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("content", [b"junk", b"\x89PNG\r\n\x1a\n truncated"], ids=["not_an_image", "truncated"])
def test_a_failing_file_with_a_newline_in_its_name_keeps_its_reason(models, tmp_path, workers, content):
    """One line per failure, the name's newline escaped: cut at it, the line lost the reason."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "evil\nname.png").write_bytes(content)
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), "--json",
                                 "--workers", str(workers), str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 1
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["input"].endswith("evil\nname.png")
    assert record["error"].startswith(f"{tmp_path}/in/evil\\nname.png: ")
    assert record["error"] in result.stderr.splitlines()[-1]


def test_usage_errors_exit_2(models, tmp_path):
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), "--ext", "gif",
                                 str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), "-", str(tmp_path / "out")],
                           input="")
    assert result.exit_code == 2 and "no paths" in result.stderr


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".tif", ".TIFF"])
def test_one_image_to_an_output_named_like_an_image_writes_that_file(models, tmp_path, ext):
    source = photo(tmp_path / "in.png", 24, 20)
    target = tmp_path / "new" / f"result{ext}"
    result = runner.invoke(app, ["translate", "--model", str(models / "sr.safetensors"), str(source), str(target)])
    assert result.exit_code == 0, result.output
    assert target.is_file() and read_image(target).size == (48, 40)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporaries left


def test_an_output_file_that_cannot_be_right_is_refused(models, tmp_path):
    source = photo(tmp_path / "in.png", 24, 20)
    command = ["translate", "--model", str(models / "resnet.safetensors"), str(source)]
    result = runner.invoke(app, [*command, str(tmp_path / "out.png"), "--ext", "jpg"])
    assert result.exit_code == 2 and "different formats" in flat(result.stderr)
    result = runner.invoke(app, [*command, str(tmp_path / "out.png"), "--gallery"])
    assert result.exit_code == 2 and "give a folder" in flat(result.stderr)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("form", ["folder", "file", "stdin"])
def test_an_output_that_would_replace_the_inputs_is_refused_even_with_overwrite(models, tmp_path, form):
    source = photo(tmp_path / "in" / "x.png", 24, 20)
    original = source.read_bytes()
    given, output, stdin = {"folder": (tmp_path / "in", tmp_path / "in", None),
                            "file": (source, source, None),
                            "stdin": ("-", tmp_path / "in", f"{source}\n")}[form]
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), "--overwrite",
                                 str(given), str(output)], input=stdin)
    assert result.exit_code == 2 and "choose another OUTPUT" in flat(result.stderr)
    assert source.read_bytes() == original and [p.name for p in source.parent.iterdir()] == ["x.png"]


def test_a_folder_named_like_an_image_stays_a_folder(models, tmp_path):
    source = photo(tmp_path / "in.png", 24, 20)
    (tmp_path / "out.png").mkdir()
    assert not translate(models, "resnet.safetensors", source, tmp_path / "out.png", workers=0)[0].error
    assert (tmp_path / "out.png" / "in.png").is_file()


def test_a_rerun_finishes_an_interrupted_job(models, tmp_path):
    for i in range(3):
        photo(tmp_path / "in" / f"{i}.png", 16, 16)
    translate(models, "resnet.safetensors", tmp_path / "in" / "0.png", tmp_path / "out", workers=0)
    results = translate(models, "resnet.safetensors", tmp_path / "in", tmp_path / "out", workers=0)
    assert sorted((r.job.source.name, r.skipped) for r in results) == [("0.png", True), ("1.png", False), ("2.png", False)]


def test_files_are_sharded_over_several_devices(models, tmp_path):
    for i in range(5):
        photo(tmp_path / "in" / f"{i}.png", 16, 16 + i)
    results = sharding.translate_sharded(models / "resnet.safetensors", str(tmp_path / "in"), tmp_path / "out",
                                      sharding.parse_devices("cpu,cpu"), options=infer.Options(workers=0))
    assert len(results) == 5 and not any(r.error for r in results)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.png" for i in range(5)]


def test_onnx_export_matches_torch_on_an_odd_size(models, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    result = runner.invoke(app, ["export", str(tmp_path / "g.onnx"), "--model", str(models / "resnet.safetensors")])
    assert result.exit_code == 0, result.output
    module, spec = load_generator(models / "resnet.safetensors")
    x = torch.rand(2, 3, 37, 45)
    expected = Translator(module, spec, torch.device("cpu")).run(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "g.onnx")).run(None, {"image": x.numpy()})[0]
    assert got.shape == (2, 3, 37, 45)
    assert np.abs(got - expected).max() < 1e-4


SMALL_GENERATORS = {
    "resnet": {"ngf": 4, "n_blocks": 1, "norm": "instance"}, "unet": {"ngf": 4, "num_downs": 5, "norm": "batch"},
    "msrresnet": {"num_feat": 8, "num_block": 1, "upscale": 3}, "rrdbnet": {"num_feat": 8, "num_block": 1, "num_grow_ch": 4},
    "srvgg": {"num_feat": 8, "num_conv": 2, "upscale": 2}, "cut_resnet": {"ngf": 4, "n_blocks": 1, "norm": "instance"},
}


@pytest.mark.parametrize("arch", sorted(SMALL_GENERATORS))
def test_every_generator_exports_a_graph_that_translates_as_translate_does(arch, tmp_path):
    """At an odd size, and smaller than the network's minimum, where translate pads by
    reflection as far as the image reaches and replicates the rest."""
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    assert set(SMALL_GENERATORS) == set(registry.names("generator"))
    torch.manual_seed(0)
    module = registry.build(arch, **SMALL_GENERATORS[arch])
    for p in module.parameters():  # weights with a real effect, so that borders matter
        torch.nn.init.normal_(p, 0, 0.2)
    spec = GeneratorSpec(arch=arch, hparams=SMALL_GENERATORS[arch], scale=int(getattr(module, "scale", 1)),
                         pixel_range="0,1" if arch in ("msrresnet", "rrdbnet", "srvgg") else "-1,1")
    save_generator(tmp_path / "g.safetensors", module, spec)
    result = runner.invoke(app, ["export", str(tmp_path / "g.onnx"), "--model", str(tmp_path / "g.safetensors")])
    assert result.exit_code == 0, result.output
    module, spec = load_generator(tmp_path / "g.safetensors")
    session = ort.InferenceSession(str(tmp_path / "g.onnx"))
    for height, width in ((37, 45), (3, 5), (1, 40)):
        x = torch.rand(1, 3, height, width)
        expected = Translator(module, spec, torch.device("cpu")).run(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4, (height, width)


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_export_to_a_folder_is_a_usage_error(models, tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", out, "--model", str(models / "resnet.safetensors")])
    assert result.exit_code == 2 and "is a folder: give the file to write" in result.stderr, result.output


@pytest.mark.parametrize("out", ["m2.png", "m2.JPG", "m2.safetensors", "m2.gif", "m2.onnx.png"])
def test_export_to_a_name_of_another_kind_of_file_is_a_usage_error(models, tmp_path, out):
    result = runner.invoke(app, ["export", str(tmp_path / out), "--model", str(models / "resnet.safetensors")])
    assert result.exit_code == 2 and "name the file .onnx (e.g. m2.onnx)" in flat(result.stderr), result.output
    assert not (tmp_path / out).exists()


@pytest.mark.parametrize("opset, code, message", [(5, 2, "needs opset 11 or newer"), (99, 2, "knows opsets up to"),
                                                  (16, 1, "failed at --opset 16")])
def test_an_opset_the_exporter_cannot_use_is_one_line_and_no_file(models, tmp_path, monkeypatch, opset, code, message):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    if code == 1:  # an opset onnx knows and the exporter refuses (which ones depends on its version)
        def refuse(*args, **kwargs):
            raise RuntimeError(f"Unsupported ONNX opset version: {opset}")
        monkeypatch.setattr(torch.onnx, "export", refuse)
    out = tmp_path / "g.onnx"
    result = runner.invoke(app, ["export", str(out), "--model", str(models / "resnet.safetensors"),
                                 "--opset", str(opset)])
    assert result.exit_code == code and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout and not out.exists()


@pytest.mark.parametrize("errno_code, said", [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left")])
def test_an_export_that_cannot_be_written_says_so_not_that_the_architecture_failed(models, tmp_path, monkeypatch,
                                                                                   errno_code, said):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")

    def refused(*args, **kwargs):
        raise OSError(errno_code, os.strerror(errno_code), str(args[2]))

    monkeypatch.setattr(torch.onnx, "export", refused)
    out = tmp_path / "g.onnx"
    result = runner.invoke(app, ["export", str(out), "--model", str(models / "resnet.safetensors")])
    assert result.exit_code == 1 and f"{out}: could not be written: {said}" in flat(result.stderr), result.output
    assert "architecture" not in result.stderr and not out.exists()


def test_a_one_channel_model_sees_the_luma_of_colour_images(tmp_path):
    """Not the red channel: pure red and white gave the same output before."""
    torch.manual_seed(0)
    hparams = {"num_in_ch": 1, "num_out_ch": 1, "num_feat": 8, "num_conv": 2, "upscale": 2, "act_type": "prelu"}
    module = registry.build("srvgg", **hparams)
    save_generator(tmp_path / "gray.safetensors", module, GeneratorSpec(arch="srvgg", hparams=hparams,
                                                                        pixel_range="0,1", scale=2))
    colours = {"red": (0, 0, 255), "white": (255, 255, 255), "blue": (255, 0, 0), "gray": (90, 90, 90)}
    for name, bgr in colours.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "in" / f"{name}.png"), np.full((8, 8, 3), bgr, np.uint8))
    translate(tmp_path, "gray.safetensors", tmp_path / "in", tmp_path / "out", workers=0)
    for name, (b, g, r) in colours.items():
        luma = torch.full((1, 1, 8, 8), (0.299 * r + 0.587 * g + 0.114 * b) / 255)
        with torch.no_grad():
            expected = module(luma).clamp(0, 1)[0, 0].numpy() * 255
        got = cv2.imread(str(tmp_path / "out" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert got.ndim == 2 or np.ptp(got, axis=2).max() == 0, name  # gray out
        assert np.abs((got if got.ndim == 2 else got[..., 0]) - expected).max() <= 0.51, name


@pytest.mark.parametrize("source, output, message", [
    ("folder", "out.png", "is named like an image, but INPUT .* is a folder"),
    ("-", "out.jpg", "is named like an image, but INPUT is a list of paths"),
    ("file", "out.gif", "img2img writes png, jpg, webp, bmp and tif, not gif"),
])
def test_an_output_named_like_an_image_is_never_made_a_folder(models, tmp_path, source, output, message):
    image = photo(tmp_path / "in" / "a.png", 16, 16)
    given = {"folder": str(tmp_path / "in"), "-": "-", "file": str(image)}[source]
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), given,
                                 str(tmp_path / output)], input=f"{image}\n")
    assert result.exit_code == 2 and re.search(message, flat(result.stderr)), result.stderr
    assert not (tmp_path / output).exists()


def test_files_of_a_folder_that_are_no_images_are_named(models, tmp_path):
    photo(tmp_path / "in" / "a.png", 16, 16)
    (tmp_path / "in" / "anim.gif").write_bytes(b"GIF89a")
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / ".DS_Store").write_bytes(b"x")  # hidden: never worth a word
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), str(tmp_path / "in"),
                                 str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    assert f"left out 2 file(s) that are no images by their names (png, jpg, webp, bmp, tif), e.g. {tmp_path}/in/anim.gif" \
        in flat(result.stderr)


@pytest.mark.parametrize("out", ["g.safetensors", "photo.png", "config.yaml"])
def test_export_never_replaces_the_model_or_a_file_that_is_no_onnx_graph(models, tmp_path, out):
    import shutil

    shutil.copy(models / "resnet.safetensors", tmp_path / "g.safetensors")
    photo(tmp_path / "photo.png", 8, 8)
    (tmp_path / "config.yaml").write_text("steps: 1\n")
    before = (tmp_path / out).read_bytes()
    result = runner.invoke(app, ["export", str(tmp_path / out), "--model", str(tmp_path / "g.safetensors")])
    assert result.exit_code == 2 and "the export would replace" in result.stderr, result.stderr
    assert (tmp_path / out).read_bytes() == before


def test_a_newline_in_output_or_left_out_names_stays_on_one_line(models, tmp_path):
    photo(tmp_path / "in" / "a.png", 16, 16)
    (tmp_path / "in" / "a\nb.txt").write_text("x")
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), str(tmp_path / "in"),
                                 str(tmp_path / "out")])
    assert result.exit_code == 0 and "a\\nb.txt" in result.stderr
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), str(tmp_path / "in"),
                                 str(tmp_path / "out\ndir.png")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_resize_keeps_the_aspect_and_a_resize_over_the_pixel_limit_is_refused_before_any_work(models, tmp_path,
                                                                                              monkeypatch):
    photo(tmp_path / "in" / "wide.png", 10, 30)
    args = ["translate", "--model", str(models / "resnet.safetensors"), str(tmp_path / "in"), str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--resize", "20"])
    assert result.exit_code == 0 and read_image(tmp_path / "out" / "wide.png").size == (20, 60), result.output
    written = (tmp_path / "out" / "wide.png").read_bytes()
    monkeypatch.setenv("IMG2IMG_MAX_PIXELS", "1000")
    result = runner.invoke(app, [*args, "--overwrite", "--resize", "20"])
    assert result.exit_code == 2 and "--resize 20 makes" in result.stderr and "60x20 px" in flat(result.stderr)
    assert (tmp_path / "out" / "wide.png").read_bytes() == written  # no work began
    result = runner.invoke(app, [*args[:-1], str(tmp_path / "new" / "out"), "--resize", "20"])
    assert result.exit_code == 2 and not (tmp_path / "new").exists()  # nor is a folder left behind


def test_an_input_folder_inside_output_is_named_as_such(models, tmp_path):
    photo(tmp_path / "in" / "sub" / "c.png", 16, 16)
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), str(tmp_path / "in" / "sub"),
                                 str(tmp_path / "in")])
    assert result.exit_code == 2 and "lies inside OUTPUT" in flat(result.stderr), result.output


def test_a_folder_where_a_result_goes_fails_that_image_not_skipped_as_done(models, tmp_path):
    photo(tmp_path / "in" / "a.png", 16, 16)
    photo(tmp_path / "in" / "b.png", 16, 16)
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), "--json",
                                 str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "a.png is a folder" in flat(result.stderr), result.output
    assert read_image(tmp_path / "out" / "b.png").size == (16, 16)


def test_a_result_name_longer_than_the_file_system_takes_fails_that_image_alone(models, tmp_path):
    photo(tmp_path / "in" / f"{'a' * 251}.png", 16, 16)  # 255 bytes; 256 as .webp
    photo(tmp_path / "in" / "b.png", 16, 16)
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"), "--ext", "webp",
                                 str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "File name too long" in flat(result.stderr), result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b.webp"]


def test_a_name_that_is_no_utf8_keeps_its_bytes_in_json(models, tmp_path):
    if sys.platform == "darwin":
        pytest.skip("macOS file systems take UTF-8 names only")
    source = photo(tmp_path / "in" / "x.png", 16, 16)
    named = os.path.join(os.fsencode(tmp_path / "in"), b"caf\xe9.png")
    os.rename(source, named)
    result = subprocess.run([sys.executable, "-m", "img2img", "translate", "--json", "--model",
                             str(models / "resnet.safetensors"), str(tmp_path / "in"), str(tmp_path / "out")],
                            capture_output=True)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert os.fsencode(record["input"]) == named and os.path.exists(os.fsencode(record["output"]))


@pytest.mark.parametrize("output", ["out", "out.png", "out.gif"])
def test_a_missing_input_is_named_as_missing_whatever_output_is_called(models, tmp_path, output):
    result = runner.invoke(app, ["translate", "--model", str(models / "resnet.safetensors"),
                                 str(tmp_path / "in" / "missing.png"), str(tmp_path / output)])
    assert result.exit_code == 2 and f"{tmp_path / 'in' / 'missing.png'}: no such file or folder" in flat(result.stderr)
    assert "is a folder" not in result.stderr
