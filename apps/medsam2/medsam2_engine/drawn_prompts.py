"""Prompts a clinician draws rather than clicks: strokes (scribbles), a lasso, a painted mask.

What each becomes for SAM 2 (docs/protocol.md, "Drawn prompts"):

- A **stroke** (a free-hand line on one slice, foreground or background) becomes points
  spaced evenly along it, its two ends included: one point per ``STROKE_SPACING`` voxels of
  length, at most ``STROKE_POINTS``. SAM 2 was trained on clicks and boxes, not lines, and a
  line is no mask of the structure; points along it say "this is inside" (or outside) where
  the clinician drew (measured against clicks: docs/evaluation.md).
- A **lasso** (a closed outline on one slice) becomes that slice's mask prompt: the voxels
  whose centres lie inside the polygon (``add_new_mask``, as MedSAM2's point protocol gives
  SAM 2 a mask).
- A **mask** (painted, or taken from a saved label or another structure on chosen slices)
  is a mask prompt on each of its slices as it is. A slice painted or erased with the page's
  brush in its "re-propagate" mode travels as ``slice_masks``: the slice's whole mask after
  the edit, as a region (``mask_regions``).

Everything is in voxel indices ``[i, j, k]`` of the image as the app reads it.
"""

from __future__ import annotations

import math

import numpy as np

from .mask_regions import parse_region
from .prompts import Click, MaskPrompt, PromptError

STROKE_SPACING = 10.0  # voxels of stroke length per point
STROKE_POINTS = 6  # at most this many points per stroke
MAX_VERTICES = 10_000  # a polyline or polygon longer than this is not a drawing


