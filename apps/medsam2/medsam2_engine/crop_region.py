"""The region of the slices a label is segmented in: a square around its prompts.

SAM 2 encodes every slice at its full input size, whatever the structure's size. A lesion
a fifth of the slice wide needs only the region around it: run at the same scale (model
pixels per voxel) as the full slice, a region half the slice's side costs about a quarter
of the image encoder and of memory attention per slice, and the masks stay in voxel
coordinates. The region starts at ``context`` times the prompts' extent, at least
``min_input`` model pixels, and grows when a mask reaches its edge (the structure is larger
than the prompts said): the label is then segmented again in the larger region, and in the
whole slice once a region would cover most of it. This is the idea of nnInteractive's
AutoZoom, without the zoom: the scale stays the one the model was trained at.

Coordinates: a slice image is ``[rows=j, cols=i]`` (see :mod:`.frames`); a region is
``rows [row0, row0 + rows)`` and ``cols [col0, col0 + cols)`` of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .prompts import FramePrompt

INPUT_MULTIPLE = 32  # Hiera's total stride: model input sides must be multiples of it


@dataclass
class CropRegionSettings:
    enabled: bool = False  # a departure from the reference protocol (another input size): opt in
    context: float = 2.0  # region side = context x the prompts' extent (box, clicks)
    min_input: int = 256  # smallest region, in model input pixels
    full_fraction: float = 0.75  # a region at least this fraction of the input size becomes the whole slice
    max_grow: int = 2  # regrowths before falling back to the whole slice
    edge_px: int = 2  # a mask within this many voxels of a region edge (not the slice's) reaches it


@dataclass(frozen=True)
class CropRegion:
    row0: int
    col0: int
    rows: int
    cols: int
    input_size: int  # square model input the region is resized to

    def to_json(self) -> dict:
        return {"rows": [self.row0, self.row0 + self.rows], "cols": [self.col0, self.col0 + self.cols],
                "input_size": self.input_size}

    def contains(self, extent: tuple) -> bool:
        r0, c0, r1, c1 = extent
        return self.row0 <= r0 and self.col0 <= c0 and r1 < self.row0 + self.rows and c1 < self.col0 + self.cols

    def voxel_region(self) -> tuple:
        """The region as ``(i, j)`` index slices of a voxel-order plane ``[i, j]``."""
        return slice(self.col0, self.col0 + self.cols), slice(self.row0, self.row0 + self.rows)

    def prompt_in_region(self, prompt: FramePrompt) -> FramePrompt:
        """The prompt in region coordinates (SAM 2 points are ``(x=col, y=row)``)."""
        points = [(x - self.col0, y - self.row0) for x, y in prompt.points]
        box = None
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            box = (x0 - self.col0, y0 - self.row0, x1 - self.col0, y1 - self.row0)
        mask = None
        if prompt.mask is not None:
            mask = prompt.mask[self.row0:self.row0 + self.rows, self.col0:self.col0 + self.cols]
        return FramePrompt(points=points, labels=list(prompt.labels), box=box, mask=mask)


def prompt_extent(prompts) -> tuple | None:
    """``(row0, col0, row1, col1)`` (inclusive) covering every box and click."""
    rows, cols = [], []
    for prompt in prompts:
        for x, y in prompt.points:
            cols.append(x)
            rows.append(y)
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            cols += [x0, x1]
            rows += [y0, y1]
        if prompt.mask is not None and prompt.mask.any():
            mask_rows, mask_cols = np.nonzero(prompt.mask)
            rows += [int(mask_rows.min()), int(mask_rows.max())]
            cols += [int(mask_cols.min()), int(mask_cols.max())]
    if not rows:
        return None
    return int(math.floor(min(rows))), int(math.floor(min(cols))), int(math.ceil(max(rows))), int(math.ceil(max(cols)))


def mask_extent(image_mask: np.ndarray) -> tuple | None:
    """``(row0, col0, row1, col1)`` (inclusive) of a bool image, None if it is empty."""
    rows, cols = np.nonzero(image_mask.any(axis=1))[0], np.nonzero(image_mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def union(*extents) -> tuple | None:
    present = [e for e in extents if e is not None]
    if not present:
        return None
    return (min(e[0] for e in present), min(e[1] for e in present), max(e[2] for e in present),
            max(e[3] for e in present))


def choose_region(extent: tuple | None, shape: tuple, image_size: int, settings: CropRegionSettings,
                  at_least: int = 0) -> CropRegion | None:
    """A region around ``extent`` of a ``shape = (rows, cols)`` slice, or None for the whole slice.

    ``at_least`` is a minimum region side in voxels (a region that must grow).
    """
    if not settings.enabled or extent is None:
        return None
    height, width = shape
    # model pixels per voxel along each axis when the whole slice is the input
    scale = max(image_size / height, image_size / width)
    r0, c0, r1, c1 = extent
    span = max(r1 - r0 + 1, c1 - c0 + 1)
    side = max(settings.context * span, settings.min_input / scale, at_least)
    input_size = INPUT_MULTIPLE * math.ceil(side * scale / INPUT_MULTIPLE)
    if input_size >= settings.full_fraction * image_size:
        return None
    side = int(math.ceil(input_size / scale))
    rows, cols = min(side, height), min(side, width)
    row0 = _placed((r0 + r1) / 2.0, rows, height)
    col0 = _placed((c0 + c1) / 2.0, cols, width)
    return CropRegion(row0, col0, rows, cols, input_size)


def _placed(centre: float, length: int, limit: int) -> int:
    return int(min(max(round(centre - length / 2.0), 0), limit - length))


def grown(region: CropRegion, extent: tuple | None, shape: tuple, image_size: int,
          settings: CropRegionSettings) -> CropRegion | None:
    """A region at least twice as wide, covering the old one and ``extent``; None for the whole slice."""
    box = (region.row0, region.col0, region.row0 + region.rows - 1, region.col0 + region.cols - 1)
    return choose_region(union(extent, box), shape, image_size, settings, at_least=2 * max(region.rows, region.cols))


def reaches_edge(region_mask: np.ndarray, region: CropRegion, shape: tuple, edge_px: int) -> bool:
    """Whether a region-sized mask comes within ``edge_px`` of an edge that is not the slice's own."""
    height, width = shape
    e = max(1, int(edge_px))
    sides = (
        (region.row0 > 0, region_mask[:e]),
        (region.row0 + region.rows < height, region_mask[-e:]),
        (region.col0 > 0, region_mask[:, :e]),
        (region.col0 + region.cols < width, region_mask[:, -e:]),
    )
    return any(inner and band.any() for inner, band in sides)
