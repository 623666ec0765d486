"""User prompts in voxel coordinates, validated against the image they point into.

Everything here is in voxel index order ``[i, j, k]``: ``k`` is the slice (the SAM 2
frame), ``(i, j)`` the position in it, which SAM 2 sees as the point ``(x=i, y=j)``.
A box is given as Slicer sends its ROI, ``[i0, i1, j0, j1, k0, k1]`` in voxel indices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .frames import slice_to_image


class PromptError(ValueError):
    """A prompt in the request is malformed or points outside the image."""


@dataclass(frozen=True)
class Click:
    i: float
    j: float
    k: int
    positive: bool


@dataclass(frozen=True)
class Box:
    i0: float
    j0: float
    i1: float
    j1: float
    k: int


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A slice's mask given to SAM 2 (``add_new_mask``): a lasso's inside, a painted or saved mask."""

    k: int
    mask: np.ndarray  # bool [i, j] of the slice


@dataclass
class FramePrompt:
    """What SAM 2 receives for one object on one frame."""

    points: list = field(default_factory=list)  # [(x, y), ...]
    labels: list = field(default_factory=list)  # 1 positive, 0 negative
    box: tuple | None = None  # (x0, y0, x1, y1)
    mask: np.ndarray | None = None  # bool image [rows=y, cols=x], given before the points and box

    def key(self) -> tuple:
        return (tuple(self.points), tuple(self.labels), self.box, mask_digest(self.mask))


def mask_digest(mask: np.ndarray | None) -> str | None:
    if mask is None:
        return None
    return hashlib.sha1(np.packbits(mask.astype(bool)).tobytes() + str(mask.shape).encode()).hexdigest()


@dataclass
class LabelPrompts:
    """All prompts the user has given for one label."""

    clicks: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    masks: list = field(default_factory=list)  # MaskPrompt; several on one slice are united
    exclude: np.ndarray | None = None  # bool [i, j, k]: locked structures' voxels, never this label's

    def is_empty(self) -> bool:
        return not self.clicks and not self.boxes and not self.masks

    def slices(self) -> list:
        return sorted({c.k for c in self.clicks} | {b.k for b in self.boxes} | {m.k for m in self.masks})

    def by_frame(self) -> dict:
        """``{k: FramePrompt}``; a frame with several boxes keeps the last one (SAM 2 takes one)."""
        frames: dict = {}
        for given in self.masks:
            prompt = frames.setdefault(given.k, FramePrompt())
            image = slice_to_image(np.asarray(given.mask, dtype=bool))
            prompt.mask = image if prompt.mask is None else (prompt.mask | image)
        for box in self.boxes:
            frames.setdefault(box.k, FramePrompt()).box = (
                min(box.i0, box.i1),
                min(box.j0, box.j1),
                max(box.i0, box.i1),
                max(box.j0, box.j1),
            )
        for click in self.clicks:
            prompt = frames.setdefault(click.k, FramePrompt())
            prompt.points.append((float(click.i), float(click.j)))
            prompt.labels.append(1 if click.positive else 0)
        return frames


def _as_number_list(value, field_name: str, length: int) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise PromptError(f"{field_name}: expected {length} numbers, got {value!r}")
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError) as err:
        raise PromptError(f"{field_name}: expected numbers, got {value!r}") from err
    return numbers


def parse_points(points: Iterable, shape: Sequence[int], field_name: str, positive: bool) -> list:
    """``[[i, j, k], ...]`` (or ``[[i, j], ...]`` for a 2D image) to clicks, checked against ``shape``."""
    if points is None:
        return []
    if not isinstance(points, (list, tuple)):
        raise PromptError(f"{field_name}: expected a list of points, got {points!r}")
    if len(points) and isinstance(points[0], (int, float)):
        points = [points]  # a single point sent without the outer list
    ndim = len(shape)
    clicks = []
    for n, point in enumerate(points):
        if ndim == 2 and isinstance(point, (list, tuple)) and len(point) == 3:
            point = list(point[:2]) if float(point[2]) == 0 else point
        values = _as_number_list(point, f"{field_name}[{n}]", ndim)
        for axis, (value, size) in enumerate(zip(values, shape)):
            if not 0 <= value <= size - 1:
                raise PromptError(
                    f"{field_name}[{n}] = {list(point)} is outside the image: axis {axis} must be in "
                    f"[0, {size - 1}] for image shape {list(shape)}"
                )
        k = int(round(values[2])) if ndim == 3 else 0
        clicks.append(Click(values[0], values[1], k, positive))
    return clicks


def parse_box(roi, shape: Sequence[int], field_name: str = "roi") -> Box:
    """A box from Slicer's ROI ``[i0, i1, j0, j1, k0, k1]`` (voxel indices, either order per axis).

    Also accepted: ``[[i0, i1], [j0, j1], [k0, k1]]``, and for a 2D image ``[i0, i1, j0, j1]``.
    A ROI that spans several slices is prompted on its central slice.
    """
    ndim = len(shape)
    if isinstance(roi, (list, tuple)) and roi and all(isinstance(r, (list, tuple)) for r in roi):
        flat = [value for pair in roi for value in (pair if len(pair) == 2 else [None])]
    else:
        flat = roi
    lengths = (6,) if ndim == 3 else (4, 6)
    if not isinstance(flat, (list, tuple)) or len(flat) not in lengths:
        expected = "[i0, i1, j0, j1, k0, k1]" + (" or [i0, i1, j0, j1]" if ndim == 2 else "")
        raise PromptError(f"{field_name}: expected {expected} in voxel indices, got {roi!r}")
    values = _as_number_list(flat, field_name, len(flat))
    i0, i1 = sorted(values[0:2])
    j0, j1 = sorted(values[2:4])
    k = int(round((values[4] + values[5]) / 2)) if ndim == 3 else 0
    # A ROI drawn a little past the border is clipped; one wholly outside is an error.
    for axis, (low, high) in enumerate([(i0, i1), (j0, j1)]):
        if high < 0 or low > shape[axis] - 1:
            raise PromptError(
                f"{field_name}: box {roi!r} lies outside the image on axis {axis} (valid [0, {shape[axis] - 1}])"
            )
    i0, i1 = max(i0, 0.0), min(i1, shape[0] - 1.0)
    j0, j1 = max(j0, 0.0), min(j1, shape[1] - 1.0)
    if i1 - i0 < 1 or j1 - j0 < 1:
        raise PromptError(f"{field_name}: box {roi!r} is empty (it needs a width and height of at least 1 voxel)")
    if ndim == 3 and not 0 <= k <= shape[2] - 1:
        raise PromptError(f"{field_name}: box slice {k} is outside [0, {shape[2] - 1}]")
    return Box(i0, j0, i1, j1, k)
