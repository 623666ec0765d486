"""The viewer page on tilted and flipped studies: a click, a box, a mark and the overlay are on the
voxel the clinician sees. Expected voxels come from the screenshots (tests/support/screen_voxels.py),
never from the page's own conversions.

Also the saved label seen again: overlapping structures saved whole, the page told what was
stored, the study reopened with its structures shown, corrected and saved again.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from tests.support import screen_voxels as sv
from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from tests.support.orthanc import needs_orthanc
from tests.support.pacs_app import TCIA_STUDY
from tests.support.viewer_page import LABELS, form_field, get, wait_idle

SHAPE = (40, 34, 9)
STUDIES = {  # image id -> affine: tilted by 10 and 30 degrees, and tilted with flipped axes
    "oblique10": sv.oblique_affine(10),
    "oblique30": sv.oblique_affine(30),
    "oblique30flipped": sv.oblique_affine(30, flip=(-1, 1, -1)),
}


@pytest.fixture(scope="module")
def geometry_server(small_model_files, tmp_path_factory):
    from tests.support.server import RunningServer

    config, _ = small_model_files
    folder = tmp_path_factory.mktemp("geometry")
    studies = folder / "studies"
    studies.mkdir()
    volumes = {}
    for n, (name, affine) in enumerate(STUDIES.items()):
        volumes[name] = sv.level_volume(SHAPE, seed=n)
        nib.save(nib.Nifti1Image(volumes[name], affine), studies / f"{name}.nii.gz")
    server = RunningServer(studies, {"model_config": config, "checkpoint": "random", "labels": ",".join(LABELS)},
                           folder / "server.log")
    try:
        yield server, studies, volumes
    finally:
        server.stop()


# the centre of the green (inside) point marks drawn on the marks layer, in page pixels
MARK_CENTRE = """() => {
    const marks = document.getElementById('marks');
    const rect = marks.getBoundingClientRect();
    const dpr = marks.width / rect.width;
    const d = marks.getContext('2d').getImageData(0, 0, marks.width, marks.height).data;
    let n = 0, sx = 0, sy = 0;
    for (let i = 0; i < d.length; i += 4) {
        if (d[i + 1] > 150 && d[i] < 120 && d[i + 3] > 200) { n++; sx += (i / 4) % marks.width; sy += Math.floor(i / 4 / marks.width); }
    }
    return n ? [rect.left + sx / n / dpr, rect.top + sy / n / dpr] : null;
}"""


def voxel_square(rgb, x: float, y: float) -> tuple:
    """(left, right, top, bottom) of the run of the pointer's grey around it on the screenshot: the
    voxel drawn under the pointer (with any neighbour of the same grey)."""
    xi, yi = int(round(x)), int(round(y))
    grey = rgb[yi, xi, 0]
    left = right = xi
    while left > 0 and rgb[yi, left - 1, 0] == grey:
        left -= 1
    while right < rgb.shape[1] - 1 and rgb[yi, right + 1, 0] == grey:
        right += 1
    top = bottom = yi
    while top > 0 and rgb[top - 1, xi, 0] == grey:
        top -= 1
    while bottom < rgb.shape[0] - 1 and rgb[bottom + 1, xi, 0] == grey:
        bottom += 1
    return left, right, top, bottom


def open_study(page, url: str, image: str, k: int) -> None:
    page.goto(url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{image}']")
    wait_idle(page)
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    sv.fixed_window(page)
    sv.settle(page)


def readable_positions(page, png, n: int = 9) -> list:
    """(x, y, level on screen) where one untinted voxel covers the pointer's neighbourhood."""
    rgb = sv.screen(png)
    out = []
    for x, y in sv.grid(page, n):
        grey = sv.uniform_grey(rgb, x, y)
        if grey is not None:
            out.append((x, y, sv.level_of_grey(grey)))
    return out


