"""Measures of bool masks used by validation, scoring and the evaluation harness: Dice, and
where a simulated user draws the first box (on the structure's largest slice)."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice

from .prompts import Box


def one_hot(mask: np.ndarray) -> torch.Tensor:
    """A bool mask as MONAI's metrics take it: [batch=1, classes=2 (background, foreground), *spatial]."""
    fg = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    return torch.stack([~fg, fg]).unsqueeze(0).float()


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """MONAI's Dice of the foreground. Empty masks: both empty is 1.0, one empty is 0.0."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    value = compute_dice(one_hot(prediction), one_hot(reference), include_background=False, ignore_empty=False)
    return float(value[0, 0])


def largest_slice(mask: np.ndarray) -> int:
    """The slice (last axis) with most foreground; 0 for a 2D mask."""
    if mask.ndim == 2:
        return 0
    areas = mask.reshape(-1, mask.shape[-1]).sum(axis=0)
    if not areas.any():
        raise ValueError("the reference structure is empty")
    return int(np.argmax(areas))


def box_on_largest_slice(mask: np.ndarray) -> Box:
    """The tight box around the structure ([i, j(, k)] bool) on its largest slice."""
    k = largest_slice(mask)
    ii, jj = np.nonzero(mask if mask.ndim == 2 else mask[:, :, k])
    return Box(float(ii.min()), float(jj.min()), float(ii.max()), float(jj.max()), k)
