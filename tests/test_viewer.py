"""The viewer page (``/medsam2/viewer/``): a study opened, prompted, corrected and saved in a browser.

The end-to-end test runs the real server with the phantom-trained small model and drives
the page in Debian's headless Chromium: click inside the structure, correct on another
slice, draw a box for a second structure, save. The saved final label is then read from
the datastore and compared, voxel for voxel, with the masks the app returned to the page
(captured from the page's own network traffic). The study is stored with a flipped
(LPS-like) affine, so a page that mixed up NiiVue's RAS-resliced voxels with the app's
voxel order would click, show and save in the wrong place.

Screenshots of each step go to reports/screenshots/viewer-*.png.
"""

from __future__ import annotations

import gzip
import json
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
LABELS = ["lesion", "organ"]
# LPS-like axes (i and j flipped) and an origin: NiiVue reslices this for display
FLIPPED_AFFINE = np.array([[-0.9, 0, 0, 20.0], [0, -0.8, 0, 15.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])


def test_volume_as_nifti_keeps_the_engines_grid():
    from lib.viewer_routes import volume_as_nifti
    from medsam2_engine.volume_io import Volume

    rng = np.random.default_rng(3)
    hu = np.round(rng.normal(0, 300, (7, 5, 4))).astype(np.float32)
    loaded = nib.Nifti1Image.from_bytes(gzip.decompress(volume_as_nifti(Volume(hu, FLIPPED_AFFINE))))
    assert loaded.shape == hu.shape
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), hu)
    assert loaded.get_data_dtype() == np.int16  # whole numbers travel as int16
    np.testing.assert_allclose(loaded.affine, FLIPPED_AFFINE)
    np.testing.assert_allclose(loaded.get_qform(), FLIPPED_AFFINE)

    fractional = hu / 7.0
    loaded = nib.Nifti1Image.from_bytes(gzip.decompress(volume_as_nifti(Volume(fractional, FLIPPED_AFFINE))))
    assert loaded.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(loaded.dataobj), fractional)


# ---- end to end ------------------------------------------------------------------------------

def _bundle_missing() -> str:
    from lib.viewer_routes import NIIVUE_BUNDLE

    return "" if NIIVUE_BUNDLE.is_file() else f"the viewer's npm packages are not installed ({NIIVUE_BUNDLE}): run `bash setup.sh`"


needs_viewer_bundle = pytest.mark.skipif(bool(_bundle_missing()), reason=_bundle_missing() or "ready")


