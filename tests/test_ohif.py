"""OHIF, as MONAI Label 0.8.5 serves it at /ohif/, in headless Chromium on a real PACS.

The clinician's steps: open the study, connect the MONAI Label panel, pick ``medsam2_3d``
and a structure under Point Prompts, click the structure, Run; "Clear Points", go to
another slice, click, Run. Every request OHIF sends is captured; each must succeed and
bring a non-empty mask that reaches the viewer (OHIF's labelmap has voxels). Screenshots
of every step go to the test's folder and to reports/screenshots/.
"""

from __future__ import annotations

import json
import time

import numpy as np

from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from tests.support.orthanc import needs_orthanc

pytestmark = [needs_orthanc, needs_chromium]

VOXEL_TO_PAGE = """([i, j]) => {
    const viewport = cornerstone.getEnabledElementByViewportId('mpr-axial').viewport;
    const image = viewport.getImageData().imageData;
    const k = Math.round(image.worldToIndex(viewport.getCamera().focalPoint)[2]);
    const canvas = viewport.worldToCanvas(image.indexToWorld([i, j, k]));
    const box = viewport.element.getBoundingClientRect();
    return {x: box.left + canvas[0], y: box.top + canvas[1], k: k};
}"""
LABELMAP_VOXELS = """() => {
    const volume = services.segmentationService.getLabelmapVolume('1');  // the MONAI Label panel's labelmap
    if (!volume) return 0;
    const data = volume.voxelManager.getCompleteScalarDataArray();
    let count = 0;
    for (let n = 0; n < data.length; n++) if (data[n]) count++;
    return count;
}"""


def read_nrrd(body: bytes, folder) -> np.ndarray:
    import SimpleITK as sitk

    path = folder / f"mask-{time.monotonic_ns()}.nrrd"
    path.write_bytes(body)
    return np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), (2, 1, 0))  # -> [i, j, k]


class InferCapture:
    """OHIF's /infer requests and their answers, as the browser saw them."""

    def __init__(self, page):
        self.calls = []
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, request):
        if "/infer/" in request.url:
            self.calls.append({"url": request.url, "body": request.post_data or "", "sent": time.monotonic()})

    def _response(self, response):
        if "/infer/" in response.url:
            call = next(c for c in reversed(self.calls) if c["url"] == response.url and "status" not in c)
            call.update(status=response.status, seconds=time.monotonic() - call["sent"], content=response.body())

    def params(self, n: int) -> dict:
        body = self.calls[n]["body"]
        return json.loads(body.split('name="params"', 1)[1].split("\r\n\r\n", 1)[1].split("\r\n--", 1)[0])

    def wait(self, page, count: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.calls) >= count and all("status" in c for c in self.calls[:count]):
                return
            page.wait_for_timeout(200)
        raise AssertionError(f"OHIF sent {len(self.calls)} of {count} inference requests in {timeout_s} s")


def run_button(page):
    select = page.locator("select.selectBox:visible").filter(has=page.locator("option[value=medsam2_3d]"))
    return select, select.locator("xpath=ancestor::*[.//button][1]").locator("button", has_text="Run")


def click_voxel(page, i: int, j: int) -> int:
    """Click voxel (i, j) of the slice the axial viewport shows; returns that slice's k."""
    where = page.evaluate(VOXEL_TO_PAGE, [int(i), int(j)])
    page.mouse.move(where["x"], where["y"])
    page.wait_for_timeout(300)
    page.mouse.click(where["x"], where["y"], delay=50)
    page.wait_for_timeout(300)
    return where["k"]


def test_ohif_click_clear_and_click_on_another_slice(pacs_server, pacs_studies, chromium_page, tmp_path):
    page, server = chromium_page, pacs_server
    series = pacs_studies.phantoms["ohif"]
    shots = tmp_path / "screenshots"
    capture = InferCapture(page)
    centre = np.argwhere(series.mask).mean(axis=0).round().astype(int)

    page.goto(f"{server.url}/ohif/monai-label?StudyInstanceUIDs={series.uids['study']}")
    page.get_by_text("Confirm and Hide").click()
    page.wait_for_function("() => window.cornerstone && cornerstone.getEnabledElementByViewportId('mpr-axial')"
                           " && cornerstone.getEnabledElementByViewportId('mpr-axial').viewport.getImageData()",
                           timeout=60_000)
    screenshot(page, "ohif-01-study-open", shots)
    url_box = page.locator("#monailabelServerURL")
    url_box.fill(server.url + "/")
    url_box.press("Tab")
    url_box.locator("xpath=../..").locator("button").first.click()
    page.get_by_text("Point Prompts").click()
    select, run = run_button(page)
    select.select_option("medsam2_3d")
    page.locator("td:visible", has_text="lesion").first.click()
    page.wait_for_timeout(1000)
    screenshot(page, "ohif-02-connected-medsam2_3d-lesion", shots)

    first_slice = click_voxel(page, centre[0], centre[1])
    screenshot(page, "ohif-03-first-click", shots)
    run.click()
    capture.wait(page, 1)
    page.wait_for_timeout(1500)  # OHIF decodes and paints the labelmap
    screenshot(page, "ohif-04-first-mask", shots)
    voxels_after_first = page.evaluate(LABELMAP_VOXELS)

    page.get_by_text("Clear Points", exact=True).click()
    screenshot(page, "ohif-05-points-cleared", shots)
    viewport_box = page.locator("[data-viewport-uid='mpr-axial']").bounding_box()
    page.mouse.move(viewport_box["x"] + viewport_box["width"] / 2, viewport_box["y"] + viewport_box["height"] / 2)
    page.mouse.wheel(0, 200)  # one slice per wheel notch
    page.wait_for_timeout(500)
    second_slice = click_voxel(page, centre[0], centre[1])
    screenshot(page, "ohif-06-click-on-another-slice", shots)
    run.click()
    capture.wait(page, 2)
    page.wait_for_timeout(1500)
    screenshot(page, "ohif-07-corrected-mask", shots)
    voxels_after_second = page.evaluate(LABELMAP_VOXELS)

    for n, call in enumerate(capture.calls):
        print(f"OHIF request {n + 1}: POST {call['url'].split('/infer/', 1)[1]} params {capture.params(n)} -> "
              f"HTTP {call['status']} in {call['seconds']:.2f} s")
    assert [c["status"] for c in capture.calls] == [200, 200], [c["content"][:300] for c in capture.calls]
    assert all(f"/infer/medsam2_3d?image={series.uids['series']}&output=image" in c["url"] for c in capture.calls)
    first, second = capture.params(0), capture.params(1)
    assert first["foreground"] == [[int(centre[0]), int(centre[1]), first_slice]] and first["background"] == []
    assert second_slice != first_slice
    # after "Clear Points" OHIF sends only the new point: every earlier prompt is replaced
    assert second["foreground"] == [[int(centre[0]), int(centre[1]), second_slice]]
    assert {k: first[k] for k in ("result_extension", "result_dtype", "result_compress", "restore_label_idx")} == {
        "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False, "restore_label_idx": False}
    for call in capture.calls:
        mask = read_nrrd(call["content"], tmp_path)
        assert mask.shape == series.mask.shape
        assert (mask > 0).sum() > 0 and ((mask > 0) & series.mask).sum() > 0
    assert voxels_after_first > 0 and voxels_after_second > 0, "OHIF's labelmap stayed empty"
