"""The app on a real PACS (Orthanc + DICOMweb), over plain HTTP as OHIF drives it.

OHIF's request sequence (captured in tests/test_ohif.py): ``POST /infer/medsam2_3d?image=
<SeriesInstanceUID>&output=image`` with every point resent and no label or client id; after
"Clear Points" only the new point, on another slice. Then a label saved through the API
must land in the PACS as a DICOM SEG that says what it is, read back with highdicom.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.orthanc import needs_orthanc

pytestmark = needs_orthanc
OHIF_PARAMS = {"background": [], "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False,
               "restore_label_idx": False}


def infer(server, series_uid: str, foreground) -> requests.Response:
    params = {"foreground": foreground, **OHIF_PARAMS}
    return requests.post(f"{server.url}/infer/medsam2_3d", params={"image": series_uid, "output": "image"},
                         files={"params": (None, json.dumps(params))}, timeout=300)


def read_result(response, folder: Path):
    """(mask [i, j, k], SimpleITK image) of an .nrrd answer."""
    import SimpleITK as sitk

    path = folder / f"result-{time.monotonic_ns()}.nrrd"
    path.write_bytes(response.content)
    image = sitk.ReadImage(str(path))
    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)), image, path


def cached_file(server, series_uid: str) -> Path:
    found = list(Path(server.log_path.parent / "cache").rglob(f"{series_uid}.nii.gz"))
    assert len(found) == 1, found
    return found[0]


def test_ct_and_mr_series_are_listed(pacs_server, pacs_studies, orthanc):  # noqa: F811
    # CT and MR series, and each ultrasound loop and still (a study of its own: test_pacs_cine.py)
    from lib.datastores.dicomweb import PACS_LIST_TTL_S

    assert orthanc.series_uids("MR"), "the PACS holds no MR series"
    deadline = time.monotonic() + PACS_LIST_TTL_S + 5  # other tests store series in this PACS: listed within that
    while True:
        images = (set(orthanc.series_uids("CT")) | set(orthanc.series_uids("MR"))
                  | {study["uid"] for study in (pacs_studies.loop, pacs_studies.still) if study})
        stats = requests.get(f"{pacs_server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
        if stats["total"] == len(images) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert stats["total"] == len(images)
    # offline start: MONAI Label's own DICOMweb set-up downloads dcmqi from GitHub (and logs its file name)
    assert "dcmqi" not in pacs_server.log()
    # no patient identifier leaves the app: not in the datastore listing, nor in the viewer's study list
    everything = requests.get(f"{pacs_server.url}/datastore/", params={"output": "all"}, timeout=60).text
    studies = requests.get(f"{pacs_server.url}/medsam2/viewer/studies", timeout=60).text
    for patient in pacs_studies.patient_ids():
        assert patient not in everything and patient not in studies, patient
    assert "PatientID" not in everything


def test_a_series_stored_in_the_pacs_is_listed_within_seconds(pacs_server, orthanc, tmp_path):  # noqa: F811
    from lib.datastores.dicomweb import PACS_LIST_TTL_S
    from tests.support.dicom_series import write_series
    from tests.support.trained_small_model import AFFINE, phantom

    def listed() -> list:
        page = requests.get(f"{pacs_server.url}/medsam2/viewer/studies", timeout=60).json()
        return [study["image"] for study in page["studies"]]

    assert listed()  # the list is read (and kept) before the new series exists
    array, _ = phantom(12, shape=(32, 28, 6))
    uid = write_series(array, AFFINE, tmp_path / "stored_now", description="stored now")["series"]
    orthanc.upload(tmp_path / "stored_now")
    stored = time.monotonic()
    while uid not in listed():
        assert time.monotonic() - stored < PACS_LIST_TTL_S + 5, "a series stored in the PACS is not listed"
        time.sleep(0.5)


def test_ohif_sequence_clear_and_click_on_another_slice_then_seg(pacs_server, pacs_studies, orthanc, tmp_path):  # noqa: F811
    import highdicom as hd
    from dicomweb_client import DICOMwebClient

    series = pacs_studies.phantoms["api"]
    uid = series.uids["series"]
    i, j, k = np.argwhere(series.mask).mean(axis=0).round().astype(int).tolist()

    started = time.monotonic()
    first = infer(pacs_server, uid, [[i, j, k]])
    first_seconds = time.monotonic() - started
    assert first.status_code == 200, first.text
    stamp = cached_file(pacs_server, uid).stat()
    # "Clear Points", then a click on another slice: the request replaces every earlier point
    started = time.monotonic()
    second = infer(pacs_server, uid, [[i, j, k - 2]])
    second_seconds = time.monotonic() - started
    assert second.status_code == 200, second.text
    print(f"DICOMweb path: first click {first_seconds:.2f} s, correction on another slice {second_seconds:.2f} s")
    again = cached_file(pacs_server, uid).stat()
    assert (again.st_mtime_ns, again.st_ino) == (stamp.st_mtime_ns, stamp.st_ino), "series re-resolved per request"

    for response in (first, second):
        mask, image, path = read_result(response, tmp_path)
        assert mask.shape == series.mask.shape
        # the source grid: LPS geometry of the series as written (RAS affine flipped in x and y)
        lps = np.diag([-1.0, -1.0, 1.0]) @ series.affine[:3, :3]
        np.testing.assert_allclose(image.GetSpacing(), np.linalg.norm(lps, axis=0), atol=1e-4)
        np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), lps / np.linalg.norm(lps, axis=0),
                                   atol=1e-5)
        np.testing.assert_allclose(image.GetOrigin(), np.diag([-1.0, -1.0, 1.0]) @ series.affine[:3, 3], atol=1e-4)
        assert ((mask > 0) & series.mask).sum() > 0

    saved = requests.put(f"{pacs_server.url}/datastore/label", params={"image": uid, "tag": "final"},
                         files={"label": ("label.nrrd", path.read_bytes()),
                                "params": (None, json.dumps({"label_info": [{"name": "lesion", "idx": 1}]}))},
                         timeout=300)
    assert saved.status_code == 200, saved.text

    client = DICOMwebClient(orthanc.dicomweb)
    segs = [s for s in client.search_for_series(search_filters={"Modality": "SEG"})
            if s["0020000D"]["Value"][0] == series.uids["study"]]
    assert len(segs) == 1
    [instance] = client.retrieve_series(series.uids["study"], segs[0]["0020000E"]["Value"][0])
    seg = hd.seg.Segmentation.from_dataset(instance)
    assert "MedSAM-2" in seg.SeriesDescription
    assert seg.FrameOfReferenceUID == series.uids["frame_of_reference"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    [description] = seg.SegmentSequence
    assert description.SegmentLabel == "lesion"
    assert description.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert description.SegmentAlgorithmName == "MedSAM-2 MONAI Label app"
    algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("MedSAM-2 MONAI Label app", "0.1.0")
    category = description.SegmentedPropertyCategoryCodeSequence[0]
    kind = description.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "49755003")  # morphologically abnormal
    assert (kind.CodingSchemeDesignator, kind.CodeValue) == ("SCT", "52988006")  # lesion
    pixels = seg.get_pixels_by_source_instance(series.uids["instances"], segment_numbers=[1],
                                               assert_missing_frames_are_empty=True)[..., 0]
    # frames follow the source slices: frame k is slice k with rows j and columns i
    np.testing.assert_array_equal(pixels, np.transpose(mask > 0, (2, 1, 0)).astype(pixels.dtype))
    assert int(pixels.sum()) == int((mask > 0).sum())
    # and training sees it: MONAI Label's train datalist pairs the cached series with the saved label
    datalist = requests.get(f"{pacs_server.url}/datastore/", params={"output": "train"}, timeout=300).json()
    [entry] = [e for e in datalist if Path(e["image"]).name == f"{uid}.nii.gz"]
    assert Path(entry["label"]).name == f"{uid}.nrrd" and "final" in Path(entry["label"]).parts


def test_undecodable_series_is_named_with_its_transfer_syntax(pacs_server, pacs_studies):  # noqa: F811
    uid = pacs_studies.undecodable["series"]
    response = infer(pacs_server, uid, [[8, 8, 1]])
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert uid in detail and "JPEG 2000" in detail and "1.2.840.10008.1.2.4.90" in detail
    assert requests.get(f"{pacs_server.url}/info/", timeout=30).status_code == 200


@pytest.mark.parametrize("image", ["../../etc/passwd", "1.2.3/../../x", "abc"])
def test_image_ids_that_are_not_series_uids_are_refused(pacs_server, image):  # noqa: F811
    response = infer(pacs_server, image, [[1, 1, 1]])
    assert response.status_code == 400 and "image" in response.text


def test_series_missing_from_the_pacs_is_a_404(pacs_server):  # noqa: F811
    response = infer(pacs_server, "1.2.826.0.1.3680043.8.498.1", [[1, 1, 1]])
    assert response.status_code == 404 and "1.2.826.0.1.3680043.8.498.1" in response.json()["detail"]


def test_unreachable_pacs_is_a_502_naming_it(tmp_path):
    from dicomweb_client import DICOMwebClient
    from fastapi import HTTPException
    from lib.datastores.dicomweb import MedSam2DicomWebDatastore
    from lib.datastores.dicom_seg import SegAuthor
    from tests.support.server import free_port

    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    client = DICOMwebClient(url)
    client.set_http_retry_params(retry=False)  # the client's own back-off (30 s by default) is not what is tested
    store = MedSam2DicomWebDatastore(client, ["CT", "MR"], SegAuthor("a", "1", "d"), ["lesion"],
                                     cache_path=str(tmp_path))
    with pytest.raises(HTTPException) as raised:
        store.get_image_uri("1.2.3.4")
    assert raised.value.status_code == 502 and url in raised.value.detail and "1.2.3.4" in raised.value.detail
