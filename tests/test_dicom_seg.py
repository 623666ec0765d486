"""DICOM SEG of a saved label (lib/datastores/dicom_seg.py), without a PACS: codes, segments, grid."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.dicom_series import write_series

pytest.importorskip("highdicom", reason="highdicom is not installed (requirements.txt)")

AFFINE = np.array([[0.7, 0, 0, -20.0], [0, 0.8, 0, 10.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def test_codes_fit_the_name_and_never_borrow_another_structures_code():
    from lib.datastores.dicom_seg import codes_for

    def pair(name):
        codes = codes_for(name)
        return codes.category.value, codes.type.value

    assert pair("lesion") == ("49755003", "52988006")  # morphologically abnormal structure / lesion
    assert pair("Tumour") == ("49755003", "108369006")  # neoplasm
    assert pair("organ") == ("91723000", "113343008")
    assert pair("vessel") == ("91723000", "59820001")
    assert pair("bone") == ("85756007", "272673000")
    assert pair("liver") == ("91723000", "10200004")
    for unknown in ("other", "nodule x", "lesion2"):
        assert pair(unknown) == ("85756007", "85756007")  # generic tissue


def test_segmentation_has_one_segment_per_value_on_the_source_grid(tmp_path):
    import SimpleITK as sitk
    from lib.datastores.dicom_seg import SegAuthor, build_segmentation

    shape = (20, 16, 6)
    uids = write_series(np.zeros(shape, np.int16), AFFINE, tmp_path / "ct")
    label = np.zeros(shape, np.uint8)
    label[3:8, 4:9, 1:3] = 1
    label[12:15, 2:5, 4] = 3
    # the label file on the same grid, written as a client would (LPS geometry from the RAS affine)
    image = sitk.GetImageFromArray(np.transpose(label, (2, 1, 0)))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((20.0, -10.0, -30.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / "label.nrrd"))
    author = SegAuthor("MedSAM-2 MONAI Label app", "0.1.0", "MedSAM-2 (MONAI Label app medsam2 0.1.0) segmentation")

    seg = build_segmentation(str(tmp_path / "ct"), str(tmp_path / "label.nrrd"), {1: "lesion", 2: "organ"}, author)

    assert [(d.SegmentNumber, d.SegmentLabel) for d in seg.SegmentSequence] == [(1, "lesion"), (2, "label 3")]
    assert all(d.SegmentAlgorithmType == "SEMIAUTOMATIC" for d in seg.SegmentSequence)
    assert seg.FrameOfReferenceUID == uids["frame_of_reference"]
    for number, value in ((1, 1), (2, 3)):
        pixels = seg.get_pixels_by_source_instance(uids["instances"], segment_numbers=[number],
                                                   assert_missing_frames_are_empty=True)[..., 0]
        np.testing.assert_array_equal(pixels, np.transpose(label == value, (2, 1, 0)))


def test_empty_label_is_refused(tmp_path):
    import SimpleITK as sitk
    from lib.datastores.dicom_seg import SegAuthor, build_segmentation

    write_series(np.zeros((8, 8, 3), np.int16), np.eye(4), tmp_path / "ct")
    sitk.WriteImage(sitk.Image(8, 8, 3, sitk.sitkUInt8), str(tmp_path / "empty.nrrd"))
    with pytest.raises(ValueError, match="empty"):
        build_segmentation(str(tmp_path / "ct"), str(tmp_path / "empty.nrrd"), {}, SegAuthor("a", "1", "d"))
