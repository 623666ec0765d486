"""Every drawing tool of the page on one study, as a clinician uses them, each checked against
what is on screen: the masks the page holds (its overlay, read back from the screenshot at
each voxel's position), the request it sent, and the saved label.

Used on the phantom (tests/test_viewer_tools.py) and on real scans (test_viewer_tools_real.py).
The expected voxel of a pointer position is the page's ``pagePosition`` mapping, which
tests/test_viewer_geometry.py checks against the greys on screen on tilted and flipped studies.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tests.support.browser import screenshot
from tests.support.viewer_page import SEGMENT_ROUTE, form_field, mask_from_infer_response, wait_idle

LESION, ORGAN = 1, 2  # label values: the page draws them red and green


def position(page, voxel):
    return page.evaluate("v => window.medsam2Viewer.pagePosition(v)", [float(v) for v in voxel])


# a mask's voxels as base64 (a whole study's voxels as a JSON list took seconds per call)
MASK_BASE64 = """value => {
    const voxels = window.medsam2Viewer.state.masks.get(value)?.voxels;
    if (!voxels) return '';
    let text = '';
    for (let n = 0; n < voxels.length; n += 0x8000) text += String.fromCharCode(...voxels.subarray(n, n + 0x8000));
    return btoa(text);
}"""


def held(page, value: int, shape: tuple) -> np.ndarray:
    """The structure's mask the page holds (what it draws and saves)."""
    import base64

    packed = page.evaluate(MASK_BASE64, value)
    if not packed:
        return np.zeros(shape, bool)
    return np.frombuffer(base64.b64decode(packed), np.uint8).reshape(shape, order="F") > 0


def draw(page, tool: str, path: list, shift: bool = False):
    """Draw ``path`` (page positions) with ``tool``; the page's request once it is idle."""
    page.check(f"input[name=tool][value={tool}]")
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as answer:
        if shift:
            page.keyboard.down("Shift")
        page.mouse.move(*path[0])
        page.mouse.down()
        for point in path[1:]:
            page.mouse.move(*point, steps=3)
        page.mouse.up()
        if shift:
            page.keyboard.up("Shift")
    wait_idle(page)
    return answer.value


def brush_stroke(page, tool: str, a, b, requests: list) -> int:
    """Paint from voxel ``a`` to ``b`` with ``tool``; the number of segment requests it sent."""
    page.check(f"input[name=tool][value={tool}]")
    before = len(requests)
    page.mouse.move(*position(page, a))
    page.mouse.down()
    page.mouse.move(*position(page, b), steps=6)
    page.mouse.up()
    page.wait_for_timeout(300)
    wait_idle(page)
    return len(requests) - before


def near_segment(page, a, b, shape: tuple, k: int, radius: float) -> tuple:
    """(surely inside, maybe) masks of slice k: voxel centres on screen within radius - 0.5 px of
    the segment a-b, and within radius + 0.5 px (the brush's edge, where rounding may go either way)."""
    centres = np.array(page.evaluate(
        "([ni, nj, k]) => { const out = []; for (let j = 0; j < nj; j++) for (let i = 0; i < ni; i++) "
        "out.push(window.medsam2Viewer.pagePosition([i, j, k])); return out; }", [shape[0], shape[1], k]))
    p, q = np.array(position(page, a)), np.array(position(page, b))
    t = np.clip(((centres - p) @ (q - p)) / max((q - p) @ (q - p), 1e-9), 0, 1)
    distance = np.linalg.norm(centres - (p + t[:, None] * (q - p)), axis=1).reshape(shape[1], shape[0]).T
    return distance <= radius - 0.5, distance <= radius + 0.5