def check_positions(page, positions, volume, k, normal: int = 2) -> int:
    """Every position's voxel, as the page would send it, has the level drawn there and lies on the
    shown plane (index ``k`` along file axis ``normal``); returns the count."""
    wrong, checked = [], 0
    for x, y, level in positions:
        voxel = sv.voxel_the_page_sends(page, x, y)
        if voxel is None:
            assert level == 0, f"({x:.0f}, {y:.0f}) shows level {level} but the page says it is off the image"
            continue
        checked += 1
        if voxel[normal] != k or sv.level_of_value(volume[tuple(voxel)]) != level:
            wrong.append(((round(x), round(y)), level, voxel, sv.level_of_value(volume[tuple(voxel)])))
    assert not wrong, f"{len(wrong)} of {checked} positions map to another voxel than the one shown: {wrong[:5]}"
    return checked


@needs_chromium
@pytest.mark.parametrize("normal", [0, 1])
def test_in_the_other_two_planes_the_voxel_under_the_pointer_is_the_voxel_sent(geometry_server, chromium_page,
                                                                              normal, tmp_path):
    """The planes across i and j (coronal and sagittal here) of the tilted, flipped study: the grey
    under each pointer position is the level of the voxel a click there sends, on that plane."""
    server, _, volumes = geometry_server
    image = "oblique30flipped"
    page, volume, k = chromium_page, volumes[image], SHAPE[2] // 2
    open_study(page, server.url, image, k)
    page.evaluate("n => window.medsam2Viewer.showPlane(n)", normal)
    index = page.evaluate("window.medsam2Viewer.view.currentSlice()")
    assert index == SHAPE[normal] // 2  # through the middle of the study
    sv.settle(page)
    positions = readable_positions(page, screenshot(page, f"viewer-geometry-plane{normal}", tmp_path), n=12)
    assert check_positions(page, positions, volume, index, normal) >= 20


@pytest.mark.parametrize("image", list(STUDIES))
def test_the_voxel_under_the_pointer_is_the_voxel_sent(geometry_server, chromium_page, image, tmp_path):
    server, _, volumes = geometry_server
    page, volume, k = chromium_page, volumes[image], SHAPE[2] // 2
    open_study(page, server.url, image, k)
    shot = screenshot(page, f"viewer-geometry-{image}", tmp_path)
    positions = readable_positions(page, shot)
    assert check_positions(page, positions, volume, k) >= 30

    # real clicks: the request carries the voxel drawn under the pointer, and its mark is drawn there
    for n in range(3):
        sv.fixed_window(page)
        sv.settle(page)  # the page may have moved the image since (banner, result panel)
        before = screenshot(page, f"viewer-geometry-{image}-before", tmp_path)
        x, y, level = [p for p in readable_positions(page, before) if p[2] > 0][5 * n]
        square = voxel_square(sv.screen(before), x, y)
        held = []  # the request waits while the marks layer is read: the answer may move the image
        hold = lambda route: held.append(route)  # noqa: E731  (Playwright needs a Python function)
        page.route("**/medsam2/viewer/segment*", hold)
        with page.expect_response(lambda r: "/medsam2/viewer/segment" in r.url, timeout=180_000) as answer:
            page.evaluate("() => window.medsam2Viewer.state.prompts.clear()")  # one mark on the layer
            page.mouse.click(x, y)
            for _ in range(100):
                if held:
                    break
                page.wait_for_timeout(50)
            mark = page.evaluate(MARK_CENTRE)
            held.pop().continue_()
        page.unroute("**/medsam2/viewer/segment*", hold)
        left, right, top, bottom = square
        assert mark and left <= mark[0] <= right and top <= mark[1] <= bottom, \
            f"the point mark {mark} is not on the voxel under the pointer ({x:.0f}, {y:.0f}): {square}"
        wait_idle(page)
        sent = json.loads(form_field(answer.value.request, "params"))["foreground"][-1]
        assert sent[2] == k and sv.level_of_value(volume[tuple(sent)]) == level, (sent, level)
        sv.settle(page)
        # the image may have moved (banner, result panel): the mark moved with its voxel
        at = page.evaluate("v => window.medsam2Viewer.pagePosition(v)", sent)
        assert sv.voxel_the_page_sends(page, *at) == sent
        rgb = sv.screen(screenshot(page, f"viewer-geometry-{image}-click", tmp_path))
        r, g, b = rgb[int(round(at[1])), int(round(at[0]))]
        assert g > 150 and r < 120 and b < 150, f"the mark of {sent} is not drawn on it after the answer: {r, g, b}"
    # the layout changed (result panel, maybe a warning banner): the mapping still holds
    sv.fixed_window(page)
    sv.settle(page)
    shot = screenshot(page, f"viewer-geometry-{image}-after", tmp_path)
    check_positions(page, readable_positions(page, shot), volume, k)

    # a box: its corners are the voxels under the pointer, on the slice shown
    page.click("#labels li[data-label=organ]")
    page.check("input[name=tool][value=box]")
    sv.fixed_window(page)
    sv.settle(page)
    shot = screenshot(page, f"viewer-geometry-{image}-box", tmp_path)
    corners = readable_positions(page, shot, 7)
    (ax, ay, a_level), (bx, by, b_level) = corners[0], corners[-1]
    a, b = sv.voxel_the_page_sends(page, ax, ay), sv.voxel_the_page_sends(page, bx, by)
    with page.expect_response(lambda r: "/medsam2/viewer/segment" in r.url, timeout=180_000) as answer:
        page.mouse.move(ax, ay)
        page.mouse.down()
        page.mouse.move((ax + bx) / 2, (ay + by) / 2)
        page.mouse.move(bx, by)
        page.mouse.up()
    wait_idle(page)
    roi = json.loads(form_field(answer.value.request, "params"))["roi"]
    assert roi[4:] == [k, k] and page.inner_text("#prompt-summary").endswith(f"box on slice {k}")
    assert sorted(roi[0:2]) == sorted([a[0], b[0]]) and sorted(roi[2:4]) == sorted([a[1], b[1]])
    assert [sv.level_of_value(volume[tuple(v)]) for v in (a, b)] == [a_level, b_level]


