"""Drawn prompts over the API, against a real server: strokes, a lasso, a mask to start from
(another structure, an uploaded label), a locked structure; malformed drawings refused with
the field named; 3D Slicer's Scribbles section replayed (its label volume of painted
scribbles, ``label_info`` and ``selected_label_name``, as ``onUpdateScribbles`` sends them).
Phantom-trained small model: plumbing, not accuracy."""

from __future__ import annotations

import io
import json

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.support.viewer_page import FLIPPED_AFFINE, phantom_server

SHAPE = (40, 32, 16)


@pytest.fixture(scope="module")
def drawn_server(fine_tuned, small_model_files, tmp_path_factory):
    with phantom_server(fine_tuned, small_model_files, tmp_path_factory.mktemp("drawn"), 13, SHAPE) as running:
        yield running


def infer(server, params: dict, model: str = "medsam2_3d", label_file: bytes | None = None, name="label.nii.gz"):
    """(status, mask or None, result JSON or error detail)."""
    files = {"params": (None, json.dumps({"client_id": "api-test", **params}))}
    if label_file is not None:
        files["label"] = (name, label_file, "application/octet-stream")
    response = requests.post(f"{server.url}/infer/{model}", params={"image": "phantom13", "output": "all"},
                             files=files, timeout=300)
    if response.status_code != 200:
        return response.status_code, None, response.json().get("detail")
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    parts = {}
    for part in MultipartDecoder.from_response(response).parts:
        parts["image" if 'name="image"' in part.headers[b"Content-Disposition"].decode() else "params"] = part.content
    import os
    import tempfile

    from medsam2_engine.volume_io import load_image

    handle, path = tempfile.mkstemp(suffix=params.get("result_extension", ".nii.gz"))
    with os.fdopen(handle, "wb") as out:
        out.write(parts["image"])
    try:
        mask = load_image(path).array  # the engine's reader: [i, j, k] on the study's grid, any format
    finally:
        os.remove(path)
    return 200, mask, json.loads(parts["params"])


def _slice_of(truth):
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    ii, jj = np.nonzero(truth[:, :, k])
    return k, ii, jj


def test_strokes_a_lasso_a_mask_and_a_lock_over_infer(drawn_server):
    from medsam2_engine.mask_measures import dice

    server, truth = drawn_server
    k, ii, jj = _slice_of(truth)
    stroke = [[int(ii.min()) + 2, int(jj.mean()), k], [int(ii.max()) - 2, int(jj.mean()), k]]
    status, by_stroke, result = infer(server, {"label": "lesion", "strokes": [{"points": stroke, "positive": True}],
                                               "result_extension": ".nii.gz"})
    assert status == 200, result
    assert dice(by_stroke > 0, truth) > 0.7 and result["labels"]["lesion"]["protocol"] == "medsam2_point"

    outline = [[int(ii.min()) - 0.5, int(jj.min()) - 0.5], [int(ii.max()) + 0.5, int(jj.min()) - 0.5],
               [int(ii.max()) + 0.5, int(jj.max()) + 0.5], [int(ii.min()) - 0.5, int(jj.max()) + 0.5]]
    status, by_lasso, result = infer(server, {"label": "organ", "lasso": [{"slice": k, "polygon": outline}],
                                              "reset_state": True, "result_extension": ".nii.gz"})
    assert status == 200, result
    assert (by_lasso > 0)[:, :, k].sum() >= truth[:, :, k].sum() * 0.8

    # start from another structure of the session: the lesion's mask on its largest slice
    status, from_structure, result = infer(server, {"label": "organ", "reset_state": True, "result_extension": ".nii.gz",
                                                    "mask_prompt": {"from": "structure", "name": "lesion", "slices": [k]}})
    assert status == 200, result
    assert dice(from_structure > 0, by_stroke > 0) > 0.8

    # an uploaded label, on the study's grid, as the mask prompt
    upload = nib.Nifti1Image(truth.astype(np.uint8) * 2, FLIPPED_AFFINE)
    status, from_upload, result = infer(server, {"label": "organ", "reset_state": True, "result_extension": ".nii.gz",
                                                 "mask_prompt": {"from": "upload", "value": 2, "slices": [k]}},
                                        label_file=upload.to_bytes(), name="seed.nii")
    assert status == 200, result
    assert dice(from_upload > 0, truth) > 0.7

    # the lesion locked: the organ drawn over it takes none of its voxels, and says how many it left
    status, locked, result = infer(server, {"label": "organ", "reset_state": True, "result_extension": ".nii.gz",
                                            "lasso": [{"slice": k, "polygon": outline}], "locked": ["lesion"]})
    assert status == 200, result
    assert not ((locked > 0) & (by_stroke > 0)).any()
    assert result["labels"]["organ"]["locked_out"] == int(((by_lasso > 0) & (by_stroke > 0)).sum()) > 0


