"""One-prompt in the page, end to end in Debian's headless Chromium against the real server
(fine-tuned small model on phantoms: the masks prove plumbing, not accuracy).

- "Use as prompt" on a study with a saved lesion, three targets: the results listed least sure
  first; one rejected, one accepted as it is, one corrected with the brush then accepted. Only
  the accepted two are saved, each saying in its label info that one-prompt made it from which
  study and how many voxels the person changed; the mask saved is the one on screen.
- "Carry to follow-up" on two studies of one patient (grouped by the image info the upload
  route writes): the later one opens with the result, the earlier one beside it, the volumes
  and the change in mL as computed from the masks and voxel sizes; accepted and saved.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest

from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from tests.support.tool_tour import brush_stroke, held
from tests.support.viewer_page import FLIPPED_AFFINE, final_label_info, get, small_model_server, wait_idle

SHAPE = (40, 32, 8)
SUPPORT, TARGETS, UNTOUCHED = "phantom1", ["phantom2", "phantom3", "phantom4"], "phantom5"
EARLIER, LATER = "p7_2024", "p7_2025"
VOXEL_ML = abs(np.linalg.det(FLIPPED_AFFINE[:3, :3])) / 1000


@pytest.fixture(scope="module")
def one_prompt_server(fine_tuned, small_model_files, tmp_path_factory):
    from tests.support.trained_small_model import phantom

    def write(studies):
        final = studies / "labels" / "final"
        final.mkdir(parents=True)
        truths = {}
        for name, seed in [(SUPPORT, 1), *((t, n) for n, t in enumerate(TARGETS, start=2)), (UNTOUCHED, 5),
                           (EARLIER, 7), (LATER, 7)]:
            array, truth = phantom(seed=seed, shape=SHAPE)
            if name == LATER:  # the lesion grew: one more voxel of radius in i and j
                from tests.support.trained_small_model import STRUCTURE_HU, ellipsoid

                centre = np.argwhere(truth).mean(axis=0)
                radii = (np.ptp(np.argwhere(truth), axis=0) + 1) / 2 + (1, 1, 0)
                truth = ellipsoid(tuple(centre), tuple(radii), SHAPE)
                array[truth] = STRUCTURE_HU
            nib.save(nib.Nifti1Image(np.round(array).astype(np.int16), FLIPPED_AFFINE), studies / f"{name}.nii.gz")
            truths[name] = truth
        for name in (SUPPORT, EARLIER):  # the clinician's saved lesions (value 1: the first label)
            nib.save(nib.Nifti1Image(truths[name].astype(np.uint8), FLIPPED_AFFINE), final / f"{name}.nii.gz")
        return truths

    with small_model_server(fine_tuned, small_model_files, tmp_path_factory.mktemp("viewer-one-prompt"),
                            write) as running:
        server, _ = running
        for name, date in ((EARLIER, "20240115"), (LATER, "20250120")):  # as an upload records the patient
            body = urllib.request.Request(f"{server.url}/datastore/image/info?image={name}", method="PUT",
                                          data=_form({"info": json.dumps({"patient_id": "P7", "study_date": date})}),
                                          headers={"Content-Type": "application/x-www-form-urlencoded"})
            with urllib.request.urlopen(body, timeout=60) as answer:
                assert answer.status == 200
        yield running


def _form(fields: dict) -> bytes:
    from urllib.parse import urlencode

    return urlencode(fields).encode()


def _open(page, url: str, image: str):
    page.goto(url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{image}']")
    wait_idle(page)


def _run_ends(page):
    page.wait_for_function("window.medsam2Viewer.onePrompt.run && window.medsam2Viewer.onePrompt.run.state !== 'running'",
                           timeout=600_000)
    return page.evaluate("window.medsam2Viewer.onePrompt.run")


def _review(page, image: str):
    with page.expect_response(lambda r: "/mask?" in r.url, timeout=120_000):
        page.click(f"#op-results li[data-image='{image}']")
    page.wait_for_function(f"!document.getElementById('op-review').hidden && window.medsam2Viewer.state.image === '{image}'")
    wait_idle(page)


def _saved(server_url: str, image: str):
    """The saved final label's lesion, as the page reopens it."""
    import gzip

    with urllib.request.urlopen(f"{server_url}/medsam2/viewer/label?image={image}", timeout=60) as answer:
        names = [e["name"] for e in json.loads(answer.headers["X-Label-Info"])]
        stack = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(answer.read())).dataobj)
    return stack[..., names.index("lesion")] > 0


def _accept(page):
    page.click("#op-accept")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Accepted')"
                           " || document.getElementById('status').dataset.state === 'error'", timeout=120_000)
    assert page.inner_text("#status").startswith("Accepted"), page.inner_text("#status")


