"""A cine loop and an ultrasound still on a PACS, end to end: a real echocardiogram (CAMUS) stored in Orthanc as an ultrasound
multi-frame image (no frame of reference, as scanners write loops) is listed as a study, opened in
the page as a loop of its frames, segmented both ways from a box on a middle frame, and saved back
to the PACS as a DICOM SEG whose every frame names its source frame. The SEG is read by highdicom
and checked by dciodvfy (dicom3tools); a newer SEG of the loop in the PACS (another replica's save)
is what the page shows next. A single-frame colour ultrasound image (a still) is a study of its own,
opens in the page as a picture in its colours, and its label goes back as a DICOM SEG of that
instance. Phantom-trained weights: the masks prove plumbing, not accuracy.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import needs_shared_data
from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from tests.support.dicom_series import write_cine_dicom
from tests.support.orthanc import needs_orthanc
from tests.support.pacs_app import LOOP_FRAME_TIME_MS
from tests.support.tool_tour import draw, held, position
from tests.support.viewer_page import final_label_info, get, wait_idle

FRAME_TIME_MS = LOOP_FRAME_TIME_MS
needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dciodvfy is not installed (Debian dicom3tools: bash setup.sh --tests)")


@pytest.fixture
def pacs_loop(pacs_studies):
    if not pacs_studies.loop:
        pytest.skip("the CAMUS cine loops are not in ../shared/data")
    loop = pacs_studies.loop
    return loop["uid"], loop["frames"], loop["truth"], loop["dataset"]


def _listed_alone_then_opened(server, page, uid: str, source, described: list, patient_id: str):
    """The instance ``uid`` is a study of the page's list (described with each of ``described``, never with
    the patient's id), its series is not; the page opens it."""
    status, body = get(server.url + "/medsam2/viewer/studies")
    listed = {s["image"]: s for s in json.loads(body)["studies"]}
    assert uid in listed and all(words in listed[uid]["description"] for words in described), listed.get(uid)
    assert patient_id not in body.decode() and source.SeriesInstanceUID not in listed
    page.goto(server.url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{uid}']")
    wait_idle(page)
    return page


def _seg_frames(orthanc, study_uid: str, seg_series: str, loop_uid: str, frames: int) -> dict:
    """Segment label -> [i, j, t] mask, read from Orthanc by highdicom over the loop's frames."""
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient

    (dataset,) = DICOMwebClient(orthanc.dicomweb).retrieve_series(study_uid, seg_series)
    seg = hd.seg.Segmentation.from_dataset(dataset)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_frame(loop_uid, list(range(1, frames + 1)), segment_numbers=numbers,
                                            combine_segments=False, assert_missing_frames_are_empty=True)
    return dataset, {str(s.SegmentLabel): np.transpose(pixels[..., n], (2, 1, 0)) > 0
                     for n, s in enumerate(seg.SegmentSequence)}


@needs_orthanc
@needs_chromium
@needs_shared_data
def test_a_loop_on_the_pacs_is_segmented_in_the_page_and_saved_back_as_seg(pacs_server, pacs_loop, orthanc,
                                                                         chromium_page, tmp_path):
    uid, frames, truth, source = pacs_loop
    page = _listed_alone_then_opened(pacs_server, chromium_page, uid, source,
                                     [f"loop of {frames.shape[2]} frames", "apical two chamber"], "ECHO-7")
    shape = frames.shape
    assert page.evaluate("window.medsam2Viewer.view.dims") == list(shape)
    assert page.inner_text("#slice-name") == "Frame" and page.is_visible("#play")
    assert page.evaluate("window.medsam2Viewer.cine.frameTimeMs") == pytest.approx(FRAME_TIME_MS, abs=0.01)
    middle = shape[2] // 2
    shown = page.evaluate("k => { const v = window.medsam2Viewer.view; const [ni, nj] = v.dims;"
                          " return Array.from(v.image.voxels.slice(ni * nj * k, ni * nj * (k + 1))); }", middle)
    np.testing.assert_array_equal(np.array(shown).reshape(shape[1], shape[0]).T, frames[:, :, middle])

    # a box around the cavity on a middle frame: both ways through time
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", middle)
    page.click("#labels li[data-label=lesion]")
    ii, jj = np.nonzero(truth[:, :, middle])
    draw(page, "box", [position(page, [ii.min(), jj.min(), middle]), position(page, [ii.max(), jj.max(), middle])])
    mask = held(page, 1, shape)
    assert mask[:, :, middle].any() and mask[:, :, 0].any() and mask[:, :, -1].any(), "not carried both ways"
    screenshot(page, "pacs-cine-1-box", tmp_path)
    page.click("#save")
    page.wait_for_function("document.getElementById('save-status').textContent.length > 0", timeout=120_000)
    assert "saved" in page.inner_text("#save-status").lower(), page.inner_text("#save-status")

    # in the PACS: a SEG of the loop, each frame on its source frame, the voxels the page held
    info = final_label_info(pacs_server.url, uid)
    dataset, segments = _seg_frames(orthanc, str(source.StudyInstanceUID), info["SeriesInstanceUID"], uid, shape[2])
    assert list(segments) == ["lesion"]
    np.testing.assert_array_equal(segments["lesion"], mask)
    assert dataset.PatientID == "ECHO-7" and dataset.StudyInstanceUID == source.StudyInstanceUID
    assert "FrameOfReferenceUID" not in dataset  # the loop has none: the SEG claims no place
    referenced = {int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                  for item in dataset.PerFrameFunctionalGroupsSequence}
    assert referenced == {t + 1 for t in range(shape[2]) if mask[:, :, t].any()}
    if shutil.which("dciodvfy"):
        checked = _dciodvfy(dataset, tmp_path)
        assert "Error" not in checked, checked

    # another replica saves a newer SEG of the loop (its own correction): the page shows that one
    newer = _newer_seg(source, mask)
    orthanc.upload([newer(tmp_path / "newer.dcm")])
    _wait_for_label_version(pacs_server.url, uid, newer.series_uid)  # the PACS is asked every few seconds
    page.reload()
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{uid}']")
    wait_idle(page)
    np.testing.assert_array_equal(held(page, 1, shape), newer.mask)
    screenshot(page, "pacs-cine-2-reopened", tmp_path)

    # a replica that never opened the loop, asked for its label (training, Slicer): it fetches the loop
    # and reads the PACS's newest SEG of it
    import nibabel as nib
    from dicomweb_client import DICOMwebClient
    from lib.datastores.dicom_seg import SegAuthor
    from lib.datastores.dicomweb import MedSam2DicomWebDatastore

    replica = MedSam2DicomWebDatastore(DICOMwebClient(orthanc.dicomweb), ["CT", "MR", "US"], SegAuthor("a", "1", "d"),
                                       ["lesion"], cache_path=str(tmp_path / "replica-cache"))
    label = replica.get_label_uri(uid, "final")
    np.testing.assert_array_equal(np.asarray(nib.load(label).dataobj) == 1, newer.mask)


@needs_orthanc
@needs_chromium
@needs_shared_data
def test_an_ultrasound_still_on_the_pacs_is_a_picture_segmented_in_the_page_and_saved_back_as_seg(
        pacs_server, pacs_studies, orthanc, chromium_page, tmp_path):
    import highdicom as hd
    import nibabel as nib
    from dicomweb_client import DICOMwebClient
    from PIL import Image

    from lib.datastores.dicom_seg import SegAuthor
    from lib.datastores.dicomweb import MedSam2DicomWebDatastore

    uid, rgb, truth, source = (pacs_studies.still[key] for key in ("uid", "rgb", "truth", "dataset"))
    page = _listed_alone_then_opened(pacs_server, chromium_page, uid, source,
                                     ["still image", "apical four chamber stills"], "ECHO-8")
    shape = (rgb.shape[0], rgb.shape[1], 1)
    assert page.evaluate("window.medsam2Viewer.view.dims") == list(shape)
    assert page.is_disabled("#slice")  # a picture: no slices, no frames
    shot = Image.open(screenshot(page, "pacs-still-1-opened", tmp_path)).convert("RGB")
    for i, j in ((3, 80), (200, 200), tuple(np.argwhere(truth).mean(axis=0).round().astype(int))):
        x, y = position(page, [i, j, 0])  # the yellow depth scale, the sector, the cavity: in the still's colours
        around = rgb[i - 1:i + 2, j - 1:j + 2].reshape(-1, 3).astype(int)  # drawn scaled: between its neighbours
        shown = np.array(shot.getpixel((round(x), round(y))))
        assert (shown >= around.min(axis=0) - 3).all() and (shown <= around.max(axis=0) + 3).all(), (i, j, shown)
    assert np.array(shot.getpixel(tuple(round(v) for v in position(page, [3, 80, 0])))) @ [1, 1, -2] > 200  # yellow

    page.click("#labels li[data-label=lesion]")
    ii, jj = np.nonzero(truth)
    draw(page, "box", [position(page, [ii.min(), jj.min(), 0]), position(page, [ii.max(), jj.max(), 0])])
    mask = held(page, 1, shape)
    assert mask.any()
    page.click("#save")
    page.wait_for_function("document.getElementById('save-status').textContent.length > 0", timeout=120_000)
    assert "saved" in page.inner_text("#save-status").lower(), page.inner_text("#save-status")
    screenshot(page, "pacs-still-2-saved", tmp_path)

    # in the PACS: a SEG of that instance, in its study, with the pixels the page held
    info = final_label_info(pacs_server.url, uid)
    (dataset,) = DICOMwebClient(orthanc.dicomweb).retrieve_series(str(source.StudyInstanceUID),
                                                                  info["SeriesInstanceUID"])
    seg = hd.seg.Segmentation.from_dataset(dataset)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["lesion"]
    pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1], combine_segments=False)
    np.testing.assert_array_equal(np.transpose(pixels[0, :, :, 0] > 0), mask[:, :, 0])
    assert dataset.PatientID == "ECHO-8" and dataset.StudyInstanceUID == source.StudyInstanceUID
    if shutil.which("dciodvfy"):
        checked = _dciodvfy(dataset, tmp_path)
        assert "Error" not in checked, checked

    # the page reopens it with its label; a replica that never opened it reads the SEG from the PACS
    page.reload()
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{uid}']")
    wait_idle(page)
    np.testing.assert_array_equal(held(page, 1, shape), mask)
    replica = MedSam2DicomWebDatastore(DICOMwebClient(orthanc.dicomweb), ["CT", "MR", "US"], SegAuthor("a", "1", "d"),
                                       ["lesion"], cache_path=str(tmp_path / "replica-cache"))
    label = np.asarray(nib.load(replica.get_label_uri(uid, "final")).dataobj)
    np.testing.assert_array_equal(label.reshape(shape) == 1, mask)