def overlay_matches(page, png, mask: np.ndarray, k: int, colour: str = "red") -> None:
    """The overlay on the screenshot covers exactly ``mask``'s voxels of slice k (empty: none tinted)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    ni, nj = mask.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(ni * nj / 20000))))  # about 20,000 voxels looked at
    voxels = [[i, j, k] for i in range(0, ni, step) for j in range(0, nj, step)]
    where = page.evaluate("vs => vs.map(v => window.medsam2Viewer.pagePosition(v))", voxels)
    channel = 0 if colour == "red" else 1
    tinted = np.array([rgb[int(round(y)), int(round(x)), channel] - rgb[int(round(y)), int(round(x)), 2] > 40
                       for x, y in where])
    inside = np.array([mask[i, j, k] for i, j, _ in voxels])
    # (a voxel whose neighbours differ may blend at its centre on a small screen: a few edge misses)
    assert (tinted[inside].mean() if inside.any() else 1.0) > 0.9, f"{colour} missing on the mask"
    assert tinted[~inside].mean() < 0.03, f"{colour} outside the mask: {tinted[~inside].mean():.3f}"


def tour(page, base_url: str, image: str, k: int | None, centre: tuple | None, shots, prefix: str) -> dict:
    """Scribble, undo/redo, lasso under a lock, brush in each mode, clicks in the two other planes,
    save, and start from the saved label, on ``image`` around voxel ``centre`` of slice k (None:
    the middle of the study). Returns what the tour saw: the study's shape, the slice, the
    structures as saved and reopened, the requests the page sent and the saved label's info."""
    errors, requests = [], []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("request", lambda r: requests.append(r) if SEGMENT_ROUTE in r.url else None)
    page.goto(base_url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{image}']")
    wait_idle(page)
    shape = tuple(page.evaluate("window.medsam2Viewer.view.dims"))
    k = shape[2] // 2 if k is None else k
    ci, cj = (shape[0] // 2, shape[1] // 2) if centre is None else centre
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    page.click("#labels li[data-label=lesion]")
    r = max(3, min(shape[0], shape[1]) // 25)

    # a scribble: a stroke on slice k through the voxels under the pointer
    stroke = [position(page, [ci - r, cj, k]), position(page, [ci, cj, k]), position(page, [ci + r, cj, k])]
    answer = draw(page, "stroke", stroke)
    [sent] = json.loads(form_field(answer.request, "params"))["strokes"]
    assert {p[2] for p in sent["points"]} == {k}
    assert abs(sent["points"][0][0] - (ci - r)) <= 1 and abs(sent["points"][-1][0] - (ci + r)) <= 1
    returned, _, _ = mask_from_infer_response(answer)
    lesion = held(page, LESION, shape)
    np.testing.assert_array_equal(lesion, returned == LESION)
    overlay_matches(page, screenshot(page, f"{prefix}-1-scribble", shots), lesion, k)

    # undo: no prompt, no mask; redo (Ctrl+Y): the same request, the same mask
    page.click("#undo")
    wait_idle(page)
    assert not held(page, LESION, shape).any()
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000):
        page.keyboard.press("Control+y")
    wait_idle(page)
    np.testing.assert_array_equal(held(page, LESION, shape), lesion)

    # the lesion locked; the organ outlined around it with the lasso takes none of its voxels
    page.click("#labels li[data-label=lesion] .lock")
    page.click("#labels li[data-label=organ]")
    d = 2 * r
    outline = [[ci - d, cj - d], [ci + d, cj - d], [ci + d, cj + d], [ci - d, cj + d], [ci - d, cj - d]]
    answer = draw(page, "lasso", [position(page, [i, j, k]) for i, j in outline])
    params = json.loads(form_field(answer.request, "params"))
    assert params["locked"] == ["lesion"] and params["lasso"][0]["slice"] == k
    organ = held(page, ORGAN, shape)
    assert not (organ & lesion).any(), "a locked structure's voxels were taken"
    page.click("#labels li[data-label=lesion] .lock")
    page.click("#labels li[data-label=lesion]")

    # the brush, manual: exactly the voxels under it change, and the model is not asked (beside
    # the organ: where two unlocked structures overlap, the page shows the smaller one)
    radius = 10.0
    page.evaluate("r => { document.getElementById('brush-size').value = r; }", radius)
    page.select_option("#brush-mode", "manual")
    a, b = [ci - r, cj + 3 * r, k], [ci + r, cj + 3 * r, k]
    before = held(page, LESION, shape)
    assert brush_stroke(page, "brush", a, b, requests) == 0
    inside, edge = near_segment(page, a, b, shape, k, radius)
    painted = held(page, LESION, shape)
    changed = painted ^ before
    assert painted[:, :, k][inside].all() and not (changed[:, :, k] & ~edge).any()
    assert not np.delete(changed, k, axis=2).any()
    overlay_matches(page, screenshot(page, f"{prefix}-2-brush-manual", shots), painted, k)

    # the eraser, re-propagate: the slice as erased is that slice's mask prompt
    page.select_option("#brush-mode", "repropagate")
    a2, b2 = [ci - r, cj + 3 * r, k], [ci, cj + 3 * r, k]
    with page.expect_response(lambda r_: SEGMENT_ROUTE in r_.url, timeout=180_000) as erased:
        brush_stroke(page, "eraser", a2, b2, requests)
    wait_idle(page)
    from medsam2_engine.mask_regions import parse_region

    [slice_sent] = json.loads(form_field(erased.value.request, "params"))["slice_masks"]
    sent_mask = parse_region(slice_sent, shape[:2], "slice_masks[0]")
    inside2, edge2 = near_segment(page, a2, b2, shape, k, radius)
    assert slice_sent["slice"] == k and not sent_mask[inside2].any()
    np.testing.assert_array_equal(sent_mask & ~edge2, painted[:, :, k] & ~edge2)  # elsewhere: as on screen

    # a click in the coronal and in the sagittal view lands on the voxel under the pointer
    for normal, voxel in ((1, [ci, cj, k]), (0, [ci, cj, max(0, k - 1)])):
        page.evaluate("n => window.medsam2Viewer.showPlane(n)", normal)
        page.evaluate("i => window.medsam2Viewer.view.goToSlice(i)", voxel[normal])
        page.check("input[name=tool][value=point]")
        with page.expect_response(lambda r_: SEGMENT_ROUTE in r_.url, timeout=180_000) as clicked:
            page.mouse.click(*position(page, voxel))
        wait_idle(page)
        foreground = json.loads(form_field(clicked.value.request, "params"))["foreground"]
        assert voxel in foreground, (normal, voxel, foreground)
    page.evaluate("() => window.medsam2Viewer.showPlane(2)")
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)

    # saved: the final label holds each structure exactly as the page shows it
    shown = {LESION: held(page, LESION, shape), ORGAN: held(page, ORGAN, shape)}
    page.click("#save")
    page.wait_for_function("document.getElementById('save-status').textContent.length > 0", timeout=120_000)
    assert "saved" in page.inner_text("#save-status").lower(), page.inner_text("#save-status")
    page.reload()
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{image}']")
    wait_idle(page)
    for value, mask in shown.items():
        np.testing.assert_array_equal(held(page, value, shape), mask)  # reopened from the saved label

    # the saved lesion on slice k is the start of a new lesion
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    page.click("#labels li[data-label=lesion]")
    assert shown[LESION][:, :, k].any()  # (the manual brush is on slice k, over every result)
    with page.expect_response(lambda r_: SEGMENT_ROUTE in r_.url, timeout=180_000) as started:
        page.click("#start-saved")
    wait_idle(page)
    params = json.loads(form_field(started.value.request, "params"))
    assert params["mask_prompt"] == {"from": "final", "name": "lesion", "slices": [k]}
    assert not errors, errors
    from tests.support.viewer_page import final_label_info

    return {"shape": shape, "k": k, "saved": shown, "requests": len(requests),
            "label_info": final_label_info(base_url, image)}
