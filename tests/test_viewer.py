"""The viewer page (``/medsam2/viewer/``): a study opened, prompted, corrected and saved in a browser.

The end-to-end test runs the real server with the phantom-trained small model and drives
the page in Debian's headless Chromium: click inside the structure, correct on another
slice, draw a box for a second structure, save. The saved final label is then read from
the datastore and compared, voxel for voxel, with the masks the app returned to the page
(captured from the page's own network traffic). The study is stored with a flipped
(LPS-like) affine, so a page that mixed up the voxels it draws (flipped to RAS axes) with the app's
voxel order would click, show and save in the wrong place.

Screenshots of each step go to reports/screenshots/viewer-*.png.
"""

from __future__ import annotations

import gzip
import json
import urllib.request
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from tests.support.orthanc import needs_orthanc
from tests.support.viewer_page import (LABELS, click_voxel, final_label_info, form_field, get, keep_timings,
                                       mask_from_infer_response, round_trip, wait_idle)

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
# LPS-like axes (i and j flipped) and an origin: the page shows it flipped to RAS axes
FLIPPED_AFFINE = np.array([[-0.9, 0, 0, 20.0], [0, -0.8, 0, 15.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])


def test_volume_as_nifti_keeps_the_engines_grid():
    from lib.shown_volumes import volume_as_nifti
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


@needs_chromium
def test_viewer_round_trip_on_a_studies_folder(viewer_server, chromium_page, tmp_path):
    server, studies, truth = viewer_server

    # the routes the page uses besides MONAI Label's own
    status, body = get(server.url + "/medsam2/viewer/studies")
    assert status == 200
    assert json.loads(body)["studies"] == [
        {"image": "phantom10", "description": "", "final": False}, {"image": "photo", "description": "", "final": False}]
    status, body = get(server.url + "/medsam2/viewer/volume?image=nope")
    assert status == 404 and b"image" in body
    # a picture goes as a one-slice study (tests/test_viewer_pictures.py shows it)
    with urllib.request.urlopen(server.url + "/medsam2/viewer/volume?image=photo", timeout=60) as response:
        assert response.status == 200 and response.headers["X-Volume-Dims"] == "16,16,1"
    status, body = get(server.url + "/medsam2/viewer/auth")  # the page's log-in probe, no token needed
    assert status == 200 and json.loads(body) == {"enabled": False}

    done = round_trip(chromium_page, server.url, "phantom10", truth, tmp_path / "shots", "viewer-local")

    # the final label in the datastore is exactly the returned masks, combined, on the image's grid
    final = nib.load(next((studies / "labels" / "final").glob("phantom10.*")))
    np.testing.assert_array_equal(np.asarray(final.dataobj), done["expected"])
    np.testing.assert_allclose(final.affine, FLIPPED_AFFINE, atol=1e-4)
    np.testing.assert_allclose(done["affine"], FLIPPED_AFFINE, atol=1e-4)
    info = final_label_info(server.url, "phantom10")
    assert {(e["name"], e["idx"]) for e in info["label_info"]} == {("lesion", 1), ("organ", 2)}
    # each structure whole beside the map: overlaps lose nothing
    from medsam2_engine.label_structures import read_stack, structures_path

    stack, _, values = read_stack(structures_path(str(next((studies / "labels" / "final").glob("phantom10.*")))))
    assert values == [1, 2]
    np.testing.assert_array_equal(stack > 0, done["stack"])
    assert get(server.url + "/datastore/label?label=phantom10&tag=final")[0] == 200
    keep_timings("studies_folder", done["timings"], "phantom-trained small test model")

    reopen_correct_and_save_again(chromium_page, server.url, "phantom10", truth, done, tmp_path / "shots")
    assert '"GET /auth/' not in server.log(), "the page asked MONAI Label's /auth/ (a 404 on every page load)"
    stack, _, _ = read_stack(structures_path(str(next((studies / "labels" / "final").glob("phantom10.*")))))
    np.testing.assert_array_equal(stack[..., 0] > 0, done["lesion"] > 0)  # the saved lesion stood as it was


@needs_chromium
def test_a_study_pressed_while_the_list_is_refreshed_still_opens(viewer_server, chromium_page):
    """The study list is refreshed whenever a final label is saved, in this tab or another. A study
    pressed just before a refresh and released just after it is opened all the same."""
    server, _, _ = viewer_server
    page = chromium_page
    page.goto(server.url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    box = page.locator("#studies li[data-image='photo']").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.evaluate("window.medsam2Viewer.refreshStudies()")
    page.mouse.up()
    page.wait_for_function("window.medsam2Viewer.state.image === 'photo'", timeout=20_000)
    assert page.locator("#studies li.selected").get_attribute("data-image") == "photo"


def reopen_correct_and_save_again(page, url: str, image: str, truth, done: dict, shots: Path) -> None:
    """Open the study again: its saved structures are shown and kept; re-segment one, save again."""
    from tests.support.viewer_page import assert_mask_on_screen, click_voxel

    page.goto(url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{image}']")
    wait_idle(page)
    tags = {label: page.inner_text(f"#labels li[data-label={label}] .tag") for label in ("lesion", "organ")}
    assert tags == {"lesion": f"{int(done['lesion'].sum())} vx saved", "organ": f"{int(done['organ'].sum())} vx saved"}
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    shown = screenshot(page, "viewer-local-7-reopened", shots)
    assert_mask_on_screen(page, shown, done["expected"] == 1, k)  # the lesion, as the label map shows it
    assert "final label: lesion, organ" in page.inner_text("#status")

    page.click("#labels li[data-label=organ]")
    page.check("input[name=tool][value=point]")
    ii, jj = np.nonzero(truth[:, :, k])
    organ_answer = click_voxel(page, [int(ii.max()), int(round(jj.mean())), k])
    organ, _, _ = mask_from_infer_response(organ_answer)
    assert "replaces the saved organ" in page.inner_text("#status")
    with page.expect_response(lambda r: "/datastore/label" in r.url, timeout=120_000) as saved:
        page.click("#save")
    wait_idle(page)
    stored = {s["name"]: s["voxels"] for s in saved.value.json()["saved"]["structures"]}
    assert stored == {"lesion": int(done["lesion"].sum()), "organ": int((organ > 0).sum())}
    screenshot(page, "viewer-local-8-saved-again", shots)


PASSWORD = "correct horse"


@pytest.fixture
def fake_realm():
    """A Keycloak-like realm on loopback: its public key, its token endpoint (password grant)."""
    import base64
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    issued = []

    class Realm(BaseHTTPRequestHandler):
        def _send(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def do_GET(self):  # noqa: N802 - http.server's naming
            base = f"http://127.0.0.1:{self.server.server_address[1]}/realms/test"
            if self.path == "/realms/test":
                self._send(200, {"realm": "test", "public_key": base64.b64encode(der).decode()})
            elif self.path == "/realms/test/.well-known/openid-configuration":
                self._send(200, {"token_endpoint": base + "/token"})
            else:
                self._send(404, {})

        def do_POST(self):  # noqa: N802
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            if self.path != "/realms/test/token" or form.get("password") != [PASSWORD]:
                self._send(401, {"error": "invalid_grant"})
                return
            claims = {"preferred_username": form["username"][0], "exp": int(time.time()) + 600,
                      "realm_access": {"roles": ["monailabel-user", "monailabel-annotator"]}}
            issued.append(form["username"][0])
            self._send(200, {"access_token": jwt.encode(claims, key, algorithm="RS256"), "token_type": "bearer"})

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{httpd.server_address[1]}/realms/test"
    probe = jwt.encode({"preferred_username": "probe", "exp": int(time.time()) + 600,
                        "realm_access": {"roles": ["monailabel-user"]}}, key, algorithm="RS256")
    yield uri, probe, issued
    httpd.shutdown()


@needs_chromium
def test_viewer_log_in_untrained_weights_warning_and_unsure_slices(small_model_files, fake_realm, chromium_page,
                                                                     tmp_path):
    """A team server with MONAI Label's auth on and random weights: the page asks the user to
    log in, then says loudly that the weights are untrained and lists the unsure slices."""
    from tests.support.server import RunningServer
    from tests.support.trained_small_model import phantom

    uri, probe, issued = fake_realm
    config, _ = small_model_files
    studies = tmp_path / "studies"
    studies.mkdir()
    array, truth = phantom(seed=11)
    nib.save(nib.Nifti1Image(array, FLIPPED_AFFINE), studies / "phantom11.nii.gz")
    server = RunningServer(studies, {"model_config": config, "checkpoint": "random", "labels": ",".join(LABELS)},
                           tmp_path / "server.log", headers={"Authorization": f"Bearer {probe}"},
                           env={"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": uri})
    try:
        for route in ("/medsam2/viewer/studies", "/medsam2/viewer/volume?image=phantom11"):
            assert get(server.url + route)[0] == 401, route  # nothing of a study without a log-in
        page = chromium_page
        page.goto(server.url + "/medsam2/viewer/")
        page.wait_for_selector("#login", state="visible")
        screenshot(page, "viewer-log-in", tmp_path / "shots")
        page.fill("#username", "dr-who")
        page.fill("#password", "wrong")
        page.click("#login button[type=submit]")
        page.wait_for_function("document.getElementById('login-error').textContent.length > 0")
        page.fill("#password", PASSWORD)
        page.click("#login button[type=submit]")
        page.wait_for_selector("#studies li[data-image=phantom11]", timeout=60_000)
        assert page.locator("#login").is_hidden() and issued == ["dr-who"]
        # an annotator without the admin role: no fine-tune button (the server refuses them too)
        page.wait_for_function("document.getElementById('progress-text').textContent.length > 0")
        assert page.locator("#train").is_hidden() and page.locator("#save").count() == 1
        assert page.locator("#warning").is_hidden()
        page.click("#studies li[data-image=phantom11]")
        wait_idle(page)
        k = int(np.argmax(truth.sum(axis=(0, 1))))
        page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
        ii, jj = np.nonzero(truth[:, :, k])
        centre = [int(round(ii.mean())), int(round(jj.mean())), k]
        answer = click_voxel(page, centre)
        assert answer.request.headers.get("authorization", "").startswith("Bearer ")
        assert json.loads(form_field(answer.request, "params"))["reset_state"] is False
        _, _, result = mask_from_infer_response(answer)
        screenshot(page, "viewer-untrained-warning", tmp_path / "shots")
        # Clear structure forgets its prompts and mask; the next click starts the label afresh
        page.click("#clear")
        assert page.locator("#labels li[data-label=lesion] .tag").count() == 0
        again = click_voxel(page, centre)
        request = json.loads(form_field(again.request, "params"))
        assert request["reset_state"] is True and request["foreground"] == [centre]
        _, _, result = mask_from_infer_response(again)
    finally:
        server.stop()

    assert result["model"]["random_weights"] is True
    assert page.locator("#warning").is_visible()
    assert result["warning"] in page.inner_text("#warning")
    slices = result["labels"]["lesion"]["slices"]
    # slices to check: a mask there, and SAM 2's estimate well below the structure's median, or
    # an object score under 1 (panels.js); none for an empty mask, which the panel says
    with_mask = [s for s in slices if s["area"] > 0]
    ious = sorted(s["predicted_iou"] for s in with_mask if s["predicted_iou"] is not None)
    typical = ious[len(ious) // 2] if ious else None
    unsure = [s["slice"] for s in with_mask if (typical is not None and s["predicted_iou"] is not None
                                                 and s["predicted_iou"] < typical - 0.1) or s["object_score"] < 1.0]
    listed = [int(b) for b in page.locator("#unsure button").all_inner_texts()]
    assert listed == unsure, (listed, slices)
    if unsure:
        page.click(f"#unsure button[data-slice='{unsure[-1]}']")
        assert page.input_value("#slice") == str(unsure[-1])  # the button takes the user to that slice
    if not with_mask:
        assert "empty" in page.inner_text("#unsure"), page.inner_text("#unsure")


# ---- on a PACS: Orthanc (Debian) over DICOMweb, the final label also stored as DICOM SEG ------

def _seg_volumes(orthanc, study_uid: str, source_series: str, seg_series: str) -> dict:
    """Segment label -> [i, j, k] mask, read from Orthanc with highdicom over the source's slices."""
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(orthanc.dicomweb)
    (seg_dataset,) = client.retrieve_series(study_uid, seg_series)
    seg = hd.seg.Segmentation.from_dataset(seg_dataset)
    # write_series numbers slice k as instance k + 1, positions rising with k (as the app reads them)
    metadata = client.retrieve_series_metadata(study_uid, source_series)
    by_k = sorted(metadata, key=lambda m: int(m["00200013"]["Value"][0]))
    sources = [m["00080018"]["Value"][0] for m in by_k]
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(sources, segment_numbers=numbers, combine_segments=False,
                                               assert_missing_frames_are_empty=True)  # [k, j, i, segment]
    return {str(s.SegmentLabel): np.transpose(pixels[..., n], (2, 1, 0)) > 0
            for n, s in enumerate(seg.SegmentSequence)}


@needs_orthanc
@needs_chromium
def test_viewer_round_trip_on_a_pacs(pacs_server, pacs_studies, orthanc, chromium_page, tmp_path):  # noqa: F811
    series = pacs_studies.phantoms["ohif"]
    uid = series.uids["series"]
    status, body = get(pacs_server.url + "/medsam2/viewer/studies")
    listed = {s["image"]: s for s in json.loads(body)["studies"]}
    assert "ellipsoid phantom ohif" in listed[uid]["description"]  # the PACS's words, not a bare UID

    done = round_trip(chromium_page, pacs_server.url, uid, series.mask, tmp_path / "shots", "viewer-pacs")

    # the final label in the datastore (the app's copy of the PACS, where training reads it)
    cache = pacs_server.log_path.parent / "cache"
    final_path = next(p for p in cache.rglob(f"{uid}.nii*") if "final" in p.parts)
    final = nib.load(final_path)
    np.testing.assert_array_equal(np.asarray(final.dataobj), done["expected"])
    np.testing.assert_allclose(final.affine, series.affine, atol=1e-3)

    # and the DICOM SEG in Orthanc: one segment per structure, the same voxels
    info = final_label_info(pacs_server.url, uid)
    segments = _seg_volumes(orthanc, series.uids["study"], uid, info["SeriesInstanceUID"])
    assert set(segments) == {"lesion", "organ"}
    for channel, name in enumerate(("lesion", "organ")):  # each segment whole, overlaps included
        np.testing.assert_array_equal(segments[name], done["stack"][..., channel], err_msg=f"segment {name}")
    status, body = get(pacs_server.url + f"/datastore/label?label={uid}&tag=final")
    assert status == 200, body[:300]
    np.testing.assert_array_equal(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(body)).dataobj)
                                  if body[:2] == b"\x1f\x8b" else np.asarray(nib.Nifti1Image.from_bytes(body).dataobj),
                                  done["expected"])
    keep_timings("pacs_dicomweb", done["timings"], "phantom-trained small test model")