@needs_dciodvfy
def test_the_loop_seg_writer_passes_dciodvfy_with_overlapping_segments(tmp_path):
    """Two overlapping structures on a small loop: dciodvfy finds no error; highdicom reads back each
    segment whole."""
    import pydicom

    from lib.datastores.cine_seg import build_cine_segmentation, read_instance_segmentation
    from lib.datastores.dicom_seg import SegAuthor

    rng = np.random.default_rng(4)
    path = write_cine_dicom(tmp_path / "loop.dcm", (rng.random((21, 13, 6)) * 255).astype(np.uint8), 33.3,
                            PatientOrientation="", StudyDate="20260101", StudyTime="080000", StudyID="1")
    source = pydicom.dcmread(path)
    a = np.zeros((6, 13, 21), bool)
    a[1:5, 2:9, 3:15] = True
    b = np.zeros((6, 13, 21), bool)
    b[3, 6:12, 10:20] = True
    seg = build_cine_segmentation(source, {1: a, 3: b}, {1: "heart"}, SegAuthor("app", "1", "MedSAM-2"))
    assert seg.SegmentsOverlap == "YES" and [s.SegmentLabel for s in seg.SegmentSequence] == ["heart", "label 3"]
    checked = _dciodvfy(seg, tmp_path)
    assert "Error" not in checked, checked
    masks, names = read_instance_segmentation(pydicom.dcmread(_saved(seg, tmp_path / "seg.dcm")),
                                          str(source.SOPInstanceUID), 6)
    np.testing.assert_array_equal(masks[..., 0], a)
    np.testing.assert_array_equal(masks[..., 1], b)
    with pytest.raises(ValueError, match="empty"):
        build_cine_segmentation(source, {1: np.zeros_like(a)}, {}, SegAuthor("app", "1", "MedSAM-2"))
    with pytest.raises(ValueError, match="is not the loop's"):
        build_cine_segmentation(source, {1: a[:, :, :20]}, {}, SegAuthor("app", "1", "MedSAM-2"))


