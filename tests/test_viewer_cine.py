"""A cine loop in the page, end to end in Debian's headless Chromium against the real server: a
real echocardiogram (CAMUS) as a lossless AVI study, its frames on the slider, played at its own
rate; a box on a middle frame carried both ways through time; a correction on another frame;
saved and reopened, with the loop's timing kept beside the label (phantom-trained weights: the
masks prove plumbing, not accuracy)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, needs_shared_data
from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from tests.support.dicom_series import write_cine_dicom
from tests.support.tool_tour import draw, held, position
from tests.support.viewer_page import SEGMENT_ROUTE, final_label_info, form_field, small_model_server, wait_idle

CAMUS = SHARED_DATA / "us_echo_cine_camus" / "patient0001"
FRAME_RATE = 48  # CAMUS's Info_2CH.cfg: 48.4 Hz


def write_loop_avi(path, frames: np.ndarray, rate: int) -> None:
    """``frames`` [i, j, t] (uint8) as a lossless (FFV1) grey AVI: column i, row j of frame t."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[0], frames.shape[1], "gray"
        for t in range(frames.shape[2]):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[:, :, t].T), format="gray")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frames_folder(folder, frames: np.ndarray, timing: dict | None = None) -> None:
    """``frames`` [i, j, t] as one PNG per frame, named so that only natural order is frame order."""
    from PIL import Image

    folder.mkdir()
    for t in range(frames.shape[2]):
        Image.fromarray(np.ascontiguousarray(frames[:, :, t].T)).save(folder / f"frame{t}.png")
    if timing is not None:
        (folder / "frames.json").write_text(json.dumps(timing))


@pytest.fixture(scope="module")
def cine_server(fine_tuned, small_model_files, tmp_path_factory):
    import nibabel as nib

    def write(studies):
        loop = np.asarray(nib.load(CAMUS / "patient0001_2CH_half_sequence.nii.gz").dataobj)
        truth = np.asarray(nib.load(CAMUS / "patient0001_2CH_half_sequence_gt.nii.gz").dataobj) == 1  # LV cavity
        i, j = loop.shape[0] // 2 * 2, loop.shape[1] // 2 * 2  # even sides, as most codecs want
        frames = np.clip(np.rint(loop[:i, :j]), 0, 255).astype(np.uint8)
        write_loop_avi(studies / "echo2ch.avi", frames, FRAME_RATE)
        write_cine_dicom(studies / "echo2ch_dicom.dcm", frames, 1000 / FRAME_RATE)
        write_frames_folder(studies / "echo2ch_frames.frames", frames)  # no frames.json: the timing is unknown
        return frames, truth[:i, :j]

    with small_model_server(fine_tuned, small_model_files, tmp_path_factory.mktemp("viewer-cine"), write) as (server, (frames, truth)):
        yield server, frames, truth


