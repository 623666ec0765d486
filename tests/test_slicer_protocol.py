"""3D Slicer's MONAI Label module, replayed from its code, on a real DICOM series in a PACS.

What the module (plugins/slicer/MONAILabel/MONAILabel.py, MONAI Label 0.8.5) does:
- loads the image it downloads (``GET /datastore/image``) and converts control points
  with the volume's RAS-to-IJK matrix, rounding (``getControlPointsXYZ``);
- sends ``{"label": <segment name>, "foreground", "background", "client_id"}`` and every
  option of the model's config from /info (a list: its first entry) to
  ``POST /infer/<model>?image=<id>`` (multipart answer: image and params);
- sends its ROI as ``[i_min, i_max, j_min, j_max, k_min, k_max]`` from the ROI's RAS corners
  (``getROIPointsXYZ``: corners may come out in either order after RAS-to-IJK);
- adds ``"reset_state": true`` to the first request after the label changes;
- saves with ``PUT /datastore/label?image=<id>`` and ``{"label_info": [{"name", "idx"}]}``.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

from tests.support.orthanc import needs_orthanc
from tests.support.pacs_app import TCIA_STUDY

pytestmark = [needs_orthanc, pytest.mark.skipif(not TCIA_STUDY.is_dir(), reason=(
    f"real DICOM series not available: {TCIA_STUDY} is absent (only on developer/CI machines)"))]
CLIENT_ID = "user-xyz"  # the module's default client id
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ijk_to_ras(image) -> np.ndarray:
    """The volume node's IJK-to-RAS matrix for an image Slicer loaded (ITK's LPS geometry, x and y flipped)."""
    direction = np.reshape(image.GetDirection(), (3, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.asarray(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ matrix


def ras_to_ijk_rounded(ras_to_ijk: np.ndarray, ras) -> list:
    return [round(v) for v in (ras_to_ijk @ [*ras, 1.0])[:3]]


def slicer_params(info: dict, label: str, foreground, background, roi=None, label_changed=False) -> dict:
    """``onClickDeepgrow``'s params: the segment's points, then every option of the model's config
    (``getParamsFromConfig``: a list gives its first entry), the ROI, and reset_state after a label change."""
    params = {"label": label, "foreground": foreground, "background": background}
    config = info["models"]["medsam2_3d"].get("config", {})
    params.update({k: v[0] if isinstance(v, list) else v for k, v in config.items()})
    if roi:
        params["roi"] = roi
    if not params.get("reset_state") and label_changed:
        params["reset_state"] = True
    return params


def slicer_infer(server, uid: str, params: dict, tmp_path, name: str):
    """The module's infer call; returns (mask [i, j, k], SimpleITK image, result params)."""
    import SimpleITK as sitk
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    started = time.monotonic()
    response = requests.post(f"{server.url}/infer/medsam2_3d", params={"image": uid},
                             files={"params": (None, json.dumps({**params, "client_id": CLIENT_ID}))}, timeout=600)
    print(f"Slicer request {name}: HTTP {response.status_code} in {time.monotonic() - started:.2f} s")
    assert response.status_code == 200, response.text
    parts = {}
    for part in MultipartDecoder.from_response(response).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        parts["image" if 'name="image"' in disposition else "params"] = part.content
    path = tmp_path / f"{name}.nii.gz"
    path.write_bytes(parts["image"])
    image = sitk.ReadImage(str(path))
    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)), image, json.loads(parts["params"])


