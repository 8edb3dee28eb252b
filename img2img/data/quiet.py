"""The codec libraries' own messages, kept off the terminal: for a bad file the user sees our one
line naming it, not the decoder's chatter.

OpenCV logs through its own logger, set to silent here for this process and, through
OPENCV_LOG_LEVEL, for the processes it starts (libtiff's messages go through that logger too).
libpng and libjpeg, inside OpenCV, print with fprintf straight to file descriptor 2, which no
Python setting reaches: `codec_noise_filtered()` points fd 2 at a pipe whose reader drops their
lines and passes every other line on, while Python's own sys.stderr writes to the real stderr
directly. The CLI runs each command inside it; loader workers and device processes inherit the
pipe, so their codecs are filtered as well.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
import warnings
from typing import Iterator

import cv2

os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # read at import by the processes we start
# albumentations asks PyPI for a newer version at import: a network call and, offline (GPU
# nodes, air-gapped clusters), a UserWarning in every loader process.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
# Pillow warns of the damaged tags it skips ("Tag data larger than file"), naming no file; the
# decode that follows succeeds or fails on its own, and a failure is ours to name.
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")

# libpng's default handlers prefix "libpng"; libjpeg's warnings (jerror.h, JWRN_*) have fixed
# texts; OpenCV's logger writes "[ WARN:0@1.2]"-style prefixes; libtiff "TIFFFunction: ...";
# a loader worker killed by a crashing decoder says so, and translate names the file instead.
NOISE = re.compile(
    rb"^(libpng (warning|error)|Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters"
    rb"|Inconsistent progression sequence|Unknown Adobe color transform|Warning: unknown JFIF revision"
    rb"|Application transferred too (few|many) scanlines|\[ ?(WARN|ERROR|INFO|DEBUG|FATAL|VERBOSE)\s*:"
    rb"|TIFF\w*: |_TIFF\w+: "
    rb"|ERROR: Unexpected [\w -]+ encountered in worker)")  # torch's loader worker; we name the file

_active = threading.Lock()


@contextlib.contextmanager
def codec_noise_filtered() -> Iterator[None]:
    """Drop the codec libraries' lines from fd 2 for the duration; pass everything else on."""
    if not _active.acquire(blocking=False):  # already filtered (a nested command)
        yield
        return
    try:
        real = _dup_stderr()
        if real is None:
            yield
            return
        read_end, write_end = os.pipe()
        python_stderr = _python_stderr_to(real)
        os.dup2(write_end, 2)
        os.close(write_end)
        pump = threading.Thread(target=_pump, args=(read_end, real), name="img2img-stderr", daemon=True)
        pump.start()
        try:
            yield
        finally:
            if python_stderr is not None:
                sys.stderr.flush()
                sys.stderr = python_stderr
            os.dup2(real, 2)  # the pipe's last write end in this process: the pump sees EOF
            pump.join(timeout=1.0)  # child processes still holding the pipe keep it open longer
            if not pump.is_alive():
                os.close(real)
    finally:
        _active.release()


def _dup_stderr() -> int | None:
    try:
        sys.stderr.flush()
        return os.dup(2)
    except (OSError, ValueError, AttributeError):
        return None


def _python_stderr_to(fd: int):
    """Point sys.stderr at the real stderr when it wrote to fd 2; returns the one to restore."""
    try:
        if sys.stderr.fileno() != 2:
            return None
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None  # replaced by a test runner or an application: not ours to move
    previous = sys.stderr
    sys.stderr = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=previous.encoding,
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    return previous


def _pump(read_end: int, real: int) -> None:
    pending = b""
    with open(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
            if kept:
                _write_all(real, kept)
    if pending and not NOISE.match(pending):
        _write_all(real, pending)


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass  # the terminal went away: nothing left to tell
