"""Intensities exactly as MedSAM2 prepares them, for every window and modality (issue 23).

The reference's arithmetic is written here again, independently of the app: clip to the
window, scale by the *clipped volume's* minimum and maximum to 0-255, truncate to uint8
(``medsam2_infer_3D_CT.py``); MR: the 0.5-99.5 percentiles of the non-zero voxels, zeros
kept at 0. The app's grey levels (what ``SliceFrames`` hands to the uint8 + PIL step) must
equal them on every voxel.
"""

from __future__ import annotations

import numpy as np
import pytest

from medsam2_engine.frames import SliceFrames
from medsam2_engine.volume_io import Volume, load_image
from medsam2_engine.windowing import CT_WINDOW_PRESETS, WindowError, model_window
from tests.conftest import SHARED_DATA, needs_shared_data


def reference_ct(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    image = np.clip(hu, low, high)
    return np.uint8((image - np.min(image)) / (np.max(image) - np.min(image)) * 255.0)


def reference_mr(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image[image > 0], 0.5), np.percentile(image[image > 0], 99.5)
    pre = np.clip(image, low, high)
    pre = (pre - np.min(pre)) / (np.max(pre) - np.min(pre)) * 255.0
    pre[image == 0] = 0
    return np.uint8(pre)


def app_grey(source: np.ndarray, modality: str, window=None) -> np.ndarray:
    """The app's uint8 grey levels of every slice, from a volume read as load_image reads one."""
    volume = Volume(source.astype(np.float32), np.eye(4), declared_modality=modality,
                    meta={"source_dtype": str(source.dtype)})
    chosen, _ = model_window(volume, modality, window)
    frames = SliceFrames(volume.array, chosen, image_size=64, resampling="medsam2")
    # frames.py hands image01 to the uint8 step: np.uint8(clip(image01, 0, 1) * 255.0)
    return np.stack([np.uint8(np.clip(frames.image01(k), 0.0, 1.0) * 255.0).T for k in range(len(frames))], -1)


def ct(shape=(48, 40, 6), low=-1024, high=1500, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high + 1, shape).astype(np.int16)


def test_lung_window_on_a_ct_whose_air_is_above_the_windows_floor():
    hu = ct(low=-1024, high=600)  # the window's floor -1350 lies below any voxel
    low, high = CT_WINDOW_PRESETS["lung"]
    expected = reference_ct(hu, low, high)
    assert np.array_equal(app_grey(hu, "CT", "lung"), expected)
    as_window_bounds = np.uint8((np.clip(hu, low, high) - low) / (high - low) * 255.0)
    assert np.abs(as_window_bounds.astype(int) - expected).max() >= 20  # the old scaling was far off


def test_bone_window_on_a_volume_without_bone():
    hu = ct(low=-1000, high=900, seed=1)  # nothing above 1,050 HU
    assert np.array_equal(app_grey(hu, "CT", "bone"), reference_ct(hu, *CT_WINDOW_PRESETS["bone"]))


def test_a_cropped_sub_volume_scales_by_its_own_range():
    hu = ct(seed=2)
    crop = hu[10:30, 8:28, 1:5]  # as MedSAM2's lesion script crops before scaling
    crop[crop > 100] = 100
    low, high = CT_WINDOW_PRESETS["soft_tissue"]
    assert np.array_equal(app_grey(crop, "CT"), reference_ct(crop, low, high))


def test_an_explicit_window_and_a_float32_file_follow_the_references_precision():
    hu = np.random.default_rng(3).uniform(-1000, 1000, (40, 40, 4)).astype(np.float32)
    assert np.array_equal(app_grey(hu, "CT", [-500.0, 300.0]), reference_ct(hu, -500.0, 300.0))


def test_mr_with_a_zero_background():
    rng = np.random.default_rng(4)
    mr = np.zeros((50, 44, 5), np.int16)
    mr[8:42, 6:38] = rng.gamma(3.0, 120.0, (34, 32, 5)).astype(np.int16) + 1
    mr[20, 20, 2] = 4000  # one bright vessel
    expected = reference_mr(mr)
    ours = app_grey(mr, "MR")
    assert np.array_equal(ours, expected)
    assert (ours[mr == 0] == 0).all() and (expected[mr > 0] > 0).mean() > 0.9


def test_a_constant_volume_is_zero_not_a_division_by_zero():
    for value, modality in ((40, "CT"), (0, "MR"), (300, "MR")):
        flat = np.full((8, 8, 3), value, np.int16)
        assert not app_grey(flat, modality).any()


def test_the_series_dicom_window_is_a_choice():
    hu = ct(seed=5)
    volume = Volume(hu.astype(np.float32), np.eye(4), declared_modality="CT",
                    meta={"source_dtype": "int16", "dicom_window_center": 50.0, "dicom_window_width": 350.0})
    chosen, _ = model_window(volume, None, "dicom")
    assert (chosen.low, chosen.high) == (-125.0, 225.0) and "DICOM" in chosen.source
    with pytest.raises(WindowError, match="no DICOM WindowCenter"):
        model_window(Volume(hu.astype(np.float32), np.eye(4)), None, "dicom")


@needs_shared_data
def test_a_real_dicom_series_carries_its_window():
    import pydicom

    folder = SHARED_DATA / "ct_mr_organs_totalseg" / "example_ct_dicom"
    volume = load_image(str(folder))
    first = pydicom.dcmread(sorted(p for p in folder.iterdir() if p.is_file())[0], stop_before_pixels=True)
    center = first.WindowCenter[0] if first["WindowCenter"].VM > 1 else first.WindowCenter
    width = first.WindowWidth[0] if first["WindowWidth"].VM > 1 else first.WindowWidth
    chosen, _ = model_window(volume, None, "dicom")
    assert (chosen.low, chosen.high) == (float(center) - float(width) / 2, float(center) + float(width) / 2)


@needs_shared_data
@pytest.mark.parametrize("name, modality, window", [("example_ct_sm.nii.gz", "CT", "lung"),
                                                    ("example_ct_sm.nii.gz", "CT", None),
                                                    ("example_mr_sm.nii.gz", "MR", None)])
def test_real_scans_read_by_the_app_reach_the_reference_grey_levels(name, modality, window):
    """The app's reading (MONAI's ITK reader) and scaling, against SimpleITK's reading as MedSAM2 reads."""
    import SimpleITK as sitk

    path = SHARED_DATA / "ct_mr_organs_totalseg" / name
    volume = load_image(str(path))
    chosen, _ = model_window(volume, modality, window)
    frames = SliceFrames(volume.array, chosen, image_size=64, resampling="medsam2")
    ours = np.stack([np.uint8(np.clip(frames.image01(k), 0, 1) * 255.0) for k in range(len(frames))])  # [k, j, i]
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # [z, y, x], the file's own dtype
    expected = reference_mr(source) if modality == "MR" else reference_ct(source, *CT_WINDOW_PRESETS[window or "soft_tissue"])
    assert ours.shape == expected.shape
    assert np.array_equal(ours, expected)
