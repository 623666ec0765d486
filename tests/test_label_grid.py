"""One rule for a label on its image's grid: strict for saved labels, resampled for references."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2_engine.label_grid import LabelMismatch, label_on_grid
from medsam2_engine.volume_io import Volume


def _volumes():
    image = Volume(np.zeros((20, 16, 6), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "image")
    label = np.zeros((20, 16, 6), np.uint8)
    label[5:9, 4:8, 2:4] = 1
    return image, label


def test_a_label_on_the_grid_is_returned_unchanged_by_both_rules():
    image, label = _volumes()
    same = Volume(label, image.affine.copy(), "label")
    for resample in (False, True):
        np.testing.assert_array_equal(label_on_grid(image, same, resample=resample), label)


def test_a_shifted_label_is_refused_when_saved_and_resampled_for_evaluation():
    image, label = _volumes()
    shifted_affine = image.affine.copy()
    shifted_affine[0, 3] = 2.0  # the label's voxel 0 lies at the image's voxel 2 along i
    shifted = Volume(label, shifted_affine, "label")
    with pytest.raises(LabelMismatch, match="another affine"):
        label_on_grid(image, shifted, resample=False, name="saved label")
    on_grid = label_on_grid(image, shifted, resample=True)
    expected = np.zeros_like(label)
    expected[7:11, 4:8, 2:4] = 1
    np.testing.assert_array_equal(on_grid, expected)


def test_another_shape_is_named_in_the_refusal():
    image, _ = _volumes()
    smaller = Volume(np.zeros((20, 16, 5), np.uint8), image.affine.copy(), "label")
    with pytest.raises(LabelMismatch, match=r"shape \[20, 16, 5\] where the image has \[20, 16, 6\]"):
        label_on_grid(image, smaller, resample=False)
