"""Huge images in bounded memory: strip-wise blending and streaming writers give the same
files as the full-size blend did, and memory grows by a few bytes per output pixel at most."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from helpers import one_thread  # noqa: F401  (a fixture)
from img2img import infer, memory
from img2img.data import images
from img2img.data.images import read_image
from img2img.gan.checkpoint import GeneratorSpec, load_generator, save_generator
from img2img.nets import registry
from img2img.tiling import AlphaRows, edge_ramp, tile_starts
from img2img.translator import Translator, scale_alpha


@pytest.fixture(scope="module")
def sr_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr")
    torch.manual_seed(0)
    for scale in (2, 4):
        hparams = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_conv": 1, "upscale": scale, "act_type": "prelu"}
        net = registry.build("srvgg", **hparams)
        for p in net.parameters():  # random weights with a real effect, so outputs depend on the input
            torch.nn.init.normal_(p, 0, 0.3)
        save_generator(root / f"x{scale}.safetensors", net,
                       GeneratorSpec(arch="srvgg", hparams=hparams, pixel_range="0,1", scale=scale))
    return root


def reference_tiled(translator, rgb, tile, overlap, batch):
    """The blend as it was before strips: full-size float sums and weights, then one division."""
    _, height, width = rgb.shape
    scale = translator.scale
    out = torch.zeros(3, height * scale, width * scale)
    weight = torch.zeros(1, height * scale, width * scale)
    th, tw = min(tile, height), min(tile, width)
    boxes = [(y, x) for y in tile_starts(height, th, overlap) for x in tile_starts(width, tw, overlap)]
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        results = translator.run(torch.stack([rgb[:, y : y + th, x : x + tw] for y, x in chunk])).float().cpu()
        for (y, x), result in zip(chunk, results):
            ramp = (edge_ramp(th * scale, overlap * scale, y > 0, y + th < height)[:, None]
                    * edge_ramp(tw * scale, overlap * scale, x > 0, x + tw < width)[None, :])
            rows, cols = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            out[:, rows, cols] += result * ramp
            weight[:, rows, cols] += ramp
    return out / weight


def reference_pixels(rgb, alpha, gray, bits):
    """What write_image handed the encoder before: whole planes converted at once (OpenCV order)."""
    scale, dtype = (65535.0, np.uint16) if bits == 16 else (255.0, np.uint8)
    rgb = rgb.clamp(0, 1)
    planes = [rgb.mean(0, keepdim=True)] if gray and alpha is None else [rgb[[2, 1, 0]]]
    if alpha is not None:
        planes.append(alpha.clamp(0, 1))
    pixels = np.rint(torch.cat(planes).permute(1, 2, 0).numpy() * scale).astype(dtype)
    return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels


def smooth(height, width, channels, top, seed):
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((height, width, channels)).astype(np.float32), (0, 0), 2)
    noise = noise.reshape(height, width, channels)
    return np.clip((noise - noise.mean()) * 6 + 0.5, 0, 1) * top


CASES = {  # input file -> (channels, bits); each is written in its own format
    "rgb8.png": (3, 8),
    "rgba16.png": (4, 16),
    "gray16.tif": (1, 16),
    "rgba8.tif": (4, 8),
    "rgb8.jpg": (3, 8),
    "rgba8.webp": (4, 8),
}


@pytest.fixture(scope="module")
def tiled_folder(sr_models, tmp_path_factory):
    """One run over a folder of every case: several images in flight, batches of tiles that
    span two rows of tiles."""
    root = tmp_path_factory.mktemp("tiled")
    for name, (channels, bits) in CASES.items():
        top, dtype = (65535, np.uint16) if bits == 16 else (255, np.uint8)
        stored = smooth(53, 71, channels, top, seed=channels * bits).round().astype(dtype)
        (root / "in").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "in" / name), stored[:, :, 0] if channels == 1 else stored)
    options = infer.Options(tile=24, tile_overlap=8, batch_size=3, workers=0)
    results = infer.translate(sr_models / "x2.safetensors", str(root / "in"), root / "out", options=options)
    assert not any(r.error for r in results), [r.error for r in results]
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_strip_blending_writes_what_the_full_size_blend_wrote(sr_models, tiled_folder, name):
    image = read_image(tiled_folder / "in" / name)
    module, spec = load_generator(sr_models / "x2.safetensors")
    translator = Translator(module, spec, torch.device("cpu"))
    lossless = name.endswith((".png", ".tif"))
    expected = reference_pixels(reference_tiled(translator, image.rgb, 24, 8, 3), scale_alpha(image.alpha, 2),
                                image.gray, image.bits if lossless else 8)
    if not lossless:  # the same pixels through the same encoder
        expected = cv2.imdecode(cv2.imencode(Path(name).suffix, expected)[1], cv2.IMREAD_UNCHANGED)
    written = images.decode_image(tiled_folder / "out" / name).pixels  # OpenCV's, but straight alpha
    assert written.shape == expected.shape and written.dtype == expected.dtype
    assert np.array_equal(written, expected)


def test_no_temporary_file_is_left(tiled_folder):
    assert sorted(p.name for p in (tiled_folder / "out").iterdir()) == sorted(CASES)


def test_gray_with_alpha_keeps_both_planes_in_8_bit_png(sr_models, tmp_path):
    la = (smooth(40, 50, 2, 255, seed=3)).round().astype(np.uint8)
    PILImage.fromarray(la, "LA").save(tmp_path / "la.png")
    whole = infer.translate(sr_models / "x2.safetensors", str(tmp_path / "la.png"), tmp_path / "whole",
                            options=infer.Options(workers=0))
    tiled = infer.translate(sr_models / "x2.safetensors", str(tmp_path / "la.png"), tmp_path / "tiled",
                            options=infer.Options(tile=20, tile_overlap=6, workers=0))
    assert not whole[0].error and not tiled[0].error
    a, b = PILImage.open(tmp_path / "whole" / "la.png"), PILImage.open(tmp_path / "tiled" / "la.png")
    assert a.mode == b.mode == "LA" and a.size == b.size == (100, 80)
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))[..., 1].max() == 0  # alpha exactly


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_alpha_rows_match_the_full_size_upscale(scale):
    alpha = torch.rand(1, 41, 29)
    rows = AlphaRows(lambda r: alpha[:, r], 41, scale)
    strips = torch.cat([rows.rows(t, min(t + 23, 41 * scale)) for t in range(0, 41 * scale, 23)], 1)
    # Exact where 1/scale is exact in binary; at x3 the source coordinates round differently.
    assert (strips - scale_alpha(alpha, scale)).abs().max() <= (0 if scale in (2, 4) else 1e-5)


def peak_rss_growth(run) -> int:
    """Bytes the peak resident set grew by while `run()` ran (Linux: VmHWM, reset first)."""
    read = lambda: int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = read()
    run()
    return read() - before


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_grows_by_a_byte_per_output_pixel_streamed_and_the_buffer_for_jpeg(sr_models, tmp_path, one_thread):
    # Taller images of one width: the window (one tile row) stays the same, so what grows
    # with the image is what is held for the whole image.
    width, heights = 256, (128, 2048)  # x4: 0.5 and 8.4 megapixels out
    for height in heights:
        cv2.imwrite(str(tmp_path / f"{height}.png"), smooth(height, width, 3, 255, seed=height).astype(np.uint8))

    def run(height, ext):
        options = infer.Options(tile=64, tile_overlap=16, workers=0, ext=ext, overwrite=True)
        return lambda: infer.translate(sr_models / "x4.safetensors", str(tmp_path / f"{height}.png"), tmp_path / "out",
                                       options=options)

    run(heights[0], ".png")()  # warm-up: libraries, allocator pools
    for ext, bound, tries in ((".png", 1.0, 2), (".jpg", 4.0, 1)):  # PNG streams; JPEG has one uint8 buffer
        slopes = []
        for _ in range(tries):  # the allocator's noise only ever adds: the smallest slope is the truest
            small, large = (peak_rss_growth(run(height, ext)) for height in heights)
            slopes.append((large - small) / ((heights[1] - heights[0]) * width * 16))
        assert min(slopes) <= bound, f"{ext}: {min(slopes):.2f} bytes per output pixel"


def test_over_budget_a_buffered_output_moves_to_disk_and_says_so(sr_models, tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), smooth(60, 80, 3, 255, seed=1).astype(np.uint8))
    messages = []

    class Recorder(infer.Silent):
        def message(self, text):
            messages.append(text)

    budget = 60 * 80 * 16 * 3 // 2  # half the output's bytes
    results = infer.translate(sr_models / "x4.safetensors", str(tmp_path / "x.png"), tmp_path / "out",
                              options=infer.Options(tile=32, tile_overlap=8, batch_size=4, workers=0, ext=".jpg",
                                                    max_memory=budget), reporter=Recorder())
    assert not results[0].error and read_image(tmp_path / "out" / "x.jpg").size == (240, 320)
    assert any("file beside them" in m for m in messages), messages
    assert any("tile(s) per pass" in m for m in messages), messages
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.jpg"]


def test_over_budget_a_tile_that_fits_is_chosen_or_advised_or_none_is_said_to_fit():
    need = memory.Need(6000, 8000, 2, 64)
    for tile in (1024, 512, 256):
        needed = need.tiled(tile, 1, False)
        chosen = memory.plan(need, 1024, 1, False, 2**62, needed, None, explicit_tile=False)
        assert (chosen.tile, chosen.messages) == (tile, [])  # without --tile: the largest that fits
        asked = memory.plan(need, 1024, 1, False, 2**62, needed, None, explicit_tile=True)
        assert asked.tile == 1024  # --tile is the user's: advised, not changed
        if tile == 1024:
            assert asked.messages == []
        else:
            assert f"--tile {tile} would fit" in asked.messages[-1], asked.messages
    floor = need.tiled(memory.SMALLEST_TILE, 1, False)
    for explicit in (False, True):
        plan = memory.plan(need, 1024, 1, False, 2**62, floor - 1, None, explicit_tile=explicit)
        assert "no tile size fits" in plan.messages[-1] and "raise --max-memory" in plan.messages[-1], plan.messages
        assert plan.tile == (1024 if explicit else memory.SMALLEST_TILE)
        assert ("going on with 64 px tiles" in plan.messages[-1]) is not explicit


def test_a_size_that_is_not_one_is_a_usage_error(sr_models, tmp_path):
    from typer.testing import CliRunner

    from img2img.cli import app

    result = CliRunner().invoke(app, ["translate", "--model", str(sr_models / "x2.safetensors"), "--max-memory", "lots",
                                      str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2 and "512M" in result.stderr


def test_memory_sizes_parse_as_people_write_them():
    assert memory.parse_size("512M") == 512 * 2**20
    assert memory.parse_size("1.5GiB") == 3 * 2**29
    assert memory.parse_size("2gb") == 2 * 2**30 and memory.parse_size("4096") == 4096
    with pytest.raises(ValueError):
        memory.parse_size("lots")


def test_a_failing_encoder_fails_that_file_alone_and_leaves_nothing(sr_models, tmp_path, monkeypatch):
    import errno

    import png

    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), smooth(40, 40, 3, 255, seed=2).astype(np.uint8))
    real = png.Writer.write_packed

    def full_disk(self, handle, rows):
        if handle.name.split("/")[-1].startswith(".a.png"):
            next(iter(rows))
            raise OSError(errno.EFBIG, "File too large")  # this file alone (a full disk stops the run)
        return real(self, handle, rows)

    monkeypatch.setattr(png.Writer, "write_packed", full_disk)
    results = infer.translate(sr_models / "x2.safetensors", str(tmp_path), tmp_path / "out",
                              options=infer.Options(tile=16, tile_overlap=4, workers=0))
    errors = {r.job.source.name: r.error for r in results}
    assert "File too large" in errors["a.png"] and errors["b.png"] is None
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b.png"]


@pytest.mark.parametrize("tile, overlap", [(16, 4), (64, 16), (128, 32), (512, 32)])
def test_the_default_overlap_fits_every_tile_the_flag_allows(tile, overlap):
    """--tile 64 alone was refused: the default overlap of 32 is half of it."""
    assert infer.Options(tile=tile).overlap(tile) == overlap
    with pytest.raises(infer.InputError, match="--tile-overlap"):
        infer.Options(tile=tile, tile_overlap=tile // 2)
