"""Results land on exactly the input grid: NIfTI, NRRD and a real DICOM series."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medsam2_engine.prompts import Click, LabelPrompts
from medsam2_engine.volume_io import load_image, save_mask
from tests.conftest import SHARED_DATA, needs_shared_data

TCIA = SHARED_DATA / "mr_brain_tumor_tcia" / "dicom" / "PGBM-001_11-19-1991"


def _oblique_nifti(path):
    shape = (30, 22, 9)
    angle = np.deg2rad(20.0)  # an oblique acquisition: rotated, permuted axes, anisotropic
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.array([[0, -0.9, 0], [0.8, 0, 0], [0, 0, 2.5]])
    affine[:3, 3] = [12.0, -30.0, 7.0]
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    nib.save(nib.Nifti1Image(data, affine), path)
    return data, affine


def test_nifti_array_is_in_voxel_order_and_the_mask_keeps_the_affine(tmp_path):
    data, affine = _oblique_nifti(tmp_path / "img.nii.gz")
    volume = load_image(tmp_path / "img.nii.gz")
    np.testing.assert_array_equal(volume.array, data)  # [i, j, k] exactly as stored
    mask = np.zeros(data.shape, np.uint8)
    mask[3:9, 4:6, 2] = 1
    save_mask(tmp_path / "mask.nii.gz", mask, volume)
    written = nib.load(tmp_path / "mask.nii.gz")
    assert written.shape == data.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(written.dataobj), mask)


def test_nrrd_roundtrip(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(7, 11, 13)).astype(np.float32))
    image.SetSpacing((0.7, 0.9, 3.0))
    image.SetOrigin((5.0, -4.0, 20.0))
    sitk.WriteImage(image, str(tmp_path / "img.nrrd"))
    volume = load_image(tmp_path / "img.nrrd")
    assert volume.array.shape == (13, 11, 7)
    save_mask(tmp_path / "mask.nrrd", np.ones(volume.array.shape, np.uint8), volume)
    written = sitk.ReadImage(str(tmp_path / "mask.nrrd"))
    assert written.GetSize() == image.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-5)


@needs_shared_data
def test_dicom_series_result_lands_on_the_series_grid(segmenter, tmp_path):
    """The TCIA T1post series: the mask written for it has the series' own geometry."""
    series = TCIA / "T1post"
    volume = load_image(series)
    assert volume.declared_modality == "MR"
    assert volume.array.shape == (320, 260, 25) or sorted(volume.array.shape) == sorted((320, 260, 25))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    reference = reader.Execute()

    i, j, k = (s // 2 for s in volume.array.shape)
    result = segmenter.run(volume, {"lesion": LabelPrompts(clicks=[Click(i, j, k, True)])}, ("io", "dicom"))
    mask = result.labels["lesion"].mask.astype(np.uint8)
    save_mask(tmp_path / "mask.nii.gz", mask, volume)
    written = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-5)
    # voxel [i, j, k] of our array is ITK index (i, j, k) of the written file
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written).transpose(2, 1, 0), mask)


@needs_shared_data
def test_dicom_mask_series_matches_its_image_series():
    """The TCIA mask series read the same way sits on the image's grid (a real-data sanity check)."""
    image = load_image(TCIA / "T1post")
    mask = load_image(TCIA / "MaskTumor")
    assert image.array.shape == mask.array.shape
    np.testing.assert_allclose(image.affine, mask.affine, atol=1e-3)
    assert mask.array.max() > 0


