"""Translating an image in overlapping tiles, blended so that seams do not show."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from img2img.data.images import CHUNK_ROWS
from img2img.translator import Translator, scale_alpha


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering [0, length) with at least `overlap` pixels shared by neighbours."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def edge_ramp(length: int, overlap: int, before: bool, after: bool) -> torch.Tensor:
    """1-D blend weights of a tile: 1 inside; towards an edge shared with a neighbour, 0 for
    the outer quarter of the overlap (pixels whose receptive field the tile cut off), then a
    linear rise across the middle half, so neighbours cross-fade and seams do not show."""
    weights = torch.ones(length)
    margin = overlap // 4
    rise = max(1, overlap - 2 * margin)
    ramp = ((torch.arange(min(overlap, length), dtype=torch.float32) - margin + 0.5) / rise).clamp(0, 1)
    if before:
        weights[: len(ramp)] = ramp
    if after:
        weights[length - len(ramp):] = torch.minimum(weights[length - len(ramp):], ramp.flip(0))
    return weights


Region = Callable[[slice, slice], torch.Tensor]  # (rows, cols) of the input -> 3 x h x w float


def run_tiled(translator: Translator, rgb: torch.Tensor, tile: int, overlap: int, batch: int) -> torch.Tensor:
    """3 x H x W -> 3 x sH x sW through overlapping tiles, `batch` tiles per forward pass."""
    region = lambda rows, cols: rgb[:, rows, cols]
    return torch.cat([strip for _, strip in blend_strips(translator, region, rgb.shape[1:], tile, overlap, batch)], 1)


def blend_strips(translator: Translator, region: Region, size: tuple[int, int], tile: int, overlap: int,
                 batch: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Translate an image of `size` (height, width) in overlapping tiles, `batch` tiles per
    forward pass, and yield (first output row, 3 x h x sW rows) top to bottom as soon as no
    later tile touches them. Float sums and blend weights exist only for one tile row."""
    height, width = size
    scale = translator.scale
    th, tw = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
    window = _Window(th * scale, width * scale)
    boxes = [(y, x) for y in ys for x in xs]
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        tiles = torch.stack([region(slice(y, y + th), slice(x, x + tw)) for y, x in chunk])
        results = translator.run(tiles).float().cpu()
        for (y, x), result in zip(chunk, results):
            if y * scale != window.top:  # a new row of tiles: the rows above it are final
                yield from window.advance(y * scale)
            ramp_y = edge_ramp(th * scale, overlap * scale, y > 0, y + th < height)
            ramp_x = edge_ramp(tw * scale, overlap * scale, x > 0, x + tw < width)
            window.add(result, ramp_y[:, None] * ramp_x[None, :], x * scale)
    yield from window.advance(height * scale)


class _Window:
    """Weighted sums of the output rows [top, top + rows), the rows one tile row covers.
    Each pixel receives its tiles in the same order as a full-size accumulator would, so the
    blend is bit for bit the same."""

    def __init__(self, rows: int, width: int):
        self.top, self.rows = 0, rows
        self.sums = torch.zeros(3, rows, width)
        self.weights = torch.zeros(1, rows, width)

    def add(self, result: torch.Tensor, ramp: torch.Tensor, left: int) -> None:
        cols = slice(left, left + result.shape[2])
        self.sums[:, : result.shape[1], cols] += result * ramp
        self.weights[:, : result.shape[1], cols] += ramp

    def advance(self, top: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Hand out the rows above `top` (now final) and move the window down to start there."""
        done = min(top - self.top, self.rows)
        for first in range(0, done, CHUNK_ROWS):  # a few rows at a time: the float copies stay small
            rows = slice(first, min(done, first + CHUNK_ROWS))
            yield self.top + first, self.sums[:, rows] / self.weights[:, rows]
        if done > 0:
            kept = self.rows - done
            self.sums[:, :kept] = self.sums[:, done:].clone()
            self.weights[:, :kept] = self.weights[:, done:].clone()
            self.sums[:, kept:] = 0
            self.weights[:, kept:] = 0
        self.top = top


class AlphaRows:
    """Rows of an alpha plane upscaled by `scale` (bicubic, as translator.scale_alpha), computed
    from the few input rows they depend on: no full-size alpha plane is made."""

    def __init__(self, alpha: Callable[[slice], torch.Tensor], height: int, scale: int):
        self.alpha, self.height, self.scale = alpha, height, scale

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        """1 x (bottom - top) x sW for output rows [top, bottom)."""
        if self.scale == 1:
            return self.alpha(slice(top, bottom))
        # Bicubic reads 2 source rows either side; the margin keeps the slice's own edges
        # (where the kernel clamps) outside the rows that are kept.
        first = max(0, top // self.scale - 3)
        last = min(self.height, (bottom - 1) // self.scale + 4)
        rows = scale_alpha(self.alpha(slice(first, last)), self.scale)
        return rows[:, top - first * self.scale : bottom - first * self.scale]