def _vertices(value, field_name: str, ndim: int, minimum: int) -> np.ndarray:
    if not isinstance(value, (list, tuple)) or not minimum <= len(value) <= MAX_VERTICES:
        raise PromptError(f"{field_name}: expected a list of {minimum} to {MAX_VERTICES} points "
                          f"[{', '.join('ijk'[:ndim])}], got {str(value)[:80]}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise PromptError(f"{field_name}: points must be numbers, got {str(value)[:80]}") from err
    if array.ndim != 2 or array.shape[1] != ndim or not np.all(np.isfinite(array)):
        raise PromptError(f"{field_name}: each point must be {ndim} numbers, got {str(value)[:80]}")
    return array


def _inside(points: np.ndarray, shape, field_name: str) -> None:
    for axis in range(points.shape[1]):
        low, high = points[:, axis].min(), points[:, axis].max()
        if low < 0 or high > shape[axis] - 1:
            raise PromptError(f"{field_name}: a point lies outside the image on axis {axis} "
                              f"(valid [0, {shape[axis] - 1}] for image shape {list(shape)})")


def stroke_points(polyline: np.ndarray) -> np.ndarray:
    """Points evenly spaced by arc length along ``polyline`` ``[[i, j], ...]``, ends included."""
    steps = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    length = float(steps.sum())
    count = min(STROKE_POINTS, max(1, int(math.ceil(length / STROKE_SPACING)) + 1 if length > 0 else 1))
    if count == 1:
        return polyline[len(polyline) // 2: len(polyline) // 2 + 1]
    along = np.concatenate([[0.0], np.cumsum(steps)])
    wanted = np.linspace(0.0, length, count)
    return np.stack([np.interp(wanted, along, polyline[:, d]) for d in range(polyline.shape[1])], axis=1)


def parse_strokes(strokes, shape, field_name: str = "strokes") -> list:
    """``[{"points": [[i, j, k], ...], "positive": true}, ...]`` (2D image: ``[i, j]``) to clicks
    along each stroke; a stroke lies on one slice."""
    if strokes is None:
        return []
    if not isinstance(strokes, (list, tuple)):
        raise PromptError(f"{field_name}: expected a list of strokes, got {str(strokes)[:80]}")
    ndim = len(shape)
    clicks = []
    for n, stroke in enumerate(strokes):
        name = f"{field_name}[{n}]"
        if not isinstance(stroke, dict) or not isinstance(stroke.get("positive", True), bool):
            raise PromptError(f'{name}: expected {{"points": [[i, j, k], ...], "positive": true or false}}')
        points = _vertices(stroke.get("points"), f"{name}.points", ndim, 1)
        _inside(points, shape, f"{name}.points")
        k = 0
        if ndim == 3:
            slices = np.unique(np.round(points[:, 2]))
            if len(slices) != 1:
                raise PromptError(f"{name}.points: a stroke lies on one slice; these are on slices "
                                  f"{[int(s) for s in slices[:5]]}")
            k = int(slices[0])
        for i, j in stroke_points(points[:, :2]):
            clicks.append(Click(float(i), float(j), k, bool(stroke.get("positive", True))))
    return clicks


def polygon_mask(polygon: np.ndarray, plane_shape) -> np.ndarray:
    """Voxels ``[i, j]`` of a plane whose centres lie inside ``polygon`` ``[[i, j], ...]`` (even-odd rule)."""
    from matplotlib.path import Path

    ii, jj = np.meshgrid(np.arange(plane_shape[0]), np.arange(plane_shape[1]), indexing="ij")
    inside = Path(polygon).contains_points(np.stack([ii.ravel(), jj.ravel()], axis=1), radius=1e-9)
    return inside.reshape(plane_shape)


def parse_lassos(lassos, shape, field_name: str = "lasso") -> list:
    """``[{"slice": k, "polygon": [[i, j], ...]}, ...]`` to mask prompts (2D image: no ``slice``)."""
    if lassos is None:
        return []
    if not isinstance(lassos, (list, tuple)):
        raise PromptError(f"{field_name}: expected a list of outlines, got {str(lassos)[:80]}")
    masks = []
    for n, lasso in enumerate(lassos):
        name = f"{field_name}[{n}]"
        if not isinstance(lasso, dict):
            raise PromptError(f'{name}: expected {{"slice": k, "polygon": [[i, j], ...]}}')
        polygon = _vertices(lasso.get("polygon"), f"{name}.polygon", 2, 3)
        _inside(polygon, shape[:2], f"{name}.polygon")
        k = 0
        if len(shape) == 3:
            k = lasso.get("slice")
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < shape[2]:
                raise PromptError(f"{name}.slice: expected a slice index in [0, {shape[2] - 1}], got {k!r}")
        mask = polygon_mask(polygon, shape[:2])
        if not mask.any():
            raise PromptError(f"{name}.polygon: the outline encloses no voxel centre")
        masks.append(MaskPrompt(k, mask))
    return masks


def mask_prompts(volume_mask: np.ndarray, slices, field_name: str) -> list:
    """Mask prompts from a mask on the image's grid ``[i, j, k]`` on ``slices`` (None: every slice it has)."""
    have = [int(k) for k in np.flatnonzero(volume_mask.any(axis=(0, 1)))]
    if slices is None:
        slices = have
    if not isinstance(slices, (list, tuple)) or not all(isinstance(k, int) and not isinstance(k, bool) for k in slices):
        raise PromptError(f"{field_name}.slices: expected a list of slice indices, got {str(slices)[:80]}")
    empty = [k for k in slices if k not in have]
    if empty or not slices:
        raise PromptError(f"{field_name}: the mask has no voxel on slice(s) {empty[:5] or 'any'}")
    return [MaskPrompt(k, volume_mask[:, :, k].astype(bool)) for k in slices]


def parse_slice_masks(value, shape, field_name: str = "slice_masks") -> list:
    """``[{"slice": k, "i": [start, stop], "j": [start, stop], "data": ...}, ...]``: each slice's
    whole mask as a region (``mask_regions``), to mask prompts. A mask must set a voxel: a
    slice without the structure is said with a background point, or erased by hand."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > shape[2]:
        raise PromptError(f"{field_name}: expected a list of at most {shape[2]} slice masks")
    masks = []
    for n, entry in enumerate(value):
        name = f"{field_name}[{n}]"
        k = entry.get("slice") if isinstance(entry, dict) else None
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < shape[2]:
            raise PromptError(f"{name}.slice: expected a slice index in [0, {shape[2] - 1}], got {str(k)[:20]}")
        mask = parse_region(entry, tuple(shape[:2]), name)
        if not mask.any():
            raise PromptError(f"{name}: no voxel is set; to take the structure off a slice, add a background "
                              "point there or erase in manual mode")
        masks.append(MaskPrompt(k, mask))
    return masks
