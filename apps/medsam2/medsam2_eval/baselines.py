"""Baselines that learn nothing, given the same prompts as the model.

- **copy**: the reference mask of the prompted slice (as if the user had traced it
  perfectly) copied unchanged to every slice the reference structure spans. It is told
  the structure's true extent, so it is an optimistic "shape never changes" baseline; a
  propagating model should beat it inside the structure.
- **fill_box**: the prompt's box filled on every slice the reference spans (told the true
  extent too, so optimistic).
- **otsu_box**: an Otsu threshold computed inside the box on the prompted slice; the side
  of the threshold holding the box centre is foreground; applied inside the same box on
  every slice, then only the 3D connected component(s) touching the prompted slice's
  component at the box centre are kept. Classical, prompt-only, no reference used.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from medsam2_engine.prompts import Box


def copy_slice_baseline(reference: np.ndarray, k: int) -> np.ndarray:
    if reference.ndim == 2:
        return reference.copy()
    spans = np.nonzero(reference.reshape(-1, reference.shape[-1]).any(axis=0))[0]
    out = np.zeros_like(reference, dtype=bool)
    out[:, :, spans.min(): spans.max() + 1] = reference[:, :, k][:, :, None]
    return out


def fill_box_baseline(reference: np.ndarray, box: Box) -> np.ndarray:
    spans = np.nonzero(reference.reshape(-1, reference.shape[-1]).any(axis=0))[0]
    out = np.zeros_like(reference, dtype=bool)
    out[int(box.i0): int(box.i1) + 1, int(box.j0): int(box.j1) + 1, spans.min(): spans.max() + 1] = True
    return out


def otsu_box_baseline(image: np.ndarray, box: Box) -> np.ndarray:
    volume = image[:, :, None] if image.ndim == 2 else image
    i0, i1 = int(np.floor(box.i0)), int(np.ceil(box.i1)) + 1
    j0, j1 = int(np.floor(box.j0)), int(np.ceil(box.j1)) + 1
    inside = volume[i0:i1, j0:j1, box.k if image.ndim == 3 else 0].astype(np.float64)
    out = np.zeros(volume.shape, dtype=bool)
    if inside.size < 2 or inside.min() == inside.max():
        out[i0:i1, j0:j1, :] = True  # nothing to threshold: the box itself
        return out if image.ndim == 3 else out[:, :, 0]
    threshold = threshold_otsu(inside)
    ci, cj = (i1 - i0) // 2, (j1 - j0) // 2
    centre = np.median(inside[max(ci - 1, 0): ci + 2, max(cj - 1, 0): cj + 2])
    above = centre > threshold
    region = volume[i0:i1, j0:j1, :]
    out[i0:i1, j0:j1, :] = region > threshold if above else region <= threshold
    k = box.k if image.ndim == 3 else 0
    components, count = ndimage.label(out, structure=np.ones((3, 3, 3)))
    seed_labels = set(np.unique(components[i0:i1, j0:j1, k])) - {0}
    at_centre = components[i0 + ci, j0 + cj, k]
    keep = {at_centre} if at_centre else seed_labels
    out = np.isin(components, list(keep)) if keep else out
    return out if image.ndim == 3 else out[:, :, 0]
