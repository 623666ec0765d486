"""The page's streamed segmentation (``POST /medsam2/viewer/segment``): what arrives, in which
order, what the page draws of it, and what Stop leaves.

End to end in Debian's headless Chromium against the real server (phantom-trained small
model): the prompted slice's mask comes first, further slices follow as the passes reach
them, the final mask is ``/infer``'s for the same prompts voxel for voxel, only the boxes a
result touched are drawn, and a stopped request leaves the previous mask and
prompts. The engine's and the route's side of a cancel are tested without a browser.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from tests.support.viewer_page import (FLIPPED_AFFINE, SEGMENT_ROUTE, assert_mask_on_screen, drag_box, form_field,
                                       mask_from_infer_response, phantom_server, stream_body, stream_events,
                                       wait_idle)

SHAPE = (40, 32, 24)  # more slices than the structure spans: a pass ends before the volume does


def test_a_region_round_trips_and_an_empty_mask_says_so():
    from medsam2_engine.mask_regions import decode_region, mask_region

    rng = np.random.default_rng(0)
    mask = np.zeros((9, 7, 5), bool)
    mask[2:6, 1:4, 1:3] = rng.random((4, 3, 2)) > 0.3
    region = mask_region(mask)
    assert region["i"] == [2, 6] and region["k"] == [1, 3]
    np.testing.assert_array_equal(decode_region(region, mask.shape), mask)
    assert mask_region(np.zeros((4, 4), bool)) == {"empty": True}
    plane = mask[:, :, 1]
    np.testing.assert_array_equal(decode_region(mask_region(plane), plane.shape), plane)


def test_the_prompted_slice_is_reported_when_sam2_gives_it_and_the_pass_agrees(fine_tuned, monkeypatch):
    """The first preview comes from the prompt's own decoder call, before the pass encodes any memory;
    the forward pass then reports that slice with the same mask."""
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.volume_io import Volume
    from tests.support.trained_small_model import phantom

    segmenter, _ = fine_tuned
    array, truth = phantom(seed=12, shape=SHAPE)
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    ii, jj = np.nonzero(truth[:, :, k])
    prompts = {"lesion": LabelPrompts(boxes=[Box(ii.min(), jj.min(), ii.max(), jj.max(), k)])}
    model = segmenter.models.get().model
    events = []
    encode_memory = type(model)._encode_new_memory
    monkeypatch.setattr(type(model), "_encode_new_memory",
                        lambda self, *a, **kw: (events.append("memory"), encode_memory(self, *a, **kw))[1])
    with segmenter.open(("tab", "prompted-first"), Volume(array, FLIPPED_AFFINE)) as session:
        segmenter.segment(session, prompts, on_slice=lambda p: events.append(p))
    previews = [e for e in events if e != "memory"]
    assert events[0] is previews[0] and previews[0].k == k, "the prompted slice came after a memory encoding"
    assert previews[1].k == k and previews[1].direction == "forward"
    np.testing.assert_array_equal(previews[0].mask, previews[1].mask)


def test_a_cancelled_propagation_drops_the_label_and_the_next_request_starts_from_its_prompts(fine_tuned):
    from medsam2_engine.prompts import Click, LabelPrompts
    from medsam2_engine.propagation import Cancelled
    from medsam2_engine.volume_io import Volume
    from tests.support.trained_small_model import phantom

    segmenter, _ = fine_tuned
    array, truth = phantom(seed=12, shape=SHAPE)
    volume = Volume(array, FLIPPED_AFFINE)
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    ii, jj = np.nonzero(truth[:, :, k])
    prompts = {"lesion": LabelPrompts(clicks=[Click(int(ii.mean()), int(jj.mean()), k, True)])}
    seen = []

    def stop_at_the_second_slice(preview):
        seen.append(preview)
        if len(seen) == 2:
            raise Cancelled("stop")

    with segmenter.open(("tab", "cancel"), volume) as session:
        with pytest.raises(Cancelled):
            segmenter.segment(session, prompts, on_slice=stop_at_the_second_slice)
        assert "lesion" not in session.tracks  # neither the old state nor the new one is kept
        assert seen[0].k == k and seen[0].step == 1  # the prompted slice came first
        again = segmenter.segment(session, prompts)
    fresh = segmenter.run(volume, prompts, session_key=("tab", "fresh"))
    np.testing.assert_array_equal(again.labels["lesion"].mask, fresh.labels["lesion"].mask)


def test_a_stream_whose_page_left_stops_at_its_next_slice(fine_tuned):
    from lib.http.segment_stream import _END, SegmentRun
    from medsam2_engine.volume_io import Volume
    from tests.support.trained_small_model import phantom

    segmenter, _ = fine_tuned
    array, truth = phantom(seed=12, shape=SHAPE)
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    ii, jj = np.nonzero(truth[:, :, k])

    class Task:  # Interactive3D's two calls the stream makes, on the fixture's segmenter
        def answering(self, call):
            return call()

        def segment(self, request, on_slice):
            from medsam2_engine.prompts import Click, LabelPrompts

            prompts = {"lesion": LabelPrompts(clicks=[Click(int(ii.mean()), int(jj.mean()), k, True)])}
            with segmenter.open(("tab", "left"), Volume(array, FLIPPED_AFFINE)) as session:
                return segmenter.segment(session, prompts, on_slice=on_slice), []

    run = SegmentRun(Task(), {}, lambda out, request: out)
    run.cancelled.set()  # the page closed the connection
    run._run()
    assert run.events.get_nowait() is _END  # no slice, no final: nothing answered
    session = segmenter.memory.get(("tab", "left"))  # a first request stopped: no session is kept
    assert session is None or "lesion" not in session.tracks


@pytest.fixture(scope="module")
def stream_server(fine_tuned, small_model_files, tmp_path_factory):
    with phantom_server(fine_tuned, small_model_files, tmp_path_factory.mktemp("viewer-stream"), 12, SHAPE) as running:
        yield running


@needs_chromium
def test_the_page_streams_a_result_and_stop_keeps_the_previous_mask(stream_server, chromium_page, tmp_path):
    server, truth = stream_server
    page = chromium_page
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click("#studies li[data-image='phantom12']")
    wait_idle(page)
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    ii, jj = np.nonzero(truth[:, :, k])
    inside = [int(round(ii.mean())), int(round(jj.mean())), k]
    sent_before = page.evaluate("(window.medsam2Viewer.view.sent || []).length")

    page.check("input[name=tool][value=box]")  # a box: MedSAM2's protocol, whose passes end with the structure
    rows, cols = np.nonzero(truth[:, :, k])
    a, b = (page.evaluate("v => window.medsam2Viewer.pagePosition(v)", [int(r), int(c), k])
            for r, c in ((rows.min() - 1, cols.min() - 1), (rows.max() + 1, cols.max() + 1)))
    answer = drag_box(page, a, b)
    events = stream_events(stream_body(answer))
    slices = [data for name, data in events if name == "slice"]
    assert [name for name, _ in events][-1] == "final"
    assert slices[0]["slice"] == k and slices[0]["step"] == 1, "the prompted slice's mask comes first"
    reached = sorted({d["slice"] for d in slices})
    assert len(reached) >= 3 and {"forward", "backward"} <= {d["pass"] for d in slices}
    assert [d["seconds"] for d in slices] == sorted(d["seconds"] for d in slices)
    assert len(reached) < SHAPE[2], "the passes should end where the structure does (exact stop)"
    mask, affine, result = mask_from_infer_response(answer)
    np.testing.assert_allclose(affine, FLIPPED_AFFINE, atol=1e-5)
    assert mask[tuple(inside)] and result["labels"]["lesion"]["voxels"] == int((mask > 0).sum())

    # the same prompts through /infer, in another session: the same voxels
    request = json.loads(form_field(answer.request, "params"))
    infer = requests.post(f"{server.url}/infer/medsam2_3d", params={"image": "phantom12", "output": "image"},
                          files={"params": (None, json.dumps({**request, "client_id": "another-tab",
                                                              "result_extension": ".nii.gz"}))}, timeout=300)
    assert infer.ok, infer.text
    path = tmp_path / "infer.nii.gz"
    path.write_bytes(infer.content)
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj) > 0, mask > 0)

    # the page holds exactly that mask and shows it; only boxes within the slices reached were sent
    held = np.array(page.evaluate("Array.from(window.medsam2Viewer.state.masks.get(1).voxels)"), np.uint8)
    np.testing.assert_array_equal(held.reshape(SHAPE, order="F") > 0, mask > 0)
    shown = screenshot(page, "viewer-stream-1-final", tmp_path)
    assert_mask_on_screen(page, shown, mask > 0, k)
    boxes = page.evaluate("window.medsam2Viewer.view.sent")[sent_before:]
    assert boxes, "nothing reached the drawing"
    for (x0, x1), (y0, y1), (z0, z1) in boxes:  # label boxes [i, j, k]: k within the slices reached
        assert reached[0] <= z0 < z1 <= reached[-1] + 1, (boxes, reached)
    timing = page.evaluate("window.medsam2Viewer.state.timings.slice(-1)[0]")
    assert 0 < timing["prompted_ms"] <= timing["ms"]

    # a correction held on its way to the server, then Stop: the mask and prompts are as before
    held_routes = []
    hold = lambda route: held_routes.append(route)  # noqa: E731  (Playwright needs a Python function)
    page.route("**/medsam2/viewer/segment*", hold)
    page.check("input[name=tool][value=point]")
    page.mouse.click(*page.evaluate("v => window.medsam2Viewer.pagePosition(v)", [3, 3, k]))  # a point off it
    for _ in range(100):
        if held_routes:
            break
        page.wait_for_timeout(50)
    assert held_routes and page.is_visible("#stop")
    page.click("#stop")
    wait_idle(page)
    try:
        held_routes.pop().abort()
    except Exception:  # noqa: BLE001 - the page has already given the request up
        pass
    page.unroute("**/medsam2/viewer/segment*", hold)
    assert "stopped" in page.inner_text("#status")
    after = np.array(page.evaluate("Array.from(window.medsam2Viewer.state.masks.get(1).voxels)"), np.uint8)
    np.testing.assert_array_equal(after, held)
    assert page.evaluate("window.medsam2Viewer.state.prompts.get('lesion').edits.length") == 1
    assert_mask_on_screen(page, screenshot(page, "viewer-stream-2-stopped", tmp_path), mask > 0, k)
    assert not errors, errors
    assert SEGMENT_ROUTE in answer.url
