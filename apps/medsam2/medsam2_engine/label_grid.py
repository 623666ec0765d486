"""A label map on its image's grid: the one place that decides whether a label fits its image.

"Fits" means the same spatial shape and, for volumes, affines equal within
``AFFINE_TOLERANCE`` mm. What happens to a label that does not fit depends on where it
comes from, and the caller says which:

- a label a clinician saves through the app must fit (``resample=False``): the app's
  clients write on the image's grid, so a misfit is a client bug or a wrong file, and it
  must never reach training silently;
- a reference label of a public dataset (``resample=True``) is often stored on a grid of
  its own (DICOM SEG, another tool's export); it is resampled onto the image by nearest
  neighbour for evaluation.
"""

from __future__ import annotations

import numpy as np

from .volume_io import Volume

AFFINE_TOLERANCE = 1e-3  # mm; ITK and NiBabel round-trips differ far below this


class LabelMismatch(ValueError):
    """The label file cannot be used with its image."""


def grid_mismatch(image: Volume, label: Volume) -> str | None:
    """What differs between the label's grid and the image's, or None when the label fits."""
    if tuple(label.spatial_shape) != tuple(image.spatial_shape):
        return f"shape {list(label.spatial_shape)} where the image has {list(image.spatial_shape)}"
    if image.is_3d and not np.allclose(label.affine, image.affine, atol=AFFINE_TOLERANCE):
        diff = float(np.abs(np.asarray(label.affine) - np.asarray(image.affine)).max())
        return f"another affine (orientation/spacing/origin), largest difference {diff:.4g}"
    return None


def label_on_grid(image: Volume, label: Volume, resample: bool, name: str = "label") -> np.ndarray:
    """``label``'s array on ``image``'s grid; raises LabelMismatch when it does not fit and ``resample`` is off."""
    problem = grid_mismatch(image, label)
    if problem is None:
        return label.array
    if not resample or not (image.is_3d and label.is_3d):
        raise LabelMismatch(f"{name} has {problem}; a label must be saved on its image's grid")
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    src = MetaTensor(np.asarray(label.array, np.float32)[None], affine=label.affine)
    dst = MetaTensor(np.zeros((1, *image.spatial_shape), np.float32), affine=image.affine)
    return np.asarray(ResampleToMatch(mode="nearest", padding_mode="zeros")(src, dst)[0])
