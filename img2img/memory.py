"""How much memory `translate` will need for its images, and what it does when that is more
than the budget (`--max-memory`) or the free memory: tile whole images, write the output
through a disk-backed buffer, use smaller tile batches; and it says so.

The estimate counts image data: decoded inputs, tiles and their activations, the blend window,
converted rows, output buffers. The model and the runtime come on top of it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """'512M', '4G', '1.5GiB', '2gb' or plain bytes -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if not match:
        raise ValueError(f"{text!r} is not a size; write e.g. 512M, 4G or 1.5GiB")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value < 1:
        raise ValueError(f"{text!r}: the size must be at least one byte")
    return int(value)


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def available_memory() -> int | None:
    """Memory the system can give without swapping (Linux MemAvailable), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def widest_layer(module: nn.Module) -> int:
    """Channels of the widest convolution: what one pixel's activations cost, roughly."""
    widths = [layer.out_channels for layer in module.modules() if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))]
    return max(widths, default=64)


@dataclass
class Need:
    """What one image of a run costs, in bytes of image data."""

    height: int  # input pixels
    width: int
    scale: int
    widest: int  # channels of the network's widest layer
    channels: int = 4  # output samples per pixel (colour + alpha: the worst case)

    @property
    def out_pixels(self) -> int:
        return self.height * self.width * self.scale**2

    def whole(self, batch: int) -> int:
        """Translated in one piece: float input and output, activations, integer output."""
        pixels = self.height * self.width
        return batch * (pixels * (4 + 12 + 3 * 4 * self.widest) + self.out_pixels * (12 + 12 + self.channels * 2))

    def tiled(self, tile: int, batch: int, buffered: bool) -> int:
        """In tiles: the stored input, a batch of tiles, a window one tile row tall, the rows
        being converted and queued, and for buffered formats the full-size integer output."""
        th, tw = min(tile, self.height), min(tile, self.width)
        tiles = batch * th * tw * (12 + 3 * 4 * self.widest + 2 * 12 * self.scale**2)
        band = th * self.scale * self.width * self.scale  # output pixels of one tile row
        window = band * (16 + 12 + 3 * self.channels * 2)
        output = self.out_pixels * self.channels * 2 if buffered else 0
        return self.height * self.width * 8 + tiles + window + output


@dataclass
class Plan:
    tile_batch: int  # tiles per forward pass
    on_disk: bool  # buffered formats (JPEG, WebP, BMP) assemble their output in a file
    whole_limit: int  # output pixels above which an image is tiled
    estimate: int  # bytes of image data at the peak, for the largest image
    messages: list[str]
    tile: int  # the side of the tiles of images over whole_limit (without --tile)


def plan(need: Need, tile: int, batch: int, buffered: bool, whole_limit: int, budget: int | None,
         free: int | None, explicit_tile: bool) -> Plan:
    """Fit the largest image of a run into min(budget, free memory): tile it, then move a
    buffered output to disk, then shrink the tile batch; say what was chosen, and why."""
    limits = [(size, name) for size, name in ((budget, "--max-memory"), (free, "free memory")) if size]
    if not limits or not need.out_pixels:  # no budget, or no header could be read
        return Plan(batch, False, whole_limit, 0, [], tile)
    limit, name = min(limits)
    messages: list[str] = []
    per_out_pixel = need.whole(1) / max(1, need.out_pixels)
    whole_limit = min(whole_limit, max(1, math.floor(limit / per_out_pixel)))
    tiled = explicit_tile or need.out_pixels > whole_limit
    if not tiled:
        return Plan(batch, False, whole_limit, need.whole(batch), messages, tile)
    if not explicit_tile:  # the largest tile that fits, down to the smallest where none does
        tile = next((side for side in _smaller_tiles(tile) if need.tiled(side, 1, False) <= limit), SMALLEST_TILE)
    on_disk, first_batch = False, batch
    estimate = need.tiled(tile, batch, buffered)
    if estimate > limit and buffered:
        on_disk = True
        estimate = need.tiled(tile, batch, False)
    while estimate > limit and batch > 1:
        batch //= 2
        estimate = need.tiled(tile, batch, False if on_disk else buffered)
    size = f"{need.width}x{need.height} px"
    if on_disk:
        messages.append(f"images of {size} need more than {name} ({format_size(limit)}) in memory: "
                        "their outputs are assembled in a file beside them")
    if batch < first_batch:
        messages.append(f"images of {size}: {batch} tile(s) per pass instead of {first_batch}, to fit {name} "
                        f"({format_size(limit)})")
    if estimate > limit:
        messages.append(f"images of {size} are estimated to need {format_size(estimate)}, more than "
                        f"{name} ({format_size(limit)}), even one tile at a time; "
                        + _advice(need, tile, buffered and not on_disk, limit, name, explicit_tile))
    return Plan(batch, on_disk, whole_limit, estimate, messages, tile)


SMALLEST_TILE = 64


def _smaller_tiles(tile: int) -> list[int]:
    """`tile` and its halvings down to SMALLEST_TILE."""
    return [tile >> k for k in range(8) if tile >> k >= SMALLEST_TILE] or [SMALLEST_TILE]


def _advice(need: Need, tile: int, buffered: bool, limit: int, name: str, explicit_tile: bool) -> str:
    """A smaller --tile only where one fits (the decoded input and the output rows being
    written cost the same at any tile size); without --tile the smallest is already chosen."""
    for smaller in _smaller_tiles(tile)[1:4] if explicit_tile else []:
        if need.tiled(smaller, 1, buffered) <= limit:
            return f"--tile {smaller} would fit"
    more = "raise --max-memory" if name == "--max-memory" else "free some memory"
    going_on = "" if explicit_tile else f"; going on with {tile} px tiles"
    return (f"no tile size fits (the image and the rows being written alone take about "
            f"{format_size(need.tiled(SMALLEST_TILE, 1, buffered))}): {more}{going_on}")
