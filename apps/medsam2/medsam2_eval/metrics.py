"""Dice and normalised surface distance (NSD), computed by ``monai.metrics``.

Both compare one binary prediction with one binary reference on the same grid. NSD is the
fraction of both surfaces lying within ``tolerance`` (mm, using the voxel spacing) of the
other surface. An empty prediction of a non-empty reference scores 0 on both.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from monai.metrics import compute_surface_dice

from medsam2_engine.mask_measures import dice, one_hot

DEFAULT_NSD_TOLERANCE_MM = 2.0


def surface_dice(prediction: np.ndarray, reference: np.ndarray, spacing, tolerance: float) -> float:
    _check(prediction, reference)
    if not prediction.any() or not reference.any():
        return 1.0 if prediction.any() == reference.any() else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # monai warns on one-sided empty slices of the background class
        value = compute_surface_dice(
            one_hot(prediction),
            one_hot(reference),
            class_thresholds=[float(tolerance)],
            include_background=False,
            spacing=[float(s) for s in spacing],
        )
    result = float(value[0, 0])
    return 0.0 if math.isnan(result) else result


def scores(prediction: np.ndarray, reference: np.ndarray, spacing, tolerance: float) -> dict:
    return {
        "dice": round(dice(prediction, reference), 5),
        "nsd": round(surface_dice(prediction, reference, spacing, tolerance), 5),
    }


def _check(prediction: np.ndarray, reference: np.ndarray) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")


def summary(values) -> dict:
    """Mean, standard deviation, median, min and max of the finite values, with their count."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return {"n": 0}
    return {
        "n": int(finite.size),
        "mean": round(float(finite.mean()), 4),
        "std": round(float(finite.std()), 4),
        "median": round(float(np.median(finite)), 4),
        "min": round(float(finite.min()), 4),
        "max": round(float(finite.max()), 4),
    }
