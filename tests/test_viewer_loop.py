"""The active-learning loop run from the page, in headless Chromium, on a studies folder and on a PACS:
label two studies, start a fine-tune from the page, watch it finish, see the next click made by
the new weights, follow "Next study" to the study still unlabelled, and see the learning curve.

Also the roles: a user without the admin role sees no fine-tune button and the server refuses
them; the fine-tune history's baselines are computed from the held-out studies.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from tests.support.orthanc import needs_orthanc
from tests.support.server import RunningServer
from tests.support.viewer_page import click_voxel, get, mask_from_infer_response, wait_idle
from tests.test_viewer import FLIPPED_AFFINE

LABELS = "lesion,organ"
FAST_FINETUNE = {"finetune_epochs": 1, "finetune_steps_per_epoch": 2, "finetune_clip_length": 3,
                 "finetune_max_objects": 1, "finetune_correction_clicks": 1, "finetune_baseline_validation": "false"}


def _server(studies, small_model_files, fine_tuned, folder: Path) -> RunningServer:
    """The app serving the phantom-trained model as the model folder's official file, so a
    fine-tune published into that folder takes over."""
    config, _ = small_model_files
    model_dir = folder / "model"
    model_dir.mkdir()
    (model_dir / "small.yaml").write_text(Path(config).read_text())
    (model_dir / "small.pt").write_bytes(Path(fine_tuned[0].models.explicit).read_bytes())
    return RunningServer(studies, {"model_config": model_dir / "small.yaml", "model_dir": model_dir,
                                   "labels": LABELS, **FAST_FINETUNE}, folder / "server.log")


def _label_in_page(page, image: str, truth: np.ndarray) -> None:
    page.click(f"#studies li[data-image='{image}']")
    wait_idle(page)
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    ii, jj = np.nonzero(truth[:, :, k])
    mask, _, _ = mask_from_infer_response(click_voxel(page, [int(round(ii.mean())), int(round(jj.mean())), k]))
    assert mask.sum() > 0
    with page.expect_response(lambda r: "/datastore/label" in r.url, timeout=120_000) as saved:
        page.click("#save")
    wait_idle(page)
    assert saved.value.ok, saved.value.text()


def run_the_loop(page, base_url: str, studies: dict, shots: Path, prefix: str) -> dict:
    """``studies``: image id -> truth mask, three of them; the first two get labelled."""
    ids = list(studies)
    # a second tab (another clinician's, say), open all along and never reloaded
    other = page.context.new_page()
    other.goto(base_url + "/medsam2/viewer/")
    other.evaluate("window.medsam2Viewer.ready")
    page.goto(base_url + "/medsam2/viewer/")
    page.bring_to_front()  # the clinician works in this tab (a background tab's frames are throttled)
    page.evaluate("window.medsam2Viewer.ready")
    page.wait_for_function("document.getElementById('progress-text').textContent.includes('studies labelled')")
    assert page.inner_text("#progress-text") == "0 of 3 studies labelled"
    assert page.is_visible("#train") and page.is_disabled("#train")  # nothing to train on yet
    assert "no final labels" in page.inner_text("#training-status")
    first_version = None
    for image in ids[:2]:
        _label_in_page(page, image, studies[image])
        first_version = first_version or page.evaluate("window.medsam2Viewer.state.modelVersion")
    page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('2 of 3')")
    assert first_version == "base checkpoint"
    # the other tab learns of the saves from the server's events
    other.wait_for_function("document.getElementById('progress-text').textContent.startsWith('2 of 3')",
                            timeout=15_000)
    assert "no final labels" not in other.inner_text("#training-status")
    screenshot(page, f"{prefix}-1-labelled", shots)

    page.click("#train")
    page.wait_for_function("document.getElementById('training-status').textContent.startsWith('Fine-tun')")
    screenshot(page, f"{prefix}-2-training", shots)
    page.wait_for_function("document.getElementById('training-status').textContent.includes('done')",
                           timeout=600_000)
    status = page.inner_text("#training-status")
    assert "Fine-tune 1 done" in status, status
    # the new weights are prepared in the background, then served: every tab is told
    for tab in (page, other):
        tab.wait_for_function("document.getElementById('model-version').textContent === 'Served weights: fine-tune 1'",
                              timeout=300_000)
    page.wait_for_function("document.getElementById('training-status').textContent.includes('its weights are served')",
                           timeout=15_000)
    screenshot(other, f"{prefix}-2b-other-tab", shots)
    other.close()
    assert page.locator("#curve svg circle.point-1").count() == 1  # fill-the-box baseline beside it

    # the next click is made by the new weights, and the page says so
    truth = studies[ids[1]]
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    ii, jj = np.nonzero(truth[:, :, k])
    answer = click_voxel(page, [int(ii.min()), int(round(jj.mean())), k])
    _, _, result = mask_from_infer_response(answer)
    assert result["model"]["version"]["name"] == "fine-tune 1"
    assert "New weights: fine-tune 1 made this mask" in page.inner_text("#status")
    assert "made by fine-tune 1" in page.inner_text("#result-summary")
    screenshot(page, f"{prefix}-3-new-weights", shots)

    page.click("#next-study")
    page.wait_for_function(f"window.medsam2Viewer.state.image === {json.dumps(ids[2])}")
    wait_idle(page)
    screenshot(page, f"{prefix}-4-next-study", shots)
    return result


def _phantoms(count: int) -> list:
    from tests.support.trained_small_model import phantom

    return [phantom(seed=20 + n) for n in range(count)]


@needs_chromium
def test_the_loop_on_a_studies_folder(small_model_files, fine_tuned, chromium_page, tmp_path):
    folder = tmp_path / "loop"
    studies = folder / "studies"
    studies.mkdir(parents=True)
    truths = {}
    for n, (array, truth) in enumerate(_phantoms(3)):
        nib.save(nib.Nifti1Image(array, FLIPPED_AFFINE), studies / f"case{n}.nii.gz")
        truths[f"case{n}"] = truth
    server = _server(studies, small_model_files, fine_tuned, folder)
    try:
        run_the_loop(chromium_page, server.url, truths, tmp_path / "shots", "viewer-loop-local")
        history = json.loads((folder / "model" / "finetune_history.json").read_text())
        assert [e["number"] for e in history] == [1] and history[0]["labelled_studies"] == 2
        assert history[0]["baselines"]["fill_box"] is not None
        # the command-line report of the same record
        from medsam2_eval.learning_curve import main as learning_curve

        assert learning_curve(["--model-dir", str(folder / "model"), "--out", str(tmp_path / "curve.svg")]) == 0
        svg = (tmp_path / "curve.svg").read_text()
        assert svg.count("<circle") == sum(v is not None for v in
                                           (history[0]["val_dice"], *history[0]["baselines"].values()))
        status, body = get(server.url + "/medsam2/loop")
        assert status == 200 and json.loads(body)["model"]["version"]["name"] == "fine-tune 1"
    finally:
        server.stop()


@needs_orthanc
@needs_chromium
def test_the_loop_on_a_pacs(small_model_files, fine_tuned, chromium_page, tmp_path):
    """An Orthanc of its own (labels go to it as SEG), so the session's shared PACS is untouched."""
    from tests.support.dicom_series import write_series
    from tests.support.orthanc import RunningOrthanc
    from tests.support.pacs_app import PHANTOM_SHAPE
    from tests.support.trained_small_model import AFFINE, phantom

    orthanc = RunningOrthanc(tmp_path / "orthanc")
    folder = tmp_path / "loop"
    folder.mkdir()
    try:
        truths = {}
        for n in range(3):
            array, truth = phantom(seed=30 + n, shape=PHANTOM_SHAPE)
            uids = write_series(array, AFFINE, folder / f"series{n}", description=f"loop phantom {n}",
                                patient_id=f"LOOP-{n}")
            orthanc.upload(folder / f"series{n}")
            truths[uids["series"]] = truth
        server = _server(orthanc.dicomweb, small_model_files, fine_tuned, folder)
        try:
            ordered = dict(sorted(truths.items()))  # Next study picks by id among the unlabelled
            run_the_loop(chromium_page, server.url, ordered, tmp_path / "shots", "viewer-loop-pacs")
        finally:
            server.stop()
    finally:
        orthanc.stop()
