"""Driving the viewer page in a browser for tests/test_viewer.py: clicks on voxels, the masks the
page received, what is on screen, and the whole click / correct / box / save round trip."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.support.browser import screenshot

ROOT = Path(__file__).resolve().parents[2]
# LPS-like axes (i and j flipped) and an origin: a page that mixed up the voxels it draws with the
# app's voxel order would click, show and save in the wrong place
FLIPPED_AFFINE = np.array([[-0.9, 0, 0, 20.0], [0, -0.8, 0, 15.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])
REPORTS = ROOT / "reports"
LABELS = ["lesion", "organ"]


@contextmanager
def small_model_server(fine_tuned, small_model_files, folder: Path, write_studies):
    """A real server with the fine-tuned small model (labels LABELS) on the studies that
    ``write_studies(studies folder)`` writes before it starts; yields (server, what it returned)."""
    from tests.support.server import RunningServer

    segmenter, _ = fine_tuned
    config, _ = small_model_files
    studies = folder / "studies"
    studies.mkdir()
    written = write_studies(studies)
    server = RunningServer(studies, {"model_config": config, "checkpoint": segmenter.models.explicit,
                                     "labels": ",".join(LABELS)}, folder / "server.log")
    try:
        yield server, written
    finally:
        server.stop()


@contextmanager
def phantom_server(fine_tuned, small_model_files, folder: Path, seed: int, shape: tuple):
    """A real server on one phantom study ``phantom<seed>`` (int16, FLIPPED_AFFINE) with the
    fine-tuned small model; yields (server, the lesion's mask)."""
    from tests.support.trained_small_model import phantom

    def write(studies):
        array, truth = phantom(seed=seed, shape=shape)
        nib.save(nib.Nifti1Image(np.round(array).astype(np.int16), FLIPPED_AFFINE), studies / f"phantom{seed}.nii.gz")
        return truth

    with small_model_server(fine_tuned, small_model_files, folder, write) as running:
        yield running


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


SEGMENT_ROUTE = "/medsam2/viewer/segment"  # the page's segmentation (streamed); Slicer and OHIF use /infer


def stream_events(body: bytes) -> list:
    """[(event, data)] of a server-sent events answer."""
    events = []
    for block in body.decode().split("\n\n"):
        lines = block.strip().splitlines()
        name = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
        if name:
            events.append((name, json.loads(data)))
    return events


def stream_body(response) -> bytes:
    """The stream's bytes as the page received them: Chromium does not always keep a streamed
    answer's body for Playwright, so the page's own record of it (``streamsAnswered``, by request)
    stands in then."""
    try:
        return response.body()
    except Exception:  # noqa: BLE001 - Playwright's "No data found for resource"
        params = form_field(response.request, "params")
        text = response.frame.page.evaluate(
            "p => (window.medsam2Viewer.streamsAnswered.filter(r => r.params === p).slice(-1)[0] || {}).text", params)
        assert text, "neither Chromium nor the page kept this stream's answer"
        return text.encode()


def mask_from_infer_response(response) -> tuple:
    """(mask array, affine, result JSON) from a captured answer: the page's stream (its final event:
    each label's region, values as /infer's label map) or an ``output=all`` infer answer."""
    assert response.ok, f"segmenting failed: HTTP {response.status} {response.text()[:500]}"
    if SEGMENT_ROUTE in response.url:
        from medsam2_engine.mask_regions import decode_region

        events = stream_events(stream_body(response))
        finals = [data for name, data in events if name == "final"]
        assert len(finals) == 1, f"no final event in the stream: {[name for name, _ in events]}"
        final = finals[0]
        mask = np.zeros(final["shape"], np.uint8)
        for entry in final["labels"].values():
            mask[decode_region(entry["mask"], tuple(final["shape"]))] = entry["value"]
        return mask, np.array(final["affine"]), final["result"]
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    parts = MultipartDecoder(response.body(), response.headers["content-type"]).parts
    by_name = {}
    for part in parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="')[1].split('"')[0]
        by_name[name] = part.content
    result = json.loads(by_name["params"])
    mask = nib.Nifti1Image.from_bytes(by_name["image"])
    return np.asarray(mask.dataobj), mask.affine, result


def wait_idle(page, timeout_ms: int = 180_000) -> str:
    page.wait_for_function("document.getElementById('status').dataset.state !== 'busy'", timeout=timeout_ms)
    state = page.get_attribute("#status", "data-state")
    text = page.inner_text("#status")
    assert state != "error", f"the page reports an error: {text}"
    return text


# a voxel's page position once it is the same two frames apart: a panel that has just changed
# (a warning shown, a label cleared) can still move the canvas when the previous answer settles
STABLE_POSITION = """async v => {
    const frame = () => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
    let last = null;
    for (let i = 0; i < 30; i++) {
        await frame();
        const now = window.medsam2Viewer.pagePosition(v);
        if (last && now[0] === last[0] && now[1] === last[1]) return now;
        last = now;
    }
    return last;
}"""


def click_voxel(page, voxel, shift: bool = False):
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as answer:
        x, y = page.evaluate(STABLE_POSITION, list(voxel))
        if shift:
            page.keyboard.down("Shift")
        page.mouse.click(x, y)
        if shift:
            page.keyboard.up("Shift")
    wait_idle(page)
    return answer.value


def drag_box(page, a, b):
    """Drag the box tool from page position ``a`` to ``b``; the answer once the page is idle."""
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as answer:
        page.mouse.move(*a)
        page.mouse.down()
        page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
        page.mouse.move(*b)
        page.mouse.up()
    wait_idle(page)
    return answer.value


def brightness(png: Path, xy) -> float:
    from PIL import Image

    pixel = Image.open(png).convert("L").getpixel((int(round(xy[0])), int(round(xy[1]))))
    return float(pixel)


def assert_mask_on_screen(page, png: Path, mask: np.ndarray, k: int) -> None:
    """The red overlay covers exactly the returned mask's voxels on slice ``k`` (a few edge misses)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    voxels = [[int(i), int(j), k] for i in range(mask.shape[0]) for j in range(mask.shape[1])]
    where = page.evaluate("vs => vs.map(v => window.medsam2Viewer.pagePosition(v))", voxels)
    red = np.array([rgb[int(round(y)), int(round(x)), 0] - rgb[int(round(y)), int(round(x)), 1] > 40
                    for x, y in where])
    inside = mask[:, :, k].reshape(-1).astype(bool)
    assert inside.any()
    assert red[inside].mean() > 0.95 and red[~inside].mean() < 0.02, (red[inside].mean(), red[~inside].mean())


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def round_trip(page, base_url: str, image: str, truth: np.ndarray, shots: Path, prefix: str) -> dict:
    """The clinician's steps in the page; returns the masks the app sent back and the timings.

    Open ``image``; click inside the structure on its largest slice; correct with a click two
    slices away; draw a box for the second structure; save.
    """
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(base_url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    assert page.locator(f"#studies li[data-image='{image}']").count() == 1
    assert page.locator("#labels li").all_inner_texts()[0].strip().startswith("lesion")
    screenshot(page, f"{prefix}-1-studies", shots)

    page.click(f"#studies li[data-image='{image}']")
    wait_idle(page)
    k = int(np.argmax(truth.sum(axis=(0, 1))))  # the structure's largest slice
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    ii, jj = np.nonzero(truth[:, :, k])
    inside = [int(round(ii.mean())), int(round(jj.mean())), k]
    assert truth[tuple(inside)]
    outside = [3, 3, k]  # soft tissue in the body's corner, far from the structure
    assert not truth[tuple(outside)]
    opened = screenshot(page, f"{prefix}-2-opened", shots)
    # what is drawn where the page will click is the structure (bright), and beside it the body
    at_inside = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", inside)
    at_outside = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", outside)
    assert brightness(opened, at_inside) > brightness(opened, at_outside) + 60

    # 1. a click inside the lesion
    first = click_voxel(page, inside)
    lesion, affine, result = mask_from_infer_response(first)
    request = json.loads(form_field(first.request, "params"))
    assert request["label"] == "lesion" and request["foreground"] == [inside]
    assert request["client_id"].startswith("viewer-")
    assert lesion.sum() > 0 and dice(lesion, truth) > 0.5, f"first mask Dice {dice(lesion, truth):.2f}"
    assert "lesion" in page.inner_text("#result-summary")
    shown = screenshot(page, f"{prefix}-3-first-click", shots)
    assert_mask_on_screen(page, shown, lesion, k)

    # 2. a correction on another slice: every prompt is resent, the session is reused
    k2 = k - 2
    ii, jj = np.nonzero(truth[:, :, k2])
    second_point = [int(round(ii.mean())), int(round(jj.mean())), k2]
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k2)
    second = click_voxel(page, second_point)
    lesion, _, result = mask_from_infer_response(second)
    request = json.loads(form_field(second.request, "params"))
    assert request["foreground"] == [inside, second_point]
    assert result["session"]["started"] is None, "the correction must reuse the session"
    assert lesion.sum() > 0
    screenshot(page, f"{prefix}-4-correction", shots)

    # a point outside (shift+click), then Undo: the request drops it again
    outside2 = [3, 3, k2]
    negative = click_voxel(page, outside2, shift=True)
    request = json.loads(form_field(negative.request, "params"))
    assert request["foreground"] == [inside, second_point] and request["background"] == [outside2]
    mask_from_infer_response(negative)
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as undone:
        page.click("#undo")
    wait_idle(page)
    request = json.loads(form_field(undone.value.request, "params"))
    assert request["foreground"] == [inside, second_point] and request["background"] == []
    lesion, _, _ = mask_from_infer_response(undone.value)
    assert lesion.sum() > 0

    # 3. a second structure from a box (dragged on the shown slice)
    page.click("#labels li[data-label=organ]")
    page.check("input[name=tool][value=box]")
    rows, cols = np.nonzero(truth[:, :, k2])
    corners = [[int(rows.min()) - 1, int(cols.min()) - 1, k2], [int(rows.max()) + 1, int(cols.max()) + 1, k2]]
    a = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", corners[0])
    b = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", corners[1])
    answer = drag_box(page, a, b)
    organ, _, _ = mask_from_infer_response(answer)
    request = json.loads(form_field(answer.request, "params"))
    assert request["label"] == "organ" and request["foreground"] == []
    roi = request["roi"]
    assert roi[:4] == [corners[0][0], corners[1][0], corners[0][1], corners[1][1]] and roi[4:] == [k2, k2]
    assert organ.sum() > 0
    screenshot(page, f"{prefix}-5-box", shots)

    # 4. save as final
    with page.expect_response(lambda r: "/datastore/label" in r.url, timeout=120_000) as saved:
        page.click("#save")
    wait_idle(page)
    assert saved.value.ok, saved.value.text()
    screenshot(page, f"{prefix}-6-saved", shots)
    assert page.locator(f"#studies li[data-image='{image}'] .tag").inner_text().startswith("final")
    assert not errors, errors
    timings = page.evaluate("[window.medsam2Viewer.state.opening, ...window.medsam2Viewer.state.timings]")
    print(prefix, "click to mask on screen:", timings)
    # the app stored what the page showed, structure by structure, and the page said so
    answer = saved.value.json()
    stored = {s["name"]: s["voxels"] for s in answer["saved"]["structures"]}
    assert stored == {"lesion": int((lesion > 0).sum()), "organ": int((organ > 0).sum())}, stored
    shared = int(((lesion > 0) & (organ > 0)).sum())
    said = page.inner_text("#save-status")
    assert f"lesion ({stored['lesion']} voxels)" in said and f"organ ({stored['organ']} voxels)" in said, said
    if shared:
        assert f"overlap on {shared} voxels" in said, said
    from medsam2_engine.label_structures import label_map_of

    stack = np.stack([lesion > 0, organ > 0], axis=-1)
    return {"lesion": lesion, "organ": organ, "affine": affine, "timings": timings, "stack": stack,
            "expected": label_map_of(stack, [1, 2]), "save_answer": answer, "shared": shared}


def keep_timings(name: str, timings: list, weights: str) -> None:
    REPORTS.mkdir(exist_ok=True)
    path = REPORTS / "viewer_timings.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept[name] = {"measured": time.strftime("%Y-%m-%d %H:%M"), "weights": weights,
                  "click_to_mask_on_screen": timings}
    path.write_text(json.dumps(kept, indent=2))


def final_label_info(server_url: str, image: str) -> dict:
    status, body = get(server_url + "/datastore/?output=all")
    assert status == 200
    return json.loads(body)["objects"][image]["labels"]["final"]["info"]


def form_field(request, name: str) -> str:
    """A field of a captured multipart/form-data request (the page posts FormData)."""
    body = request.post_data_buffer
    assert body is not None, "the request's body was not captured"
    boundary = (request.header_value("content-type") or "").split("boundary=")[1].encode()
    for part in body.split(b"--" + boundary):
        if f'name="{name}"'.encode() in part.split(b"\r\n\r\n", 1)[0]:
            return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0].decode()
    raise AssertionError(f"no field {name} in the request")
