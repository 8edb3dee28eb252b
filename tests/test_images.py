"""Image files: 8/16-bit, grayscale, alpha and EXIF orientation survive a read/write round trip."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image as PILImage

from img2img.data import images
from img2img.data.images import IMAGE_EXTENSIONS, Image, ImageError, Layout, read_image, write_bytes_atomic, write_image
from img2img.data.strips import STREAMED, StripWriter


def test_sixteen_bit_colour_png_keeps_its_precision(tmp_path):
    pixels = (np.arange(16 * 16 * 3, dtype=np.uint16).reshape(16, 16, 3) * 85) % 65535
    cv2.imwrite(str(tmp_path / "in.png"), pixels)
    image = read_image(tmp_path / "in.png")
    assert image.bits == 16 and not image.gray
    write_image(tmp_path / "out.png", image)
    back = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, pixels)


def test_grayscale_with_alpha_round_trips(tmp_path):
    gray = np.random.default_rng(0).integers(0, 255, (9, 7), dtype=np.uint8)
    alpha = np.full_like(gray, 128)
    PILImage.fromarray(np.stack([gray, alpha], -1), mode="LA").save(tmp_path / "in.png")
    image = read_image(tmp_path / "in.png")
    assert image.gray and image.alpha is not None and image.rgb.shape == (3, 9, 7)
    write_image(tmp_path / "out.png", image)
    back = np.array(PILImage.open(tmp_path / "out.png"))
    assert back.shape == (9, 7, 2)
    assert np.array_equal(back[..., 0], gray) and np.array_equal(back[..., 1], alpha)


def test_colour_order_is_rgb(tmp_path):
    PILImage.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    rgb = read_image(tmp_path / "red.png").rgb
    assert rgb[0].min() == 1.0 and rgb[1:].max() == 0.0


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # white band on the left of a landscape image
    exif = PILImage.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    PILImage.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.size == (40, 20)  # portrait after rotation
    assert image.rgb[:, :10].mean() > 0.9  # the band is now at the top


# What each EXIF orientation asks for, as Pillow's own table states it (ImageOps.exif_transpose).
DISPLAYED = {1: None, 2: PILImage.Transpose.FLIP_LEFT_RIGHT, 3: PILImage.Transpose.ROTATE_180,
             4: PILImage.Transpose.FLIP_TOP_BOTTOM, 5: PILImage.Transpose.TRANSPOSE, 6: PILImage.Transpose.ROTATE_270,
             7: PILImage.Transpose.TRANSVERSE, 8: PILImage.Transpose.ROTATE_90}


def save_oriented(path, pixels: np.ndarray, orientation: int) -> None:
    """`pixels` stored as they are, with the file saying how to turn them for display."""
    if path.suffix == ".tif":  # TIFF's own Orientation tag (274), as scanners and tifffile write it
        tifffile.imwrite(path, pixels, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])
        return
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    lossless = {".jpg": {"quality": 100}, ".webp": {"lossless": True}}.get(path.suffix, {})
    PILImage.fromarray(pixels).save(path, exif=exif, **lossless)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_every_exif_orientation_of_every_format_is_displayed_as_stated(tmp_path, suffix, orientation):
    pixels = np.zeros((24, 40, 3), np.uint8)
    pixels[:8, :16] = (255, 0, 0)  # a red block top left and a green one bottom right: every turn differs
    pixels[16:, 32:] = (0, 255, 0)
    save_oriented(tmp_path / f"x{suffix}", pixels, orientation)
    turn = DISPLAYED[orientation]
    expected = np.asarray(PILImage.fromarray(pixels).transpose(turn) if turn is not None else PILImage.fromarray(pixels))
    image = read_image(tmp_path / f"x{suffix}")
    got = np.round(image.rgb.permute(1, 2, 0).numpy() * 255)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < (4 if suffix == ".jpg" else 1e-6)


def test_a_sixteen_bit_tiff_is_turned_once(tmp_path):
    pixels = np.zeros((12, 20, 3), np.uint16)
    pixels[:4, :6] = 65535
    tifffile.imwrite(tmp_path / "x.tif", pixels, photometric="rgb", extratags=[(274, "H", 1, 3, True)])
    image = read_image(tmp_path / "x.tif")
    assert image.bits == 16 and image.rgb[:, -4:, -6:].min() == 1.0 and image.rgb[:, :4, :6].max() == 0.0


STRAIGHT = np.array([200, 100, 50, 64], np.uint8)  # a colour at a quarter of full opacity


def test_a_tiff_with_alpha_written_by_pillow_gives_straight_colours(tmp_path):
    PILImage.fromarray(np.tile(STRAIGHT, (6, 8, 1)), mode="RGBA").save(tmp_path / "x.tif")
    image = read_image(tmp_path / "x.tif")
    assert float(image.alpha.mean()) == pytest.approx(64 / 255)
    assert np.abs(image.rgb.mean(dim=(1, 2)).numpy() - STRAIGHT[:3] / 255).max() <= 1e-6


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
@pytest.mark.parametrize("alpha", ["unassalpha", "assocalpha"])
@pytest.mark.parametrize("planar", ["contig", "separate"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_tiff_with_alpha_gives_straight_colours(tmp_path, bits, gray, alpha, planar, compression):
    """Every layout tifffile writes (scanners, compositing programs): OpenCV premultiplies 8-bit
    colours, keeps 16-bit associated ones premultiplied and makes 16-bit gray + alpha 8-bit gray."""
    top = 255 if bits == 8 else 65535
    straight = np.tile(STRAIGHT, (6, 8, 1)).astype(np.float64) / 255
    if gray:
        straight = straight[..., [0, 3]]
    stored = straight.copy()
    if alpha == "assocalpha":
        stored[..., :-1] *= stored[..., -1:]
    planes = np.round(stored * top).astype(np.uint8 if bits == 8 else np.uint16)
    if planar == "separate":
        planes = np.moveaxis(planes, -1, 0)
    tifffile.imwrite(tmp_path / "x.tif", planes, photometric="minisblack" if gray else "rgb", extrasamples=[alpha],
                     planarconfig=planar, compression=compression)
    image = read_image(tmp_path / "x.tif")
    expected = straight[0, 0, [0, 0, 0] if gray else [0, 1, 2]]
    rounding = 3 / 255 if alpha == "assocalpha" and bits == 8 else 2 / top  # colours stored x alpha lose precision
    assert image.alpha is not None and float(image.alpha.mean()) == pytest.approx(64 / 255, abs=1 / top)
    assert np.abs(image.rgb.mean(dim=(1, 2)).numpy() - expected).max() <= rounding
    assert image.gray == gray and image.bits == bits


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 3, 4], ids=["gray", "rgb", "rgba"])
@pytest.mark.parametrize("planar", ["contig", "separate"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_float_tiff_of_any_precision_and_layout_reads_as_values_in_0_1(tmp_path, dtype, channels, planar,
                                                                         compression):
    """Half floats too (OpenCV has no such type: they were called corrupt)."""
    values = np.linspace(0, 1, 6 * 8 * channels).reshape(6, 8, channels)
    planes = np.moveaxis(values, -1, 0) if planar == "separate" else values
    tifffile.imwrite(tmp_path / "x.tif", planes.astype(dtype).squeeze(), photometric="minisblack" if channels == 1
                     else "rgb", planarconfig=planar if channels > 1 else None, compression=compression,
                     extrasamples=["unassalpha"] if channels == 4 else None)
    image = read_image(tmp_path / "x.tif")
    colour = values[..., :1 if channels == 1 else 3]
    assert image.bits == 16 and image.gray == (channels == 1) and (image.alpha is not None) == (channels == 4)
    assert np.abs(image.rgb[:1 if channels == 1 else 3].numpy() - np.moveaxis(colour, -1, 0)).max() <= 1e-3
    if channels == 4:
        assert np.abs(image.alpha[0].numpy() - values[..., 3]).max() <= 1e-3


@pytest.mark.parametrize("bits", [8, 16])
def test_a_planar_tiff_gives_its_colours(tmp_path, bits):
    """One plane per channel (PlanarConfiguration 2): OpenCV gives a gray mix at 16 bits."""
    colour = np.array([200, 100, 50]) * (1 if bits == 8 else 257)
    planes = np.tile(colour[:, None, None], (1, 6, 8)).astype(np.uint8 if bits == 8 else np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", planes, photometric="rgb", planarconfig="separate")
    image = read_image(tmp_path / "x.tif")
    assert np.abs(image.rgb.mean(dim=(1, 2)).numpy() - colour / (255 if bits == 8 else 65535)).max() <= 1e-6
    assert not image.gray and image.bits == bits and image.alpha is None


def test_an_undecodable_gray_and_alpha_tiff_is_a_bad_file(tmp_path):
    planes = np.full((6, 8, 2), 30000, np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", planes, photometric="minisblack", extrasamples=["unassalpha"],
                     compression="zlib")
    data = bytearray((tmp_path / "x.tif").read_bytes())
    start = data.find(b"x\x9c")  # the zlib stream of the pixels
    data[start + 4:start + 10] = b"\xff" * 6
    (tmp_path / "x.tif").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="x.tif: this gray \\+ alpha TIFF cannot be decoded"):
        read_image(tmp_path / "x.tif")


def test_folder_search_passes_over_metadata_and_hidden_folders_but_not_a_broken_link(tmp_path):
    for name in ["a.png", "sub/b.JPG", "sub/c.tif", ".thumbnails/a.png", "sub/.git/x.png", "._a.png",
                 "sub/._b.JPG", "@eaDir/a.png/SYNOPHOTO_THUMB_S.jpg", "notes.txt", ".DS_Store"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    found = [p.relative_to(tmp_path).as_posix() for p in images.list_images(tmp_path)]
    assert found == ["a.png", "gone.png", "link.png", "sub/b.JPG", "sub/c.tif"]
    assert images.list_images(tmp_path / ".thumbnails") == [tmp_path / ".thumbnails" / "a.png"]  # asked for


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("writer", ["whole", "rows"])
@pytest.mark.parametrize("gray", [False, True], ids=["rgba", "gray_alpha"])
@pytest.mark.parametrize("suffix", [".tif", ".png", ".webp"])
def test_an_image_with_alpha_is_written_with_its_layout_and_reads_back(tmp_path, bits, writer, gray, suffix):
    """Bits, gray-ness and alpha kept where the format holds them (WebP: 8-bit colour + alpha)."""
    rgb, alpha = torch.rand(1 if gray else 3, 20, 30).expand(3, -1, -1), torch.rand(1, 20, 30)
    path = tmp_path / f"x{suffix}"
    layout = images.output_layout(suffix, gray, True, bits)
    if writer == "whole":
        write_image(path, Image(rgb=rgb, alpha=alpha, gray=gray, bits=bits))
    elif suffix in STREAMED:
        rows = StripWriter(path, 20, 30, layout)
        rows.write(images.to_pixels(rgb, alpha, layout))
        rows.close()
    else:
        pytest.skip(f"{suffix} is written whole")
    if suffix == ".tif":
        assert tifffile.TiffFile(path).pages[0].extrasamples == (tifffile.EXTRASAMPLE.UNASSALPHA,)
    back = read_image(path)
    kept_bits = 8 if suffix == ".webp" else bits
    step = 1 / (255 if kept_bits == 8 else 65535)
    assert back.bits == kept_bits and back.gray == (gray and suffix != ".webp")
    rgb_error, alpha_error = float((back.rgb - rgb).abs().max()), float((back.alpha - alpha).abs().max())
    if suffix == ".webp":  # lossy where the colours sit under low alpha: check alpha alone
        assert alpha_error <= step
    else:
        assert rgb_error <= step and alpha_error <= step


def test_unreadable_file_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="broken.png"):
        read_image(tmp_path / "broken.png")


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    image = Image(rgb=torch.rand(3, 8, 8), alpha=None, gray=False, bits=8)
    write_image(tmp_path / "sub" / "out.jpg", image)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.jpg"]


@pytest.mark.parametrize("stem", ["a" * 250, "\u732b" * 83], ids=["250 ASCII", "83 CJK (249 bytes)"])
@pytest.mark.parametrize("writer", ["whole", "rows"])
@pytest.mark.parametrize("suffix", IMAGE_EXTENSIONS)
def test_any_name_the_file_system_takes_is_written(tmp_path, suffix, writer, stem):
    """A temporary's name adds a pid, a random part and suffixes to the file's: cut to fit."""
    path = tmp_path / f"{stem}{suffix}"
    while len(os.fsencode(path.name)) > 255:
        path = path.with_name(path.stem[:-1] + suffix)
    path.write_bytes(b"")  # the name itself is one the file system takes
    path.unlink()
    if writer == "whole":
        write_image(path, Image(rgb=torch.rand(3, 4, 6), alpha=None, gray=False, bits=8))
    else:
        rows = StripWriter(path, 4, 6, Layout("RGB", 8))
        rows.write(np.zeros((4, 6, 3), np.uint8))
        rows.close()
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and read_image(path).size == (4, 6)


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_links_to_folders_are_followed_each_folder_once(tmp_path):
    shots = tmp_path / "elsewhere" / "shots"
    shots.mkdir(parents=True)
    (shots / "a.png").write_bytes(b"")
    data = tmp_path / "data"
    data.mkdir()
    (data / "b.png").write_bytes(b"")
    (data / "shots").symlink_to(shots)  # a data set assembled from links
    (data / "again").symlink_to(shots)  # the same folder twice
    (data / "up").symlink_to(data)  # a loop
    found = [p.relative_to(data).as_posix() for p in images.list_images(data)]
    assert found == ["again/a.png", "b.png"]  # the first link by name


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_cmyk_files_read_as_their_colours_without_an_alpha(tmp_path, suffix):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).convert("CMYK").save(tmp_path / f"cmyk{suffix}", quality=100)
    image = read_image(tmp_path / f"cmyk{suffix}")
    expected = np.asarray(PILImage.open(tmp_path / f"cmyk{suffix}").convert("RGB"), np.float32) / 255
    assert image.alpha is None and not image.gray
    assert np.abs(image.rgb.permute(1, 2, 0).numpy() - expected).max() <= 2 / 255


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("alpha", ["none", "unassociated", "associated"])
@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_cmyk_tiffs_of_every_depth_and_alpha_read_as_their_colours(tmp_path, bits, alpha, planar):
    dtype = np.uint16 if bits == 16 else np.uint8
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(bits)
    inks = rng.integers(0, top + 1, (7, 9, 4)).astype(dtype)
    opacity = rng.integers(1, top + 1, (7, 9, 1)).astype(dtype)
    samples = inks
    if alpha == "associated":  # stored premultiplied, read back straight
        samples = np.concatenate([np.rint(inks * (opacity / top)).astype(dtype), opacity], -1)
    elif alpha == "unassociated":
        samples = np.concatenate([inks, opacity], -1)
    if planar == "separate":
        samples = np.moveaxis(samples, -1, 0)
    extra = {"none": [], "unassociated": [2], "associated": [1]}[alpha]
    tifffile.imwrite(tmp_path / "cmyk.tif", samples, photometric="separated", planarconfig=planar, extrasamples=extra)
    image = read_image(tmp_path / "cmyk.tif")
    expected = (1 - inks[..., :3] / top) * (1 - inks[..., 3:] / top)
    assert image.bits == bits and not image.gray
    # Premultiplied inks lose precision where the pixel is nearly clear: compare where it is not.
    seen = (opacity[..., 0] > top // 4) if alpha == "associated" else np.ones(opacity.shape[:2], bool)
    tolerance = 3 / 255 if alpha == "associated" else 1 / 255
    assert np.abs(image.rgb.permute(1, 2, 0).numpy() - expected)[seen].max() <= tolerance
    if alpha == "none":
        assert image.alpha is None
    else:
        assert np.array_equal(image.alpha[0].numpy(), opacity[..., 0] / np.float32(top))


@pytest.mark.parametrize("bits", [1, 8, 16])
def test_a_gray_png_with_a_transparent_level_reads_as_gray_and_alpha(tmp_path, bits):
    levels = np.random.default_rng(bits).integers(0, 4, (6, 9))
    top = (1 << bits) - 1
    pixels = (levels * top // 3).astype(np.uint16 if bits == 16 else np.uint8)
    clear = int(pixels[0, 0])
    if bits == 1:
        PILImage.fromarray(pixels.astype(bool)).save(tmp_path / "g.png", transparency=clear)
    else:
        PILImage.fromarray(pixels).save(tmp_path / "g.png", transparency=clear)
    image = read_image(tmp_path / "g.png")
    assert image.gray and image.alpha is not None
    assert torch.equal(image.alpha[0] == 0, torch.from_numpy(pixels == clear))


@pytest.mark.parametrize("writer", ["whole", "rows"])
@pytest.mark.parametrize("gray", [False, True])
def test_an_image_with_alpha_written_as_jpeg_is_flattened_onto_white(tmp_path, gray, writer):
    """JPEG holds no alpha: the colours under a transparent pixel are no part of the picture."""
    rgb = torch.full((3, 16, 16), 0.2)
    alpha = torch.zeros(1, 16, 16)
    alpha[:, :, 8:] = 1.0
    path = tmp_path / "x.jpg"
    if writer == "whole":
        write_image(path, Image(rgb=rgb, alpha=alpha, gray=gray, bits=8))
    else:
        layout = images.output_layout(".jpg", gray, True, 8)
        rows = StripWriter(path, 16, 16, layout)
        rows.write(images.to_pixels(rgb, alpha, layout))
        rows.close()
    back = read_image(path)
    assert back.gray == gray and back.alpha is None
    assert back.rgb[:, :, :6].min() > 0.97 and (back.rgb[:, :, 10:] - 0.2).abs().max() < 0.03


POSIX_MODES = pytest.mark.skipif(os.name != "posix", reason="file permissions are POSIX modes")


def mode_of(path) -> int:
    return path.stat().st_mode & 0o777


@POSIX_MODES
def test_the_umask_is_read_without_changing_it():
    current = os.umask(0o022)
    os.umask(current)
    assert images.UMASK == current and images._umask() == current


@POSIX_MODES
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
@pytest.mark.parametrize("suffix", IMAGE_EXTENSIONS)
def test_written_images_get_the_permissions_of_a_plain_new_file(tmp_path, monkeypatch, suffix, umask):
    # mkstemp's temporary files are 0600; a result a colleague or a web server cannot read is a bug.
    monkeypatch.setattr(images, "UMASK", umask)
    write_image(tmp_path / f"out{suffix}", Image(rgb=torch.rand(3, 8, 8), alpha=None, gray=False, bits=8))
    write_bytes_atomic(tmp_path / "state.pt", b"checkpoint")
    assert mode_of(tmp_path / f"out{suffix}") == mode_of(tmp_path / "state.pt") == 0o666 & ~umask


@POSIX_MODES
@pytest.mark.parametrize("suffix", sorted({".jpg", *STREAMED}))
def test_row_by_row_writers_give_the_same_permissions(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(images, "UMASK", 0o002)
    writer = StripWriter(tmp_path / f"big{suffix}", 4, 6, Layout("RGB", 8))
    writer.write(np.zeros((4, 6, 3), np.uint8))
    writer.close()
    assert mode_of(tmp_path / f"big{suffix}") == 0o664


@POSIX_MODES
def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "out.png"
    write_image(path, Image(rgb=torch.rand(3, 8, 8), alpha=None, gray=False, bits=8))
    path.chmod(0o640)
    write_image(path, Image(rgb=torch.rand(3, 8, 8), alpha=None, gray=False, bits=8))
    assert mode_of(path) == 0o640


@pytest.mark.parametrize("alpha", [False, True])
def test_results_quantised_on_the_gpu_write_the_same_pixels(alpha):
    """translate hands the writers 8-bit RGB from a GPU (channels-last, as it leaves the
    device): the same pixels as the float path."""
    from img2img.data.images import output_layout, quantise_on_device, to_pixels

    rgb = torch.rand(1, 3, 24, 20)
    planes = torch.rand(1, 24, 20) if alpha else None
    layout = output_layout(".png", False, alpha, 8)
    assert quantise_on_device(layout) and not quantise_on_device(output_layout(".png", True, alpha, 8))
    quantised = rgb.mul(255).round().to(torch.uint8).contiguous(memory_format=torch.channels_last)[0]
    assert np.array_equal(to_pixels(quantised, planes, layout), to_pixels(rgb[0], planes, layout))
    sixteen = output_layout(".png", False, alpha, 16)  # never quantised on the GPU, but still correct
    assert np.array_equal(to_pixels(quantised, planes, sixteen), to_pixels(quantised.float() / 255, planes, sixteen))


def test_training_libraries_stay_offline_and_quiet():
    """albumentations' import-time update check (a PyPI request) is off in every process that
    decodes images, so offline machines see no warning from it."""
    import os
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('error'); import img2img.data.images, os, albumentations; "
            "print(os.environ['NO_ALBUMENTATIONS_UPDATE'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"})
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr[-500:]


EIGHT_BIT_FILES = {  # name: (PIL mode, file) for every 8-bit layout translate batches as bytes
    "rgb": ("RGB", "x.png"), "rgba": ("RGBA", "x.png"), "gray": ("L", "x.png"), "gray_alpha": ("LA", "x.png"),
    "jpeg": ("RGB", "x.jpg"), "gray_jpeg": ("L", "x.jpg"), "webp_alpha": ("RGBA", "x.webp"),
}


@pytest.mark.parametrize("name", sorted(EIGHT_BIT_FILES))
def test_8_bit_batches_cross_as_bytes_and_give_the_same_floats(name, tmp_path):
    """translate keeps 8-bit files as stored up to the batch and converts them on the device
    (stack_rgb): the floats must be those of each file's own conversion, bit for bit."""
    from img2img.data.images import decode_image, stack_rgb

    mode, file_name = EIGHT_BIT_FILES[name]
    rng = np.random.default_rng(0)
    decoded = []
    for index in range(3):
        pixels = rng.integers(0, 256, (13, 11, len(mode)), dtype=np.uint8)
        PILImage.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode).save(tmp_path / f"{index}{file_name}")
        decoded.append(decode_image(tmp_path / f"{index}{file_name}"))
    assert all(decoded[0].stacks_with(image) for image in decoded)
    batch = stack_rgb(decoded, torch.device("cpu"))
    assert batch.dtype == torch.float32 and batch.is_contiguous()
    assert torch.equal(batch, torch.stack([image.rgb() for image in decoded]))


