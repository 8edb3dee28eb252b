"""Writing an image a strip of rows at a time, so that no full-size copy of it is needed.

PNG (pypng) and TIFF (tifffile) rows go to the encoder as they arrive, on a thread of their
own. JPEG, WebP and BMP encoders want the whole picture: the rows are gathered in one integer
buffer, in memory or, when asked, in a memory-mapped file beside the output. Either way the
file is written under a temporary name and renamed when complete, as write_image does.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from img2img.data.header import ImageError
from img2img.data.images import TEMP_SUFFIX, Layout, publish, temporary_prefix, to_opencv, write_png_rows, writing

STREAMED = (".png", ".tif", ".tiff")
TIFF_TILE = 256  # TIFF tiles (compressed one by one): rows are gathered this many at a time
PNG_COMPRESSION = 6  # zlib level: pypng filters nothing, so a fast level costs much file size


def streams(suffix: str) -> bool:
    """True where rows go to the encoder as they are finished (no full-size buffer)."""
    return suffix.lower() in STREAMED


class StripWriter:
    """Rows of one image, top to bottom: write(rows) as often as needed, then close()
    (complete, atomic) or abort() (nothing is left behind)."""

    def __init__(self, path: Path, height: int, width: int, layout: Layout, on_disk: bool = False):
        self.path, self.height, self.width, self.layout = Path(path), height, width, layout
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=temporary_prefix(self.path), suffix=TEMP_SUFFIX,
                                        dir=self.path.parent)
            os.close(fd)
            self.temporary = Path(name)
            self.rows_written = 0
            try:
                if streams(self.path.suffix):
                    encode = self._encode_png if self.path.suffix.lower() == ".png" else self._encode_tiff
                    self._sink = _EncoderThread(encode, self.temporary)
                else:
                    self._sink = _Buffer(self.path, height, width, layout, on_disk)
            except BaseException:
                self.temporary.unlink(missing_ok=True)
                raise

    def write(self, rows: np.ndarray) -> None:
        """H x W x C integers in the layout's channel order (see images.to_pixels)."""
        if self.rows_written + len(rows) > self.height:
            raise ValueError(f"{self.path}: more rows than the image's {self.height}")
        with writing(self.path):
            self._sink.put(rows, self.rows_written)
        self.rows_written += len(rows)

    def close(self) -> None:
        try:
            if self.rows_written != self.height:
                raise ValueError(f"{self.path}: {self.rows_written} of {self.height} rows were written")
            with writing(self.path):
                self._sink.finish(self.temporary)
                with open(self.temporary, "rb+") as handle:
                    os.fsync(handle.fileno())
                publish(self.temporary, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._sink.discard()
        self.temporary.unlink(missing_ok=True)

    # ---- encoders that take rows as they come (run on the encoder thread) -----------------

    def _encode_png(self, strips: Iterator[np.ndarray], handle) -> None:
        write_png_rows(handle, self.width, self.height, self.layout, (row for strip in strips for row in strip),
                       PNG_COMPRESSION)

    def _encode_tiff(self, strips: Iterator[np.ndarray], handle) -> None:
        import tifffile

        channels = len(self.layout.channels)
        shape = (self.height, self.width, channels) if channels > 1 else (self.height, self.width)
        with tifffile.TiffWriter(handle) as tiff:
            tiff.write(_tiles(strips, self.width, channels, self.layout.dtype), shape=shape, dtype=self.layout.dtype,
                       tile=(TIFF_TILE, TIFF_TILE), compression="zlib",
                       photometric="minisblack" if self.layout.channels[0] == "G" else "rgb",
                       extrasamples=["unassalpha"] if self.layout.channels[-1] == "A" else None)


def _tiles(strips: Iterator[np.ndarray], width: int, channels: int, dtype) -> Iterator[np.ndarray]:
    """Strips of any height -> TIFF tiles in file order (row of tiles by row of tiles)."""
    band = np.empty((TIFF_TILE, width, channels), dtype)
    filled = 0

    def emit(rows: int) -> Iterator[np.ndarray]:
        for left in range(0, width, TIFF_TILE):
            yield band[:rows, left : left + TIFF_TILE]

    for strip in strips:
        while len(strip):
            take = min(TIFF_TILE - filled, len(strip))
            band[filled : filled + take] = strip[:take]
            filled, strip = filled + take, strip[take:]
            if filled == TIFF_TILE:
                yield from emit(TIFF_TILE)
                filled = 0
    if filled:
        yield from emit(filled)


class _EncoderThread:
    """Runs encode(strips, file) on a thread, feeding it the strips put() here; at most two
    strips wait, so the encoder never holds more than a few strips."""

    _END = object()

    def __init__(self, encode: Callable, temporary: Path):
        self.strips: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.ended = False  # the end marker was taken from the queue
        self.thread = threading.Thread(target=self._run, args=(encode, temporary), daemon=True,
                                       name="img2img-encode")
        self.thread.start()

    def _run(self, encode: Callable, temporary: Path) -> None:
        try:
            with open(temporary, "wb") as handle:
                encode(self._incoming(), handle)
        except BaseException as err:  # reported by put() or finish() on the caller's thread
            self.error = err
            while not self.ended:  # let the caller's put() calls through until it stops
                self.ended = self.strips.get() is self._END

    def _incoming(self) -> Iterator[np.ndarray]:
        while True:
            strip = self.strips.get()
            if strip is self._END:
                self.ended = True
                return
            yield strip

    def put(self, rows: np.ndarray, top: int) -> None:
        self._raise_failure()
        self.strips.put(rows)

    def finish(self, temporary: Path) -> None:
        self.strips.put(self._END)
        self.thread.join()
        self._raise_failure()

    def discard(self) -> None:
        if self.thread.is_alive():  # the encoder sees the rows end early, fails, and stops
            self.strips.put(self._END)
            self.thread.join()

    def _raise_failure(self) -> None:
        if isinstance(self.error, OSError):
            raise self.error
        if self.error is not None:
            raise ImageError(f"cannot encode the image: {self.error}") from self.error


class _Buffer:
    """The one full-size object for formats that encode whole pictures: integers in OpenCV's
    channel order, in memory or memory-mapped in a temporary file beside the output."""

    def __init__(self, path: Path, height: int, width: int, layout: Layout, on_disk: bool):
        self.path, self.layout, self.backing = path, layout, None
        shape = (height, width) if layout.channels == "G" else (height, width, len(layout.channels))
        if on_disk:
            fd, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".buffer" + TEMP_SUFFIX, dir=path.parent)
            os.close(fd)
            self.backing = Path(name)
            self.pixels = np.memmap(self.backing, dtype=layout.dtype, mode="w+", shape=shape)
        else:
            self.pixels = np.empty(shape, layout.dtype)

    def put(self, rows: np.ndarray, top: int) -> None:
        self.pixels[top : top + len(rows)] = to_opencv(rows, self.layout)

    def finish(self, temporary: Path) -> None:
        # OpenCV picks the encoder by extension: write to one with the real suffix, then move.
        encoded = temporary.with_name(temporary.name + self.path.suffix)
        try:
            try:
                written = cv2.imwrite(str(encoded), self.pixels)
            except cv2.error as err:
                raise ImageError(f"{self.path}: OpenCV cannot encode this image: {err.err or err}") from None
            if not written:
                raise ImageError(f"{self.path}: OpenCV cannot encode {self.path.suffix!r} images of this size")
            os.replace(encoded, temporary)
        finally:
            encoded.unlink(missing_ok=True)
            self.discard()

    def discard(self) -> None:
        self.pixels = None
        if self.backing is not None:
            self.backing.unlink(missing_ok=True)