@pytest.fixture(scope="module")
def viewer_server(fine_tuned, small_model_files, tmp_path_factory):
    """The app on a local studies folder: a held-out phantom (flipped affine) and a 2D image."""
    from tests.support.server import RunningServer
    from tests.support.trained_small_model import phantom

    segmenter, _ = fine_tuned
    config, _ = small_model_files
    checkpoint = segmenter.models.explicit
    folder = tmp_path_factory.mktemp("viewer")
    studies = folder / "studies"
    studies.mkdir()
    array, truth = phantom(seed=10)
    nib.save(nib.Nifti1Image(array, FLIPPED_AFFINE), studies / "phantom10.nii.gz")
    from PIL import Image

    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(studies / "photo.png")
    server = RunningServer(studies, {"model_config": config, "checkpoint": checkpoint, "labels": ",".join(LABELS)},
                           folder / "server.log")
    try:
        yield server, studies, truth
    finally:
        server.stop()


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _mask_from_infer_response(response) -> tuple:
    """(mask array, result JSON) from a captured ``output=all`` infer response."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    assert response.ok, f"infer failed: HTTP {response.status} {response.text()[:500]}"
    parts = MultipartDecoder(response.body(), response.headers["content-type"]).parts
    by_name = {}
    for part in parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="')[1].split('"')[0]
        by_name[name] = part.content
    result = json.loads(by_name["params"])
    mask = nib.Nifti1Image.from_bytes(by_name["image"])
    return np.asarray(mask.dataobj), mask.affine, result


def _wait_idle(page, timeout_ms: int = 180_000) -> str:
    page.wait_for_function("document.getElementById('status').dataset.state !== 'busy'", timeout=timeout_ms)
    state = page.get_attribute("#status", "data-state")
    text = page.inner_text("#status")
    assert state != "error", f"the page reports an error: {text}"
    return text


def _click_voxel(page, voxel, **kwargs):
    with page.expect_response(lambda r: "/infer/medsam2_3d" in r.url, timeout=180_000) as answer:
        x, y = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", list(voxel))
        page.mouse.click(x, y, **kwargs)
    _wait_idle(page)
    return answer.value


def _brightness(png: Path, xy) -> float:
    from PIL import Image

    pixel = Image.open(png).convert("L").getpixel((int(round(xy[0])), int(round(xy[1]))))
    return float(pixel)


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@needs_chromium
@needs_viewer_bundle
def test_viewer_click_correct_box_and_save(viewer_server, chromium_page, tmp_path):
    server, studies, truth = viewer_server
    page = chromium_page
    shots = tmp_path / "shots"
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))

    # the routes the page uses besides MONAI Label's own
    status, body = _get(server.url + "/medsam2/viewer/studies")
    assert status == 200
    assert json.loads(body)["studies"] == [{"image": "phantom10", "final": False}, {"image": "photo", "final": False}]
    status, body = _get(server.url + "/medsam2/viewer/volume?image=nope")
    assert status == 404 and b"image" in body
    status, body = _get(server.url + "/medsam2/viewer/volume?image=photo")
    assert status == 422 and b"2D" in body

    page.goto(server.url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    assert page.locator("#studies li").count() == 2
    assert page.locator("#labels li").all_inner_texts()[0].strip().startswith("lesion")
    screenshot(page, "viewer-1-studies", shots)

    page.click("#studies li[data-image=phantom10]")
    _wait_idle(page)
    k = int(np.argmax(truth.sum(axis=(0, 1))))  # the structure's largest slice
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    ii, jj = np.nonzero(truth[:, :, k])
    inside = [int(round(ii.mean())), int(round(jj.mean())), k]
    assert truth[tuple(inside)]
    outside = [2 + 1, 2 + 1, k]  # soft tissue in the body's corner, far from the structure
    assert not truth[tuple(outside)]
    opened = screenshot(page, "viewer-2-opened", shots)
    # what is drawn where the page will click is the structure (bright), and beside it the body
    at_inside = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", inside)
    at_outside = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", outside)
    assert _brightness(opened, at_inside) > _brightness(opened, at_outside) + 60

    # 1. a click inside the lesion
    first = _click_voxel(page, inside)
    lesion, affine, result = _mask_from_infer_response(first)
    request = json.loads(_form_field(first.request, "params"))
    assert request["label"] == "lesion" and request["foreground"] == [inside]
    assert request["client_id"].startswith("viewer-")
    assert lesion.sum() > 0 and _dice(lesion, truth) > 0.5, f"first mask Dice {_dice(lesion, truth):.2f}"
    assert "lesion" in page.inner_text("#result-summary")
    screenshot(page, "viewer-3-first-click", shots)

    # 2. a correction on another slice: every prompt is resent, the session is reused
    k2 = k - 2
    ii, jj = np.nonzero(truth[:, :, k2])
    second_point = [int(round(ii.mean())), int(round(jj.mean())), k2]
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k2)
    second = _click_voxel(page, second_point)
    lesion, _, result = _mask_from_infer_response(second)
    request = json.loads(_form_field(second.request, "params"))
    assert request["foreground"] == [inside, second_point]
    assert result["session"]["started"] is None, "the correction must reuse the session"
    assert lesion.sum() > 0
    screenshot(page, "viewer-4-correction", shots)

    # 3. a second structure from a box (dragged on the shown slice)
    page.click("#labels li[data-label=organ]")
    page.check("input[name=tool][value=box]")
    rows, cols = np.nonzero(truth[:, :, k2])
    corners = [[int(rows.min()) - 1, int(cols.min()) - 1, k2], [int(rows.max()) + 1, int(cols.max()) + 1, k2]]
    a = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", corners[0])
    b = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", corners[1])
    with page.expect_response(lambda r: "/infer/medsam2_3d" in r.url, timeout=180_000) as answer:
        page.mouse.move(*a)
        page.mouse.down()
        page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
        page.mouse.move(*b)
        page.mouse.up()
    _wait_idle(page)
    organ, _, _ = _mask_from_infer_response(answer.value)
    request = json.loads(_form_field(answer.value.request, "params"))
    assert request["label"] == "organ" and request["foreground"] == []
    roi = request["roi"]
    assert sorted(roi[:2]) == sorted([corners[0][0], corners[1][0]]) and roi[4:] == [k2, k2]
    assert organ.sum() > 0
    screenshot(page, "viewer-5-box", shots)

    # 4. save: the final label in the datastore is exactly the returned masks, combined
    with page.expect_response(lambda r: "/datastore/label" in r.url, timeout=120_000) as saved:
        page.click("#save")
    _wait_idle(page)
    assert saved.value.ok, saved.value.text()
    screenshot(page, "viewer-6-saved", shots)
    expected = np.where(lesion > 0, 1, np.where(organ > 0, 2, 0))
    final = nib.load(next((studies / "labels" / "final").glob("phantom10.*")))
    np.testing.assert_array_equal(np.asarray(final.dataobj), expected)
    np.testing.assert_allclose(final.affine, FLIPPED_AFFINE, atol=1e-4)
    np.testing.assert_allclose(affine, FLIPPED_AFFINE, atol=1e-4)
    status, body = _get(server.url + "/datastore/?output=all")
    info = json.loads(body)["objects"]["phantom10"]["labels"]["final"]["info"]
    assert {(e["name"], e["idx"]) for e in info["label_info"]} == {("lesion", 1), ("organ", 2)}
    assert page.locator("#studies li[data-image=phantom10] .tag").inner_text().startswith("final")
    assert not errors, errors

    timings = page.evaluate("window.medsam2Viewer.state.timings")
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "viewer_timings.json").write_text(json.dumps(
        {"measured": time.strftime("%Y-%m-%d %H:%M"), "weights": "phantom-trained small test model",
         "click_to_mask_on_screen": timings}, indent=2))
    print("click to mask on screen:", timings)


def _form_field(request, name: str) -> str:
    """A field of a captured multipart/form-data request (the page posts FormData)."""
    body = request.post_data_buffer
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    for part in body.split(b"--" + boundary):
        if f'name="{name}"'.encode() in part.split(b"\r\n\r\n", 1)[0]:
            return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0].decode()
    raise AssertionError(f"no field {name} in the request")