def put_label(url: str, image: str, array: np.ndarray, affine, params: dict | None = None):
    import requests

    data = nib.Nifti1Image(array, affine).to_bytes()
    return requests.put(f"{url}/datastore/label", params={"image": image, "tag": "final"},
                        files={"label": (f"{image}.nii", data)}, data={"params": json.dumps(params or {})},
                        timeout=120)


@needs_chromium
def test_the_overlay_on_screen_is_the_label_on_a_tilted_study(geometry_server, chromium_page, tmp_path):
    """A saved label of exactly the brightest voxels: on screen it tints those, and only those."""
    server, _, volumes = geometry_server
    image, k = "oblique30flipped", SHAPE[2] // 2
    volume = volumes[image]
    brightest = (volume == volume.max()).astype(np.uint8)
    answer = put_label(server.url, image, brightest, STUDIES[image])
    assert answer.status_code == 200, answer.text
    open_study(chromium_page, server.url, image, k)
    rgb = sv.screen(screenshot(chromium_page, "viewer-geometry-overlay", tmp_path))
    tinted, bright_untinted, dark_tinted = 0, [], []
    for x, y in sv.grid(chromium_page, 15):
        xi, yi = int(round(x)), int(round(y))
        patch = rgb[yi - 2: yi + 3, xi - 2: xi + 3].reshape(-1, 3)
        if np.ptp(patch, axis=0).max() > 3:
            continue  # a voxel edge
        r, g, b = patch[0]
        if r - g > 40:
            tinted += 1
            if b < 150:  # under the tint: not the brightest level (255 * (1 - opacity))
                dark_tinted.append((xi, yi, (r, g, b)))
        elif r > 240 and g > 240:
            bright_untinted.append((xi, yi))
    assert tinted >= 10
    assert not bright_untinted, f"brightest voxels shown without the label: {bright_untinted[:5]}"
    assert not dark_tinted, f"label drawn over other voxels: {dark_tinted[:5]}"


