"""The page's drawing tools, end to end in Debian's headless Chromium against the real server
(phantom-trained small model): a scribble and a lasso on the slice under the pointer, undo
and redo (buttons and Ctrl+Z / Ctrl+Y), a locked structure that a new overlapping one does not
take, and a saved mask as the starting point. Each is checked in the request the page sent,
in the masks the page holds and on the screenshot (the overlay over exactly those voxels).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from tests.support.tool_tour import brush_stroke, draw, near_segment, position
from tests.support.tool_tour import held as held_on
from tests.support.viewer_page import (SEGMENT_ROUTE, assert_mask_on_screen, dice, form_field,
                                       mask_from_infer_response, phantom_server, wait_idle)

SHAPE = (40, 32, 16)


def held(page, value: int) -> np.ndarray:
    return held_on(page, value, SHAPE)


def open_on_the_lesion(page, url: str, truth: np.ndarray) -> tuple:
    """The phantom study open on the lesion's largest slice k, the lesion chosen: (k, its rows, its columns)."""
    page.goto(url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click("#studies li[data-image='phantom14']")
    wait_idle(page)
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    page.click("#labels li[data-label=lesion]")
    ii, jj = np.nonzero(truth[:, :, k])
    return k, ii, jj


@pytest.fixture(scope="module")
def tools_server(fine_tuned, small_model_files, tmp_path_factory):
    with phantom_server(fine_tuned, small_model_files, tmp_path_factory.mktemp("viewer-tools"), 14, SHAPE) as running:
        yield running





@needs_chromium
def test_scribble_lasso_undo_redo_lock_and_start_from_saved(tools_server, chromium_page, tmp_path):
    server, truth = tools_server
    page = chromium_page
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click("#studies li[data-image='phantom14']")
    wait_idle(page)
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    ii, jj = np.nonzero(truth[:, :, k])
    ci, cj = float(ii.mean()), float(jj.mean())

    # a scribble inside the lesion: a stroke on slice k, in the voxels under the pointer
    stroke = [position(page, [ci - 3, cj - 1, k]), position(page, [ci, cj + 1, k]), position(page, [ci + 3, cj, k])]
    answer = draw(page, "stroke", stroke)
    params = json.loads(form_field(answer.request, "params"))
    [sent] = params["strokes"]
    assert sent["positive"] is True and {p[2] for p in sent["points"]} == {k}
    assert abs(sent["points"][0][0] - (ci - 3)) <= 1 and abs(sent["points"][-1][0] - (ci + 3)) <= 1
    scribbled, _, _ = mask_from_infer_response(answer)
    lesion = held(page, 1)
    np.testing.assert_array_equal(lesion, scribbled > 0)
    assert dice(lesion, truth) > 0.7
    assert_mask_on_screen(page, screenshot(page, "viewer-tools-1-scribble", tmp_path), lesion, k)

    # undo (button): nothing can be segmented from no prompt, the mask goes; redo (Ctrl+Y): it is back
    page.click("#undo")
    wait_idle(page)
    assert not held(page, 1).any()
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as again:
        page.keyboard.press("Control+y")
    wait_idle(page)
    assert json.loads(form_field(again.value.request, "params"))["strokes"] == params["strokes"]
    np.testing.assert_array_equal(held(page, 1), lesion)

    # the lesion locked; the organ outlined generously around it with the lasso takes none of it
    page.click("#labels li[data-label=lesion] .lock")
    page.click("#labels li[data-label=organ]")
    outline = [[ii.min() - 3, jj.min() - 3], [ii.max() + 3, jj.min() - 3], [ii.max() + 3, jj.max() + 3],
               [ii.min() - 3, jj.max() + 3]]
    answer = draw(page, "lasso", [position(page, [i, j, k]) for i, j in outline] + [position(page, [*outline[0], k])])
    params = json.loads(form_field(answer.request, "params"))
    assert params["locked"] == ["lesion"] and params["lasso"][0]["slice"] == k
    organ = held(page, 2)
    assert organ.any() and not (organ & lesion).any(), "a locked structure's voxels were taken"
    _, _, result = mask_from_infer_response(answer)
    assert result["labels"]["organ"]["locked_out"] > 0  # SAM 2 did reach into the lesion; the lock kept it
    shown = screenshot(page, "viewer-tools-2-locked", tmp_path)
    assert_mask_on_screen(page, shown, lesion, k)  # still red where the lesion is

    # the locked lesion takes no prompt
    page.click("#labels li[data-label=lesion]")
    page.check("input[name=tool][value=point]")
    page.mouse.click(*position(page, [ci, cj, k]))
    assert "locked" in page.inner_text("#status")

    # saved, reopened: the lesion's saved mask on slice k is the start of a new lesion
    page.click("#labels li[data-label=lesion] .lock")
    page.click("#save")
    page.wait_for_function("document.getElementById('save-status').textContent.length > 0", timeout=120_000)
    page.reload()
    page.evaluate("window.medsam2Viewer.ready")
    page.click("#studies li[data-image='phantom14']")
    wait_idle(page)
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    page.click("#labels li[data-label=lesion]")
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as started:
        page.click("#start-saved")
    wait_idle(page)
    params = json.loads(form_field(started.value.request, "params"))
    assert params["mask_prompt"] == {"from": "final", "name": "lesion", "slices": [k]}
    restarted = held(page, 1)
    assert dice(restarted, lesion) > 0.8
    assert not errors, errors




@needs_chromium
def test_brush_and_eraser_in_each_mode_and_undo(tools_server, chromium_page, tmp_path):
    """Manual: exactly the voxels under the brush change, nothing is asked of the model, and the
    edit stays over later results until undone. Re-propagate: the slice as painted is sent as
    that slice's mask prompt and the structure is segmented again from it."""
    server, truth = tools_server
    page = chromium_page
    errors, requests = [], []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("request", lambda r: requests.append(r) if SEGMENT_ROUTE in r.url else None)
    k, ii, jj = open_on_the_lesion(page, server.url, truth)
    page.check("input[name=tool][value=box]")
    page.mouse.move(*position(page, [ii.min() - 1, jj.min() - 1, k]))
    page.mouse.down()
    page.mouse.move(*position(page, [ii.max() + 1, jj.max() + 1, k]), steps=4)
    page.mouse.up()
    wait_idle(page)
    model = held(page, 1)
    assert model.any()
    radius = 14.0
    page.evaluate("r => { document.getElementById('brush-size').value = r; }", radius)

    # manual brush, away from the lesion: exactly the voxels under it, on this slice, no request
    page.select_option("#brush-mode", "manual")
    a, b = [2, 2, k], [2, SHAPE[1] - 3, k]
    assert brush_stroke(page, "brush", a, b, requests) == 0
    inside, edge = near_segment(page, a, b, SHAPE, k, radius)
    painted = held(page, 1)
    changed = painted ^ model
    assert changed[:, :, k].any() and not np.delete(changed, k, axis=2).any()
    assert painted[:, :, k][inside].all() and not (changed[:, :, k] & ~edge).any()
    assert_mask_on_screen(page, screenshot(page, "viewer-tools-3-brush-manual", tmp_path), painted, k)

    # manual eraser across the lesion: exactly those voxels go
    ci = int(round(ii.mean()))
    a2, b2 = [ci, jj.min() - 2, k], [ci, jj.max() + 2, k]
    assert brush_stroke(page, "eraser", a2, b2, requests) == 0
    inside2, edge2 = near_segment(page, a2, b2, SHAPE, k, radius)
    erased = held(page, 1)
    assert not erased[:, :, k][inside2].any()
    assert np.array_equal(erased[:, :, k] | (painted[:, :, k] & edge2), painted[:, :, k])
    assert np.array_equal(np.delete(erased, k, axis=2), np.delete(painted, k, axis=2))

    # undo both (Ctrl+Z, the button), redo the brush: no request, the masks as they were
    page.keyboard.press("Control+z")
    np.testing.assert_array_equal(held(page, 1), painted)
    page.click("#undo")
    np.testing.assert_array_equal(held(page, 1), model)
    page.keyboard.press("Control+y")
    np.testing.assert_array_equal(held(page, 1), painted)
    assert len([r for r in requests if r.method == "POST"]) == 1  # the box's, only

    # re-propagate: the lesion widened on slice k is sent as that slice's mask prompt
    page.select_option("#brush-mode", "repropagate")
    a3, b3 = [ii.max(), jj.min(), k], [ii.max() + 3, jj.max(), k]
    before = held(page, 1)
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as answer:
        brush_stroke(page, "brush", a3, b3, requests)
    wait_idle(page)
    params = json.loads(form_field(answer.value.request, "params"))
    [sent] = params["slice_masks"]
    from medsam2_engine.mask_regions import parse_region
    slice_sent = parse_region(sent, SHAPE[:2], "slice_masks[0]")
    inside3, edge3 = near_segment(page, a3, b3, SHAPE, k, radius)
    assert sent["slice"] == k and slice_sent[inside3].all()
    np.testing.assert_array_equal(slice_sent & ~edge3, before[:, :, k] & ~edge3)  # elsewhere: as on screen
    result, _, _ = mask_from_infer_response(answer.value)
    after = held(page, 1)
    # the model's new mask, with the manual brush still drawn over it
    np.testing.assert_array_equal(after & ~painted, (result > 0) & ~painted)
    assert after[:, :, k][near_segment(page, a, b, SHAPE, k, radius)[0]].all()
    assert_mask_on_screen(page, screenshot(page, "viewer-tools-4-brush-repropagate", tmp_path), after, k)
    assert not errors, errors


def other_plane_tinted(page, png, n: int, mask: np.ndarray) -> tuple:
    """(tinted red, in the mask) for every voxel of the plane other view n shows, read from the screenshot."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    normal, cursor = page.evaluate(f"[window.medsam2Viewer.others.views[{n}].normal, "
                                   f"window.medsam2Viewer.others.views[{n}].cursor]")
    voxels = []
    for a in range(SHAPE[[d for d in range(3) if d != normal][0]]):
        for b in range(SHAPE[[d for d in range(3) if d != normal][1]]):
            voxel = list(cursor)
            voxel[[d for d in range(3) if d != normal][0]], voxel[[d for d in range(3) if d != normal][1]] = a, b
            voxels.append(voxel)
    where = page.evaluate(f"vs => vs.map(v => window.medsam2Viewer.otherPosition({n}, v))", voxels)
    tinted = np.array([rgb[int(round(y)), int(round(x)), 0] - rgb[int(round(y)), int(round(x)), 1] > 40
                       for x, y in where])
    return tinted, np.array([mask[tuple(v)] for v in voxels]), voxels, normal


@needs_chromium
def test_three_views_show_the_structure_take_prompts_and_ctrl_click_moves_the_cursor(tools_server, chromium_page, tmp_path):
    server, truth = tools_server
    page = chromium_page
    k, ii, jj = open_on_the_lesion(page, server.url, truth)
    ci, cj = int(round(ii.mean())), int(round(jj.mean()))
    page.check("input[name=tool][value=point]")
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000):
        page.mouse.click(*position(page, [ci, cj, k]))
    wait_idle(page)
    lesion = held(page, 1)
    assert lesion[ci, cj, k]

    page.select_option("#layout", "three")
    page.evaluate("v => { window.medsam2Viewer.view.setPlane(2, v); }", [ci, cj, k])
    page.wait_for_timeout(300)
    assert sorted(page.inner_text(f"#other-{x}-name") for x in "ab") == ["coronal", "sagittal"]
    png = screenshot(page, "viewer-tools-5-three-views", tmp_path)
    assert_mask_on_screen(page, png, lesion, k)  # the main view still maps its voxels
    for n in (0, 1):
        tinted, inside, voxels, normal = other_plane_tinted(page, png, n, lesion)
        off_marker = np.array([v[2] != k for v in voxels])  # the main view's plane is a line over slice k
        tinted, inside = tinted[off_marker], inside[off_marker]
        assert inside.any(), "the other plane does not cross the lesion"
        assert tinted[inside].mean() > 0.9 and tinted[~inside].mean() < 0.03, (n, normal)

    # a click on the sagittal plane, two slices lower, is a point there: on the app's slice k - 2
    n = page.evaluate("window.medsam2Viewer.others.views.findIndex(v => v.normal === 0)")
    target = [ci, cj + 1, k - 2]
    where = page.evaluate(f"v => window.medsam2Viewer.otherPosition({n}, v)", target)
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as clicked:
        page.mouse.click(*where)
    wait_idle(page)
    assert json.loads(form_field(clicked.value.request, "params"))["foreground"] == [[ci, cj, k], target]
    assert page.evaluate("[window.medsam2Viewer.view.normal, window.medsam2Viewer.view.currentSlice()]") == [2, k]
    # Ctrl+click moves the cursor there: the main (axial) view goes to that slice, and no prompt is made
    requests = []
    page.on("request", lambda r: requests.append(r.url) if SEGMENT_ROUTE in r.url else None)
    page.keyboard.down("Control")
    page.mouse.click(*where)
    assert page.evaluate("[window.medsam2Viewer.view.normal, window.medsam2Viewer.view.currentSlice()]") == [2, k - 2]
    # Ctrl+double click shows that plane in the main view, through the voxel clicked
    page.mouse.dblclick(*page.evaluate(f"v => window.medsam2Viewer.otherPosition({n}, v)", target))
    page.keyboard.up("Control")
    assert page.evaluate("[window.medsam2Viewer.view.normal, window.medsam2Viewer.view.currentSlice()]") == [0, ci]
    page.wait_for_timeout(300)
    assert requests == []
    assert page.input_value("#plane") == "0"


@needs_chromium
def test_a_label_file_on_the_study_grid_starts_a_structure_and_another_grid_is_refused(tools_server, chromium_page,
                                                                                      tmp_path):
    import nibabel as nib

    from tests.support.viewer_page import FLIPPED_AFFINE

    server, truth = tools_server
    page = chromium_page
    k, ii, jj = open_on_the_lesion(page, server.url, truth)
    page.click("#labels li[data-label=organ]")
    signed = tmp_path / "signed_lesion.nii.gz"
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), FLIPPED_AFFINE), str(signed))
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000):
        page.set_input_files("#start-file", str(signed))
    wait_idle(page)
    # (Chromium keeps no copy of a body with a file: the page's own record of what it sent)
    sent = json.loads(page.evaluate("window.medsam2Viewer.streamsAnswered.at(-1).params"))
    assert sent["mask_prompt"] == {"from": "upload", "slices": [k]} and sent["label"] == "organ"
    started = held(page, 2)
    assert started[:, :, k].any() and dice(started, truth) > 0.8
    assert "signed_lesion.nii.gz" in page.inner_text("#prompt-summary")
    # a correction click re-sends the file with the structure's prompts
    page.check("input[name=tool][value=point]")
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as again:
        page.mouse.click(*position(page, [int(round(ii.mean())), int(round(jj.mean())), k]))
    wait_idle(page)  # the file went again: without it the server refuses the mask_prompt (an error here)
    assert again.value.ok
    assert json.loads(page.evaluate("window.medsam2Viewer.streamsAnswered.at(-1).params"))["mask_prompt"]["from"] == "upload"

    # a file on another grid: refused in the clinician's words, the mask as it was
    page.click("#labels li[data-label=lesion]")
    lesion_before = held(page, 1)  # (the study's saved lesion, when an earlier test saved one)
    other = tmp_path / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.uint8), np.eye(4)), str(other))
    page.set_input_files("#start-file", str(other))
    page.wait_for_function("document.getElementById('status').dataset.state === 'error'", timeout=120_000)
    message = page.inner_text("#status")
    assert "uploaded label is [8, 8, 4]" in message and "HTTP" not in message and "/tmp" not in message, message
    np.testing.assert_array_equal(held(page, 1), lesion_before)


@needs_chromium
def test_a_structure_starts_from_another_as_shown(tools_server, chromium_page):
    """The lesion's mask on the shown slice, as on screen, is sent as the organ's mask prompt there."""
    from medsam2_engine.mask_regions import parse_region

    server, truth = tools_server
    page = chromium_page
    k, ii, jj = open_on_the_lesion(page, server.url, truth)
    page.check("input[name=tool][value=point]")
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000):
        page.mouse.click(*position(page, [int(round(ii.mean())), int(round(jj.mean())), k]))
    wait_idle(page)
    lesion = held(page, 1)
    page.click("#labels li[data-label=organ]")
    assert page.locator("#start-structure option[value=lesion]").count() == 1
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as answer:
        page.select_option("#start-structure", "lesion")
    wait_idle(page)
    params = json.loads(form_field(answer.value.request, "params"))
    [sent] = params["slice_masks"]
    assert params["label"] == "organ" and sent["slice"] == k
    np.testing.assert_array_equal(parse_region(sent, SHAPE[:2], "slice_masks[0]"), lesion[:, :, k])
    assert dice(held(page, 2), lesion) > 0.8


@needs_chromium
def test_a_box_and_an_outline_across_the_slices_become_points_on_the_middle_slice(tools_server, chromium_page):
    """A box in the coronal view and an outline in the sagittal view: each becomes three foreground
    points on the app's slice through its middle, on the voxels under the drawing; one undo takes
    back a whole gesture."""
    server, truth = tools_server
    page = chromium_page
    k, ii, jj = open_on_the_lesion(page, server.url, truth)
    ci, cj = int(round(ii.mean())), int(round(jj.mean()))
    k0, k1 = k - 3, k + 2  # the drawing spans these slices: its middle, rounded up as the page does
    middle = (k0 + k1 + 1) // 2

    page.evaluate("() => window.medsam2Viewer.showPlane(1)")  # coronal: rows i, slices k at column cj
    page.evaluate("j => window.medsam2Viewer.view.goToSlice(j)", cj)
    i0, i1 = int(ii.min()), int(ii.max())
    answer = draw(page, "box", [position(page, [i0, cj, k0]), position(page, [i1, cj, k1])])
    boxed = json.loads(form_field(answer.request, "params"))["foreground"]
    assert len(boxed) == 3 and all(v[1] == cj and v[2] == middle and i0 <= v[0] <= i1 for v in boxed), \
        (boxed, cj, middle, i0, i1)
    rows = [v[0] for v in boxed]
    assert rows == sorted(set(rows)) and abs(rows[1] - (i0 + i1) / 2) <= 1  # spread along the row inside
    assert held(page, 1)[rows[1], cj, middle]

    page.evaluate("() => window.medsam2Viewer.showPlane(0)")  # sagittal: columns j, slices k at row ci
    page.evaluate("i => window.medsam2Viewer.view.goToSlice(i)", ci)
    j0, j1 = int(jj.min()), int(jj.max())
    outline = [position(page, v) for v in ([ci, j0, k], [ci, cj, k0], [ci, j1, k], [ci, cj, k1], [ci, j0 + 1, k])]
    answer = draw(page, "lasso", outline)
    sent = json.loads(form_field(answer.request, "params"))
    assert "lasso" not in sent  # not a mask on a slice: the points it says
    outlined = [v for v in sent["foreground"] if v not in boxed]
    assert len(outlined) == 3 and all(v[0] == ci and v[2] == middle and j0 < v[1] < j1 for v in outlined), outlined

    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as undone:
        page.click("#undo")
    wait_idle(page)
    assert json.loads(form_field(undone.value.request, "params"))["foreground"] == boxed  # the outline's three went