def test_slicer_points_roi_label_change_and_save_on_a_real_series(pacs_server, pacs_studies, orthanc, tmp_path):  # noqa: F811
    import highdicom as hd
    import SimpleITK as sitk
    from dicomweb_client import DICOMwebClient

    uid = pacs_studies.tcia["T1post"]
    downloaded = requests.get(f"{pacs_server.url}/datastore/image", params={"image": uid}, timeout=300)
    assert downloaded.status_code == 200
    volume_file = tmp_path / "volume.nii.gz"
    volume_file.write_bytes(downloaded.content)
    volume = sitk.ReadImage(str(volume_file))
    ras_to_ijk = np.linalg.inv(ijk_to_ras(volume))

    # a clinician's point on the tumour, in RAS: the centroid of the reference mask series
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(TCIA_STUDY / "MaskTumor")))
    reference = reader.Execute()
    tumour = np.argwhere(np.transpose(sitk.GetArrayFromImage(reference), (2, 1, 0)) > 0)
    centre_index = tumour.mean(axis=0)
    tumour_ras = (ijk_to_ras(reference) @ [*centre_index, 1.0])[:3]
    point = ras_to_ijk_rounded(ras_to_ijk, tumour_ras)
    np.testing.assert_allclose(point, np.round(centre_index), atol=1)  # same frame of reference and grid

    info = requests.get(f"{pacs_server.url}/info/", timeout=60).json()
    lesion, result_image, result = slicer_infer(pacs_server, uid, slicer_params(info, "lesion", [point], []),
                                                tmp_path, "lesion")
    size = volume.GetSize()
    assert lesion.shape == tuple(size)
    np.testing.assert_allclose(result_image.GetSpacing(), volume.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(result_image.GetOrigin(), volume.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(result_image.GetDirection(), volume.GetDirection(), atol=1e-5)
    assert set(np.unique(lesion)) <= {0, 1}

    # the user switches to segment "organ" and places an ROI around the tumour: RAS corners -> IJK
    low, high = tumour.min(axis=0) - 3, tumour.max(axis=0) + 3
    corners_ras = [(ijk_to_ras(reference) @ [*c, 1.0])[:3] for c in (low, high)]
    centre_ras, size_ras = (corners_ras[0] + corners_ras[1]) / 2, np.abs(corners_ras[1] - corners_ras[0])
    roi_ras_min, roi_ras_max = centre_ras - size_ras / 2, centre_ras + size_ras / 2
    roi_min, roi_max = ras_to_ijk_rounded(ras_to_ijk, roi_ras_min), ras_to_ijk_rounded(ras_to_ijk, roi_ras_max)
    roi = [v for pair in zip(roi_min, roi_max) for v in pair]
    assert roi[0] > roi[1], "RAS-to-IJK flips x: Slicer sends this corner pair reversed"
    organ, organ_image, _ = slicer_infer(pacs_server, uid, slicer_params(info, "organ", [], [], roi=roi,
                                                                        label_changed=True), tmp_path, "organ")
    assert organ.shape == tuple(size)
    np.testing.assert_allclose(organ_image.GetOrigin(), volume.GetOrigin(), atol=1e-3)

    # Save: Slicer exports its segments as one label map on the volume's grid, valued by segment order
    # (here "organ" was created first), with label_info naming each value
    label_map = np.where(organ > 0, 1, 0).astype(np.uint8)
    label_map[lesion > 0] = 2
    label_map[tuple(point)] = 2  # never save an empty segment: the SEG must hold both
    label_map[roi[1], roi[3], roi[5]] = 1
    export = sitk.GetImageFromArray(np.transpose(label_map, (2, 1, 0)))
    export.CopyInformation(volume)
    label_file = tmp_path / "label.nii.gz"
    sitk.WriteImage(export, str(label_file))
    client = DICOMwebClient(orthanc.dicomweb)
    study = pacs_studies.tcia_study

    def segs_of_study() -> set:  # other tests may have saved labels of this study's other series
        return {s["0020000E"]["Value"][0] for s in client.search_for_series(search_filters={"Modality": "SEG"})
                if s["0020000D"]["Value"][0] == study}

    before = segs_of_study()
    saved = requests.put(f"{pacs_server.url}/datastore/label", params={"image": uid},
                         files={"label": ("label.nii.gz", label_file.read_bytes()),
                                "params": (None, json.dumps({"label_info": [{"name": "organ", "idx": 1},
                                                                            {"name": "lesion", "idx": 2}],
                                                             "client_id": CLIENT_ID}))}, timeout=300)
    assert saved.status_code == 200, saved.text

    segs = segs_of_study() - before
    assert len(segs) == 1
    [instance] = client.retrieve_series(study, segs.pop())
    seg = hd.seg.Segmentation.from_dataset(instance)
    names = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    assert sorted(names.values()) == ["lesion", "organ"]
    organ_description = next(d for d in seg.SegmentSequence if d.SegmentLabel == "organ")
    assert organ_description.SegmentedPropertyTypeCodeSequence[0].CodeValue == "113343008"  # SCT Organ
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    counts = {names[n]: int(seg.get_pixels_by_source_instance(
        [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence],
        segment_numbers=[n])[..., 0].sum()) for n in names}
    assert counts == {"organ": int((label_map == 1).sum()), "lesion": int((label_map == 2).sum())}