def _wait_for_label_version(url: str, image: str, version: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = get(f"{url}/datastore/label/info?label={image}&tag=final")
        if status == 200 and json.loads(body).get("version") == version:
            return
        time.sleep(0.5)
    raise AssertionError(f"the app never took the PACS's newer SEG {version} for {image}")


def _saved(dataset, path):
    dataset.save_as(str(path), write_like_original=False)
    return path


def _dciodvfy(dataset, tmp_path) -> str:
    path = _saved(dataset, tmp_path / "checked.dcm")
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def _newer_seg(source, mask: np.ndarray):
    """A writer of a SEG of the loop, as another replica saves it: the mask eroded by two pixels."""
    from scipy import ndimage

    from lib.datastores.cine_seg import build_cine_segmentation
    from lib.datastores.dicom_seg import SegAuthor

    eroded = np.stack([ndimage.binary_erosion(mask[:, :, t], iterations=2) for t in range(mask.shape[2])], axis=2)

    def write(path):
        seg = build_cine_segmentation(source, {1: np.transpose(eroded, (2, 1, 0))}, {1: "lesion"},
                                      SegAuthor("another replica", "1", "MedSAM-2"))
        write.series_uid = str(seg.SeriesInstanceUID)
        return _saved(seg, path)

    write.mask = eroded
    return write