def test_dicom_series_written_from_a_volume_reads_back_identically(tmp_path):
    """The PACS tests' series writer (tests/support/dicom_series.py) against the loader, oblique-free."""
    from tests.support.dicom_series import write_series

    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(24, 18, 7)).astype(np.int16)
    affine = np.array([[0.7, 0, 0, -12.5], [0, 0.9, 0, 30.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
    uids = write_series(array, affine, tmp_path / "series", modality="MR")
    volume = load_image(tmp_path / "series")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    assert volume.declared_modality == "MR" and len(uids["instances"]) == 7


def test_the_display_read_is_the_engines_grid_whole_and_one_slice(tmp_path):
    """``load_for_display`` (nibabel, for the page) gives load_image's voxels and affine: flipped,
    oblique and permuted axes, qform or sform only; one slice k is the volume's slice k there."""
    from scipy.spatial.transform import Rotation

    from medsam2_engine.volume_io import load_for_display

    rng = np.random.default_rng(0)
    array = np.round(rng.normal(0, 300, (7, 5, 4))).astype(np.int16)
    oblique = np.eye(4)
    oblique[:3, :3] = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix() @ np.diag([0.7, 0.8, 2.5])
    oblique[:3, 3] = [5, -3, 7]
    permuted = np.eye(4)
    permuted[:3, :3] = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]]) @ np.diag([1.0, 1.2, 0.9])
    flipped = np.array([[-0.9, 0, 0, 20.0], [0, -0.8, 0, 15.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])
    for name, affine in {"flipped": flipped, "oblique": oblique, "permuted": permuted}.items():
        for qform, sform in ((1, 1), (1, 0), (0, 1)):
            image = nib.Nifti1Image(array, affine)
            image.set_qform(affine if qform else None, code=qform)
            image.set_sform(affine if sform else None, code=sform)
            path = tmp_path / f"{name}-{qform}{sform}.nii.gz"
            nib.save(image, path)
            engine, shown = load_image(path), load_for_display(path)
            np.testing.assert_array_equal(shown.array, engine.array)
            np.testing.assert_allclose(shown.affine, engine.affine, atol=1e-4)
            one = load_for_display(path, k=2)
            np.testing.assert_array_equal(one.array[:, :, 0], engine.array[:, :, 2])
            # voxel (i, j, 0) of the slice is where voxel (i, j, 2) of the volume is
            np.testing.assert_allclose(one.affine @ [3, 1, 0, 1], engine.affine @ [3, 1, 2, 1], atol=1e-4)


def _nifti_cases(tmp_path):
    """(name, path, whether nibabel may read it for the engine) of NIfTI files a site may hold."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(1)
    array = np.round(rng.normal(0, 300, (9, 6, 5))).astype(np.int16)
    oblique = np.eye(4)
    oblique[:3, :3] = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix() @ np.diag([0.7, 0.8, 2.5])
    oblique[:3, 3] = [5, -3, 7]
    sheared = oblique.copy()
    sheared[0, 1] += 0.3
    flipped = np.array([[-0.9, 0, 0, 20.0], [0, -0.8, 0, 15.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])
    cases = []

    def save(name, image, plain):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(image, path)
        cases.append((name, path, plain))

    for qform, sform in ((1, 1), (1, 0), (0, 1)):
        image = nib.Nifti1Image(array, oblique)
        image.set_qform(oblique if qform else None, code=qform)
        image.set_sform(oblique if sform else None, code=sform)
        save(f"oblique q{qform} s{sform}", image, True)
    save("flipped float32", nib.Nifti1Image(array.astype(np.float32) / 3, flipped), True)
    save("uint8", nib.Nifti1Image((array % 200).astype(np.uint8), flipped), True)
    scaled = nib.Nifti1Image(array / 7.0, flipped)
    scaled.set_data_dtype(np.int16)  # stored as int16 with nibabel's slope and intercept
    save("scaled", scaled, False)
    save("sheared sform", nib.Nifti1Image(array, sheared), False)
    disagreeing = nib.Nifti1Image(array, oblique)
    disagreeing.set_qform(flipped, code=1)
    save("sform and qform disagree", disagreeing, False)
    return cases


def test_a_plain_nifti_read_by_nibabel_is_what_itk_reads(tmp_path):
    """The engine reads a plain NIfTI with nibabel (4x sooner): same voxels, affine and source type
    as ITK's reader; files where their rules could differ go to ITK."""
    from medsam2_engine.volume_io import _plain_nifti, load_with_readers
    from medsam2_engine.windowing import precision_of

    for name, path, plain in _nifti_cases(tmp_path):
        quick = _plain_nifti(str(path))
        assert (quick is not None) == plain, name
        engine, itk = load_image(path), load_with_readers(str(path))
        np.testing.assert_array_equal(engine.array, itk.array, err_msg=name)
        assert engine.array.dtype == itk.array.dtype == np.float32
        np.testing.assert_allclose(engine.affine, itk.affine, atol=1e-4, err_msg=name)
        # the source type sets the arithmetic the window is computed in (ITK may widen uint16 to int32)
        assert precision_of(engine.meta["source_dtype"]) == precision_of(itk.meta["source_dtype"]), name
        assert engine.declared_modality == itk.declared_modality and engine.is_rgb == itk.is_rgb


@needs_shared_data
def test_every_real_nifti_reads_the_same_with_nibabel_as_with_itk():
    from medsam2_engine.volume_io import _plain_nifti, load_with_readers
    from medsam2_engine.windowing import precision_of

    paths = sorted(SHARED_DATA.rglob("*.nii.gz")) + sorted(SHARED_DATA.rglob("*.nii"))
    read = 0
    for path in paths[:40]:
        quick = _plain_nifti(str(path))
        if quick is None:
            continue
        itk = load_with_readers(str(path))
        np.testing.assert_array_equal(quick.array, itk.array, err_msg=str(path))
        np.testing.assert_allclose(quick.affine, itk.affine, atol=1e-4, err_msg=str(path))
        assert precision_of(quick.meta["source_dtype"]) == precision_of(itk.meta["source_dtype"]), path
        read += 1
    assert read, f"no plain NIfTI among {len(paths)} files in {SHARED_DATA}"