@needs_chromium
def test_one_prompt_results_are_reviewed_least_sure_first_and_only_accepted_ones_are_saved(one_prompt_server,
                                                                                          chromium_page, tmp_path):
    server, truths = one_prompt_server
    page = chromium_page
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    _open(page, server.url, SUPPORT)
    assert page.is_disabled("#op-use") is False, "a study with a saved lesion can be the prompt"
    page.click("#op-use")
    for box in page.query_selector_all("#op-targets input"):
        box.set_checked(box.get_attribute("value") in TARGETS)
    page.click("#op-start")
    page.wait_for_function("document.getElementById('op-progress').textContent.startsWith('Segmenting')")
    run = _run_ends(page)
    assert run["state"] == "done" and run["support"] == SUPPORT and run["label"] == "lesion"
    ready = [t for t in run["targets"] if t["state"] == "ready"]
    assert [t["image"] for t in ready] == sorted(TARGETS), f"every target segmented: {run['targets']}"  # noqa
    shown_order = page.eval_on_selector_all("#op-results li", "items => items.map(i => i.dataset.image)")
    confidences = [next(t["confidence"] for t in ready if t["image"] == image) for image in shown_order]
    assert confidences == sorted(confidences), "least sure first"
    screenshot(page, "viewer-one-prompt-1-results", tmp_path)
    rejected, as_is, corrected = shown_order

    _review(page, rejected)
    result = held(page, 1, SHAPE)
    assert result.any(), "the result is on screen"
    page.click("#op-reject")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Rejected')")
    assert not held(page, 1, SHAPE).any(), "a rejected result leaves the screen"

    _review(page, as_is)
    shown = held(page, 1, SHAPE)
    _accept(page)
    saved = _saved(server.url, as_is)
    assert np.array_equal(saved, shown), "saved as shown"

    _review(page, corrected)
    k = page.evaluate("window.medsam2Viewer.view.currentSlice()")
    before = held(page, 1, SHAPE)
    inside = np.argwhere(before[:, :, k])
    page.select_option("#brush-mode", "manual")
    requests = []
    i0, j0 = inside.min(axis=0)
    i1, _ = inside.max(axis=0)
    assert brush_stroke(page, "eraser", [i0, j0, k], [i1, j0, k], requests) == 0
    edited = held(page, 1, SHAPE)
    changed = int((edited != before).sum())
    assert changed > 0
    screenshot(page, "viewer-one-prompt-2-corrected", tmp_path)
    _accept(page)
    assert np.array_equal(_saved(server.url, corrected), edited)

    for image in (rejected, UNTOUCHED):  # nothing saved without a person accepting it
        assert get(f"{server.url}/medsam2/viewer/label?image={image}")[0] == 404
    records = {image: final_label_info(server.url, image)["one_prompt"] for image in (as_is, corrected)}
    assert records[as_is]["changed_voxels"] == 0 and records[corrected]["changed_voxels"] == changed
    assert all(r["made_by"] == "one-prompt" and r["from_study"] == SUPPORT and r["structure"] == "lesion"
               for r in records.values())
    states = {t["image"]: t["state"] for t in _run_ends(page)["targets"]}
    assert states == {rejected: "rejected", as_is: "accepted", corrected: "accepted"}
    assert not errors, errors


@needs_chromium
def test_carry_to_follow_up_shows_both_studies_their_volumes_and_the_change(one_prompt_server, chromium_page,
                                                                           tmp_path):
    server, truths = one_prompt_server
    page = chromium_page
    _open(page, server.url, EARLIER)
    page.wait_for_function("!document.getElementById('op-follow-up').disabled")
    assert "2025-01-20" in page.inner_text("#op-follow-up")
    page.click("#op-follow-up")
    run = _run_ends(page)
    assert run["kind"] == "follow-up" and [t["image"] for t in run["targets"]] == [LATER]
    page.wait_for_function(f"window.medsam2Viewer.state.image === '{LATER}'"
                           " && !document.getElementById('compare').hidden"
                           " && document.getElementById('op-volumes').textContent.length > 0", timeout=120_000)
    wait_idle(page)
    later = held(page, 1, SHAPE)
    assert later.any()
    text = page.inner_text("#op-volumes")
    earlier_ml, later_ml = truths[EARLIER].sum() * VOXEL_ML, later.sum() * VOXEL_ML
    assert f"earlier {earlier_ml:.2f} mL" in text and f"follow-up {later_ml:.2f} mL" in text, text
    assert f"change {'+' if later_ml >= earlier_ml else ''}{later_ml - earlier_ml:.2f} mL" in text, text
    screenshot(page, "viewer-one-prompt-3-follow-up", tmp_path)
    _accept(page)
    record = final_label_info(server.url, LATER)["one_prompt"]
    assert record["kind"] == "follow-up" and record["from_study"] == EARLIER
    assert np.array_equal(_saved(server.url, LATER), later)


def test_a_run_is_refused_while_one_runs_and_cancel_stops_it_saving_nothing(one_prompt_server):
    server, _ = one_prompt_server

    def call(method, path, body=None):
        request = urllib.request.Request(server.url + path, method=method, data=None if body is None else
                                         json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, run = call("POST", "/medsam2/one_prompt/runs", {"support": SUPPORT, "label": "lesion",
                                                            "targets": [UNTOUCHED, *TARGETS]})
    assert status == 200 and run["state"] == "running"
    status, refused = call("POST", "/medsam2/one_prompt/runs", {"support": SUPPORT, "targets": [UNTOUCHED]})
    assert status == 409 and "already" in refused["detail"]
    assert call("DELETE", f"/medsam2/one_prompt/runs/{run['id']}")[0] == 200
    deadline = time.time() + 120
    while (run := call("GET", f"/medsam2/one_prompt/runs/{run['id']}")[1])["state"] == "running":
        assert time.time() < deadline
        time.sleep(0.2)
    assert run["state"] == "cancelled" and run["targets"][-1]["state"] == "cancelled", run
    assert get(f"{server.url}/medsam2/viewer/label?image={UNTOUCHED}")[0] == 404
    assert call("GET", "/medsam2/one_prompt/runs/nope-1")[0] == 404
    status, bad = call("POST", "/medsam2/one_prompt/runs", {"support": UNTOUCHED, "targets": TARGETS})
    assert status == 409 and "no saved final label" in bad["detail"]
    status, bad = call("POST", "/medsam2/one_prompt/runs", {"support": SUPPORT, "targets": "all of them"})
    assert status == 400 and bad["detail"].startswith("targets:")