@pytest.mark.parametrize("params, field", [
    ({"strokes": [{"points": [[1, 1, 0], [1, 1, 3]]}]}, "strokes[0].points"),
    ({"strokes": [{"points": [[1, 1, 99]]}]}, "strokes[0].points"),
    ({"lasso": [{"slice": 2, "polygon": [[1, 1], [500, 1], [3, 9]]}]}, "lasso[0].polygon"),
    ({"lasso": [{"polygon": [[1, 1], [5, 1], [3, 9]]}]}, "lasso[0].slice"),
    ({"mask_prompt": {"from": "structure", "name": "organ"}}, "mask_prompt"),
    ({"mask_prompt": {"from": "final", "name": "organ"}}, "mask_prompt"),
    ({"mask_prompt": {"from": "upload"}}, "mask_prompt"),
    ({"mask_prompt": {"from": "somewhere"}}, "mask_prompt"),
    ({"foreground": [[5, 5, 5]], "locked": ["nothing-here"]}, "locked"),
    ({"foreground": [[5, 5, 5]], "locked": "lesion"}, "locked"),
])
def test_malformed_drawings_are_refused_naming_the_field(drawn_server, params, field):
    server, _ = drawn_server
    status, _, detail = infer(server, {"label": "organ", "client_id": "bad-drawings", **params})
    assert 400 <= status < 500 and field in str(detail), (status, detail)


def test_an_uploaded_label_on_another_grid_is_refused(drawn_server):
    server, _ = drawn_server
    other = nib.Nifti1Image(np.ones((10, 10, 4), np.uint8), FLIPPED_AFFINE)
    status, _, detail = infer(server, {"label": "organ", "mask_prompt": {"from": "upload"}}, label_file=other.to_bytes(),
                              name="other.nii")
    assert status == 400 and "mask_prompt" in detail and "voxels" in detail, detail
    status, _, detail = infer(server, {"label": "organ", "mask_prompt": {"from": "upload"}}, label_file=b"not an image",
                              name="seed.nii.gz")
    assert status == 400 and "mask_prompt" in detail and "/tmp" not in detail, detail  # no server path told
    status, _, detail = infer(server, {"label": "organ", "foreground": [[5, 5, 5]]}, label_file=b"x", name="x.exe")
    assert status == 400 and "label" in detail


def test_slicers_scribbles_section_replayed(drawn_server):
    """``onUpdateScribbles``: every visible segment exported as one label volume on the image's grid,
    values by segment order (``label_info`` ids), sent with the selected segment's name."""
    from medsam2_engine.mask_measures import dice

    server, truth = drawn_server
    info = requests.get(f"{server.url}/info/", timeout=60).json()
    assert info["models"]["medsam2_scribbles"]["type"] == "scribbles"  # listed in Slicer's Scribbles section
    k, ii, jj = _slice_of(truth)
    painted = np.zeros(SHAPE, np.uint8)
    ci, cj = int(ii.mean()), int(jj.mean())
    painted[ci - 2:ci + 3, cj - 1:cj + 2, k] = 3  # a foreground brush stroke on the lesion
    painted[1:4, 1:20, k] = 2  # a background stroke in a corner
    label_info = [{"name": "lesion", "id": 1}, {"name": "background_scribbles", "id": 2},
                  {"name": "foreground_scribbles", "id": 3}]
    params = {"roi": [], "label_info": label_info, "selected_label_name": "lesion",
              "result_extension": ".nrrd", "result_dtype": "uint8"}
    status, mask, result = infer(server, params, model="medsam2_scribbles",
                                 label_file=_nrrd_bytes(painted, FLIPPED_AFFINE), name="scribbles.nrrd")
    assert status == 200, result
    assert dice(mask > 0, truth) > 0.7
    assert set(np.unique(mask)) <= {0, 1}  # Slicer reads value 1 as the selected segment
    request = result.get("request_warnings", [])
    assert not request, request
    status, _, detail = infer(server, {**params, "label_info": label_info[:2]}, model="medsam2_scribbles",
                              label_file=_nrrd_bytes(painted, FLIPPED_AFFINE), name="scribbles.nrrd")
    assert status == 400 and "foreground_scribbles" in detail


def _nrrd_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A label volume as Slicer's ``saveNode`` writes it (NRRD, LPS space), on the image's grid."""
    import os
    import tempfile

    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).ravel().tolist())
    image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]).tolist())
    handle, path = tempfile.mkstemp(suffix=".nrrd")
    os.close(handle)
    try:
        sitk.WriteImage(image, path)
        return io.open(path, "rb").read()
    finally:
        os.remove(path)


def test_the_2d_model_takes_strokes_and_says_it_takes_no_outline(drawn_server):
    server, truth = drawn_server
    k, ii, jj = _slice_of(truth)
    stroke = [[int(ii.min()) + 2, int(jj.mean()), k], [int(ii.max()) - 2, int(jj.mean()), k]]
    status, mask, result = infer(server, {"label": "lesion", "strokes": [{"points": stroke}], "slice": k,
                                          "result_extension": ".nii.gz"}, model="medsam2_2d")
    assert status == 200, result
    assert (mask[:, :, k] > 0).sum() > 0.5 * truth[:, :, k].sum()
    status, _, detail = infer(server, {"label": "lesion", "slice": k,
                                       "lasso": [{"slice": k, "polygon": [[5, 5], [20, 5], [12, 20]]}]},
                              model="medsam2_2d")
    assert status == 400 and "lasso" in detail and "3D" in detail, detail
