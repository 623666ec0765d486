"""Windowing per modality and prompt parsing, including what the Slicer module sends."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2_engine.prompts import PromptError, parse_box, parse_points
from medsam2_engine.windowing import CT_WINDOW_PRESETS, WindowError, choose_window, guess_modality


def test_ct_defaults_to_soft_tissue_and_accepts_presets_and_ranges():
    ct = np.array([-1000.0, -100.0, 40.0, 240.0, 1200.0])
    default = choose_window(ct, "CT")
    assert (default.low, default.high) == CT_WINDOW_PRESETS["soft_tissue"]
    np.testing.assert_allclose(default.apply(ct), [0.0, 0.15, 0.5, 1.0, 1.0])
    assert choose_window(ct, "CT", "lung").low == -1350.0
    explicit = choose_window(ct, "CT", [-100, 300])
    assert (explicit.low, explicit.high) == (-100.0, 300.0)


@pytest.mark.parametrize("bad", ["lungs", [300, -100], [1, 2, 3], ["a", "b"]])
def test_bad_windows_are_named(bad):
    with pytest.raises(WindowError, match="window"):
        choose_window(np.zeros(4), "CT", bad)


def test_mr_uses_robust_percentiles_so_one_hot_voxel_does_not_wash_out_tissue():
    rng = np.random.default_rng(0)
    mr = rng.normal(300, 50, size=(50, 50, 10)).clip(0)
    mr[0, 0, 0] = 1e6  # one bright outlier
    window = choose_window(mr, "MR")
    assert window.high < 1000
    assert 0.3 < float(np.median(window.apply(mr))) < 0.7


def test_modality_guess():
    assert guess_modality(np.array([-1024.0, 0.0, 900.0])) == "CT"
    assert guess_modality(np.array([0.0, 300.0, 900.0]).reshape(1, 1, 3)) == "MR"
    assert guess_modality(np.array([0.0, 1.0]), declared="CT") == "CT"  # a DICOM tag wins
    assert guess_modality(np.array([0.0, 1.0]), declared="US") == "other"


def test_points_outside_the_image_are_refused_with_the_field_name():
    shape = (40, 28, 12)
    clicks = parse_points([[39, 27, 11], [0, 0, 0]], shape, "foreground", positive=True)
    assert [(c.i, c.j, c.k) for c in clicks] == [(39, 27, 11), (0, 0, 0)]
    with pytest.raises(PromptError, match=r"foreground\[0\] = \[40, 5, 3\] is outside the image: axis 0"):
        parse_points([[40, 5, 3]], shape, "foreground", positive=True)
    with pytest.raises(PromptError, match=r"background\[1\]: expected 3 numbers"):
        parse_points([[1, 2, 3], [1, 2]], shape, "background", positive=False)
    with pytest.raises(PromptError, match="axis 2"):
        parse_points([[1, 2, 12]], shape, "foreground", positive=True)


def test_slicer_roi_is_read_in_either_corner_order_and_clipped():
    shape = (40, 28, 12)
    # Slicer sends [i0, i1, j0, j1, k0, k1]; with DICOM orientation i0 > i1 is usual
    box = parse_box([30, 10, 20, 5, 4, 8], shape)
    assert (box.i0, box.j0, box.i1, box.j1, box.k) == (10, 5, 30, 20, 6)
    clipped = parse_box([-3, 10, 5, 35, 2, 2], shape)
    assert (clipped.i0, clipped.j1) == (0, 27)
    nested = parse_box([[10, 30], [5, 20], [6, 6]], shape)
    assert (nested.i0, nested.i1, nested.k) == (10, 30, 6)


@pytest.mark.parametrize(
    "roi, message",
    [
        ([1, 2, 3], "expected"),
        ([10, 10, 5, 20, 3, 3], "empty"),
        ([50, 60, 5, 20, 3, 3], "outside the image on axis 0"),
        ([1, 20, 5, 20, 30, 30], "slice 30 is outside"),
        ("box", "expected"),
    ],
)
def test_malformed_roi_is_refused(roi, message):
    with pytest.raises(PromptError, match=message):
        parse_box(roi, (40, 28, 12))