@needs_orthanc
@needs_chromium
@pytest.mark.skipif(not TCIA_STUDY.is_dir(), reason=f"the real oblique MR series is not here ({TCIA_STUDY})")
def test_a_real_oblique_series_from_the_pacs(pacs_server, pacs_studies, chromium_page, tmp_path):  # noqa: F811
    """TCIA PGBM-001 T1post, tilted about 10 degrees, through Orthanc: every readable position's
    grey on screen is the grey of the voxel the page sends for it, in the page's own window."""
    import gzip

    uid = pacs_studies.tcia["T1post"]
    status, body = get(pacs_server.url + f"/medsam2/viewer/volume?image={uid}")
    assert status == 200
    loaded = nib.Nifti1Image.from_bytes(gzip.decompress(body))
    volume = np.asarray(loaded.dataobj).astype(np.float64)
    tilt = np.degrees(np.arccos(np.max(np.abs(loaded.affine[:3, :3] / np.linalg.norm(loaded.affine[:3, :3], axis=0)),
                                       axis=0)))
    assert tilt.max() > 5, f"the series is not oblique ({tilt})"
    page, k = chromium_page, volume.shape[2] // 2
    page.goto(pacs_server.url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{uid}']")
    wait_idle(page)
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    low, high = float(np.percentile(volume, 1)), float(np.percentile(volume, 99))
    page.evaluate("w => window.medsam2Viewer.view.setWindow(w)", [low, high])
    sv.settle(page)
    rgb = sv.screen(screenshot(page, "viewer-geometry-tcia-oblique", tmp_path))
    checked, wrong = 0, []
    for x, y in sv.grid(page, 15):
        grey = sv.uniform_grey(rgb, x, y, radius=1)
        voxel = sv.voxel_the_page_sends(page, x, y)
        if grey is None or voxel is None:
            continue
        expected = float(np.clip((volume[tuple(voxel)] - low) / (high - low), 0, 1) * 255)
        checked += 1
        if voxel[2] != k or abs(grey - expected) > 3:
            wrong.append(((round(x), round(y)), voxel, grey, round(expected)))
    assert checked >= 40  # (the result panel keeps its height below the image, so fewer positions fit)
    assert not wrong, f"{len(wrong)} of {checked} positions show another voxel than the one sent: {wrong[:5]}"


def test_overlapping_structures_are_saved_whole_or_refused(geometry_server):
    """Through a real server: a stack of structures is checked against what the client showed,
    the label map follows the one rule, training reads each structure whole, and a plain label
    map saved later replaces the structures."""
    from medsam2_engine.label_structures import structures_path
    from medsam2_engine.training.cases import CaseFiles, load_case

    server, studies, _ = geometry_server
    image, affine = "oblique10", STUDIES["oblique10"]
    organ = np.zeros(SHAPE, np.uint8)
    organ[5:30, 5:25, 2:7] = 1
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[10:15, 10:14, 3:5] = 1  # inside the organ
    stack = np.stack([lesion, organ], axis=-1)
    info = [{"name": "lesion", "idx": 1, "voxels": int(lesion.sum())}, {"name": "organ", "idx": 2, "voxels": 9}]
    refused = put_label(server.url, image, stack, affine, {"structures": True, "label_info": info})
    assert refused.status_code == 422 and "'organ'" in refused.text and "showed 9" in refused.text, refused.text
    refused = put_label(server.url, image, stack[..., :1], affine, {"structures": True, "label_info": info})
    assert refused.status_code == 422 and "2 structure(s)" in refused.text, refused.text
    final = studies / "labels" / "final" / f"{image}.nii.gz"
    assert not final.exists()

    info[1]["voxels"] = int(organ.sum())
    answer = put_label(server.url, image, stack, affine, {"structures": True, "label_info": info})
    assert answer.status_code == 200, answer.text
    saved = answer.json()["saved"]
    assert [(s["name"], s["voxels"], s["voxels_in_label_map"]) for s in saved["structures"]] == [
        ("lesion", lesion.sum(), lesion.sum()), ("organ", organ.sum(), organ.sum() - lesion.sum())]
    assert saved["overlaps"] == [{"structures": ["lesion", "organ"], "voxels": int(lesion.sum()),
                                  "label_map_keeps": "lesion"}]
    label_map = np.asarray(nib.load(final).dataobj)
    np.testing.assert_array_equal(label_map, np.where(lesion > 0, 1, organ * 2))
    case = load_case(CaseFiles(str(studies / f"{image}.nii.gz"), str(final)))
    assert case.values == [1, 2]
    np.testing.assert_array_equal(case.mask_of(2), organ > 0)  # whole, under the lesion too

    plain = put_label(server.url, image, (organ * 2).astype(np.uint8), affine)
    assert plain.status_code == 200, plain.text
    assert "structures" not in plain.json()["saved"]
    assert not os.path.exists(structures_path(str(final)))
