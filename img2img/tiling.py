"""Translating an image in overlapping tiles, blended so that seams do not show."""

from __future__ import annotations

import torch

from img2img.translator import Translator


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


def run_tiled(translator: Translator, rgb: torch.Tensor, tile: int, overlap: int, batch: int) -> torch.Tensor:
    """3 x H x W -> 3 x sH x sW through overlapping tiles, `batch` tiles per forward pass.
    Memory beyond the output (and its weight plane) is one batch of tiles."""
    _, height, width = rgb.shape
    scale = translator.scale
    out = torch.zeros(3, height * scale, width * scale)
    weight = torch.zeros(1, height * scale, width * scale)
    th, tw = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
    boxes = [(y, x) for y in ys for x in xs]
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        tiles = torch.stack([rgb[:, y : y + th, x : x + tw] for y, x in chunk])
        results = translator.run(tiles).float().cpu()
        for (y, x), result in zip(chunk, results):
            ramp_y = edge_ramp(th * scale, overlap * scale, y > 0, y + th < height)
            ramp_x = edge_ramp(tw * scale, overlap * scale, x > 0, x + tw < width)
            ramp = ramp_y[:, None] * ramp_x[None, :]
            rows, cols = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            out[:, rows, cols] += result * ramp
            weight[:, rows, cols] += ramp
    return out / weight