@needs_shared_data
@needs_chromium
@pytest.mark.skipif(not CAMUS.is_dir(), reason="the CAMUS cine loops are not in ../shared/data")
def test_a_cine_loop_plays_is_segmented_both_ways_corrected_saved_and_reopened(cine_server, chromium_page, tmp_path):
    server, frames, truth = cine_server
    page = chromium_page
    shape = frames.shape
    page.goto(server.url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click("#studies li[data-image='echo2ch']")
    wait_idle(page)
    # the frames on the slider, the loop's own rate, no plane across time; a frame as a player shows it
    assert page.evaluate("window.medsam2Viewer.view.dims") == list(shape)
    first, last = position(page, [0, 0, 0]), position(page, [shape[0] - 1, shape[1] - 1, 0])
    assert first[0] < last[0] and first[1] < last[1], "column 0 is not at the left or row 0 not at the top"
    assert page.inner_text("#slice-name") == "Frame" and page.is_visible("#play") and page.is_disabled("#plane")
    assert page.evaluate("window.medsam2Viewer.cine.frameTimeMs") == pytest.approx(1000 / FRAME_RATE, abs=0.01)
    before = page.evaluate("window.medsam2Viewer.view.currentSlice()")
    page.click("#play")
    page.wait_for_function(f"window.medsam2Viewer.view.currentSlice() !== {before}", timeout=10_000)
    page.click("#play")  # pause
    assert not page.evaluate("window.medsam2Viewer.cine.playing")

    # a box around the cavity on a middle frame: the mask goes forward and backward in time
    middle = shape[2] // 2
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", middle)
    page.click("#labels li[data-label=lesion]")
    ii, jj = np.nonzero(truth[:, :, middle])
    answer = draw(page, "box", [position(page, [ii.min(), jj.min(), middle]), position(page, [ii.max(), jj.max(), middle])])
    sent = json.loads(form_field(answer.request, "params"))
    assert sent["roi"][4] == middle
    result = page.evaluate("window.medsam2Viewer.state.results.get('lesion')")
    passes = {p["direction"]: p for p in result["labels"]["lesion"]["passes"]}
    assert passes["forward"]["start"] == middle and passes["backward"]["start"] == middle
    mask = held(page, 1, shape)
    assert mask[:, :, middle].any(), "nothing on the prompted frame"
    summary = page.inner_text("#result-summary") + page.inner_text("#unsure")
    assert " frames (frames " in summary and "slice" not in summary, summary  # the loop's words, not a volume's
    screenshot(page, "viewer-cine-1-box", tmp_path)

    # a correction on another frame: a point inside the cavity there
    later = min(shape[2] - 1, middle + 3)
    ci, cj = np.argwhere(truth[:, :, later]).mean(axis=0).round().astype(int)
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", later)
    page.check("input[name=tool][value=point]")
    with page.expect_response(lambda r: SEGMENT_ROUTE in r.url, timeout=180_000) as clicked:
        page.mouse.click(*position(page, [ci, cj, later]))
    wait_idle(page)
    assert [int(ci), int(cj), later] in json.loads(form_field(clicked.value.request, "params"))["foreground"]
    corrected = held(page, 1, shape)

    # saved on the loop's grid, reopened as it was, with the loop's timing beside the label
    page.click("#save")
    page.wait_for_function("document.getElementById('save-status').textContent.length > 0", timeout=120_000)
    assert "saved" in page.inner_text("#save-status").lower(), page.inner_text("#save-status")
    assert final_label_info(server.url, "echo2ch")["frame_time_ms"] == pytest.approx(1000 / FRAME_RATE, abs=0.01)
    page.reload()
    page.evaluate("window.medsam2Viewer.ready")
    page.click("#studies li[data-image='echo2ch']")
    wait_idle(page)
    np.testing.assert_array_equal(held(page, 1, shape), corrected)


def _open_loop(page, server, image: str):
    page.goto(server.url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{image}']")
    wait_idle(page)
    return page


@needs_shared_data
@needs_chromium
@pytest.mark.skipif(not CAMUS.is_dir(), reason="the CAMUS cine loops are not in ../shared/data")
def test_a_multiframe_dicom_cine_opens_as_a_loop_of_its_frames(cine_server, chromium_page):
    """The same loop as an ultrasound multi-frame DICOM file: its frames, its FrameTime, shown as stored."""
    server, frames, _ = cine_server
    page = _open_loop(chromium_page, server, "echo2ch_dicom")
    shape = frames.shape
    assert page.evaluate("window.medsam2Viewer.view.dims") == list(shape)
    assert page.inner_text("#slice-name") == "Frame" and page.is_visible("#play")
    assert page.evaluate("window.medsam2Viewer.cine.frameTimeMs") == pytest.approx(1000 / FRAME_RATE, abs=0.01)
    first, last = position(page, [0, 0, 0]), position(page, [shape[0] - 1, shape[1] - 1, 0])
    assert first[0] < last[0] and first[1] < last[1], "column 0 is not at the left or row 0 not at the top"


@needs_shared_data
@needs_chromium
@pytest.mark.skipif(not CAMUS.is_dir(), reason="the CAMUS cine loops are not in ../shared/data")
def test_a_folder_of_frames_opens_as_the_loop_and_says_its_frame_time_is_unknown(cine_server, chromium_page):
    server, frames, _ = cine_server
    page = _open_loop(chromium_page, server, "echo2ch_frames")
    assert page.evaluate("window.medsam2Viewer.view.dims") == list(frames.shape)
    assert page.inner_text("#slice-name") == "Frame" and page.is_disabled("#plane")
    assert page.is_visible("#play") and page.is_disabled("#play"), "no frame rate to play at: never a made-up one"
    assert "frame time not known" in page.inner_text("#slice-label")
    k = frames.shape[2] // 2
    shown = page.evaluate("k => { const v = window.medsam2Viewer.view; const [ni, nj] = v.dims;"
                          " return Array.from(v.image.voxels.slice(ni * nj * k, ni * nj * (k + 1))); }", k)
    np.testing.assert_array_equal(np.array(shown).reshape(frames.shape[1], frames.shape[0]).T, frames[:, :, k])