def test_images_of_other_layouts_do_not_stack(tmp_path):
    from img2img.data.images import decode_image

    PILImage.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    PILImage.new("L", (8, 8)).save(tmp_path / "gray.png")
    PILImage.new("RGB", (8, 9)).save(tmp_path / "taller.png")
    cv2.imwrite(str(tmp_path / "deep.png"), np.zeros((8, 8, 3), np.uint16))
    rgb, gray, taller, deep = (decode_image(tmp_path / n) for n in ("rgb.png", "gray.png", "taller.png", "deep.png"))
    assert rgb.stacks_with(rgb)
    assert not any(rgb.stacks_with(other) for other in (gray, taller, deep))


# ---- the training loaders' resize --------------------------------------------------------------


def large_photo(height: int = 900, width: int = 1200) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)  # RGB


@pytest.mark.parametrize("orientation", [1, 6, 3])
@pytest.mark.parametrize("gray", [False, True])
def test_a_large_jpeg_is_decoded_reduced_with_its_orientation_and_planes(tmp_path, orientation, gray):
    photo = large_photo()
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    source = PILImage.fromarray(photo).convert("L" if gray else "RGB")
    source.save(tmp_path / "p.jpg", exif=exif, quality=95)
    full = images.decode_image(tmp_path / "p.jpg")
    reduced = images.decode_image(tmp_path / "p.jpg", at_least=200)  # 900 px >= 4 x 200: a quarter
    assert reduced.full_size == full.size == full.full_size
    assert reduced.size == (full.size[0] // 4, full.size[1] // 4) and reduced.gray == full.gray == gray
    assert reduced.pixels.ndim == full.pixels.ndim
    # The same picture, the same way up: the full decode shrunk by area is close to it.
    shrunk = cv2.resize(full.pixels, reduced.size[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(float) - reduced.pixels).mean() < 2  # 8-bit levels


def test_other_formats_and_small_jpegs_are_decoded_whole(tmp_path):
    photo = large_photo()
    cv2.imwrite(str(tmp_path / "p.png"), photo[:, :, ::-1])
    assert images.decode_image(tmp_path / "p.png", at_least=200).size == (900, 1200)
    PILImage.fromarray(photo).save(tmp_path / "p.jpg", quality=95)
    assert images.decode_image(tmp_path / "p.jpg", at_least=500).size == (900, 1200)  # not 2 x 500 a side


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_the_loaders_resize_shrinks_large_photos_by_area_and_keeps_bicubic_for_small_ones(tmp_path, suffix):
    photo = large_photo()
    path = tmp_path / f"p{suffix}"
    PILImage.fromarray(photo).save(path, **({"quality": 97} if suffix == ".jpg" else {}))
    rgb, full_size = images.read_rgb_resized(path, 286)
    assert rgb.shape == (286, 286, 3) and rgb.dtype == np.float32 and full_size == (900, 1200)
    # Close to the area-averaged photo; bicubic from full size aliases (fine detail folds back).
    area = cv2.resize(photo, (286, 286), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    assert np.abs(rgb - area).mean() < 0.01
    small, _ = images.read_rgb_resized(path, 500)  # 900 < 2 x 500: the reference's bicubic
    bicubic = cv2.resize(read_image(path).rgb.permute(1, 2, 0).numpy(), (500, 500), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(small, bicubic)


def _encoded(suffix: str, progressive: bool = False, thumbnail: bool = False) -> bytes:
    import io

    from skimage import data as photos

    buffer = io.BytesIO()
    picture = PILImage.fromarray(photos.astronaut()[::4, ::4])
    if suffix == ".png":
        picture.save(buffer, "PNG")
    else:
        exif = PILImage.Exif()
        if thumbnail:  # an EXIF thumbnail is a whole JPEG, end marker included, before the image's scans
            small = io.BytesIO()
            picture.resize((16, 16)).save(small, "JPEG")
            exif[0x927C] = small.getvalue()
        picture.save(buffer, "JPEG", quality=90, progressive=progressive, exif=exif.tobytes())
    return buffer.getvalue()


ENCODINGS = {"png": (".png", {}), "jpeg": (".jpg", {}), "progressive": (".jpg", {"progressive": True}),
             "thumbnail": (".jpg", {"thumbnail": True})}
TRAILERS = {"motion_photo": b"\0\0\0\x18ftypmp42\0\0\0\0isommp42" + bytes(5000), "zeros": bytes(4096),
            "text": b"appended by some tool"}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("trailer", sorted(TRAILERS))
def test_data_after_the_end_of_the_image_is_no_truncation(tmp_path, encoding, trailer):
    """Phones append a video to Motion Photos (PXL_..._MP.jpg); cameras pad with zeros."""
    suffix, options = ENCODINGS[encoding]
    data = _encoded(suffix, **options)
    (tmp_path / f"x{suffix}").write_bytes(data + TRAILERS[trailer])
    assert read_image(tmp_path / f"x{suffix}").rgb.shape == (3, 128, 128)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_cut_off_image_is_still_truncated(tmp_path, encoding):
    suffix, options = ENCODINGS[encoding]
    data = _encoded(suffix, **options)
    last_chunk = 2 if suffix == ".jpg" else 12  # the end marker; PNG's IEND chunk
    for end in (len(data) // 3, len(data) // 2, len(data) - 40, len(data) - last_chunk - 1):
        (tmp_path / f"x{suffix}").write_bytes(data[:end] + bytes(100))
        with pytest.raises(ImageError, match="truncated"):
            read_image(tmp_path / f"x{suffix}")


def test_a_file_where_a_folder_is_needed_is_named(tmp_path):
    (tmp_path / "sub").write_text("a file, not a folder")
    with pytest.raises(images.WriteError, match=r"could not be written: .*\(.*sub is a file, where a folder is needed\)"):
        write_image(tmp_path / "sub" / "deeper" / "x.png", Image(rgb=torch.rand(3, 4, 4), alpha=None, gray=False, bits=8))
