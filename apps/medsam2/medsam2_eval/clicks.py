"""Where the simulated user puts prompts: a documented, deterministic protocol.

- **box**: on the slice where the structure has most voxels (lowest index on a tie), the
  tight bounding box of the structure on that slice, in voxel indices;
- **click**: one positive click at the structure's centre on that same slice, the voxel
  farthest from the structure's border (maximum of the Euclidean distance transform; among
  equal maxima the one nearest their mean), so the click is inside even for a crescent;
- **correction**: given the current 3D result, take the false-negative and false-positive
  regions, split them into connected components (full 3D connectivity), and click at the
  centre (distance-transform maximum, with voxel spacing) of the largest component by
  volume; positive for a missed region, negative for a leaked one. This is the protocol of
  the interactive 3D segmentation challenges (e.g. CVPR 2025 SegFM).

Distances treat the image border as outside, so a region touching the border still has its
centre inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medsam2_engine.mask_measures import box_on_largest_slice, largest_slice
from medsam2_engine.prompts import Click


@dataclass(frozen=True)
class ErrorClick:
    click: Click
    region_voxels: int  # size of the error component clicked
    false_negative: bool


def _plane(mask: np.ndarray, k: int) -> np.ndarray:
    return mask if mask.ndim == 2 else mask[:, :, k]


box_prompt = box_on_largest_slice  # the protocol's first prompt


def centre_of(region: np.ndarray, spacing=None) -> tuple:
    """The voxel of ``region`` farthest from its border (distance-transform maximum)."""
    if not region.any():
        raise ValueError("cannot place a click in an empty region")
    padded = np.pad(region, 1)  # the image border counts as outside
    distance = ndimage.distance_transform_edt(padded, sampling=spacing)[(slice(1, -1),) * region.ndim]
    # several voxels can share the maximum (a strip); take the one nearest the middle of those
    ties = np.argwhere(distance >= distance.max() - 1e-6)
    middle = ties.mean(axis=0)
    best = ties[int(np.argmin(((ties - middle) ** 2).sum(axis=1)))]
    return tuple(int(v) for v in best)


def centre_click(mask: np.ndarray) -> Click:
    """One positive click at the structure's centre on its largest slice."""
    k = largest_slice(mask)
    i, j = centre_of(_plane(mask, k))
    return Click(float(i), float(j), k, True)


def correction_click(prediction: np.ndarray, reference: np.ndarray, spacing=None) -> ErrorClick | None:
    """The next correction click for ``prediction`` against ``reference``; None if they agree."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    structure = ndimage.generate_binary_structure(reference.ndim, reference.ndim)
    best = None
    for false_negative, error in ((True, reference & ~prediction), (False, prediction & ~reference)):
        components, count = ndimage.label(error, structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        index = int(np.argmax(sizes))
        if best is None or sizes[index] > best[0]:
            best = (int(sizes[index]), false_negative, components == index + 1)
    if best is None:
        return None
    size, false_negative, region = best
    position = centre_of(region, spacing)
    k = position[2] if region.ndim == 3 else 0
    return ErrorClick(Click(float(position[0]), float(position[1]), int(k), false_negative), size, false_negative)
