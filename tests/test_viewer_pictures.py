"""Pictures in the page, end to end in Debian's headless Chromium against the real server: a
colour photograph shown in its colours (checked on the screenshot at known pixels), segmented by
SAM 2's image predictor (the /infer/medsam2_2d path) from a box and a correction, saved and
reopened; a real grey CT slice (SAM-Med2D's demo) from a click (phantom-trained weights: the
masks prove plumbing, not accuracy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATA, needs_shared_data
from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)
from medsam2_engine.mask_regions import parse_region
from tests.support.tool_tour import brush_stroke, draw, held, position
from tests.support.viewer_page import LABELS, SEGMENT_ROUTE, form_field, small_model_server, stream_body, stream_events, wait_idle

SAMMED2D = SHARED_DATA / "images_2d_sammed2d" / "images"
DICOM_CT_SLICE = SHARED_DATA / "ct_3slice_dcmqi" / "01.dcm"
DISC = (70, 40, 18)  # centre column, centre row, radius of the red disc


def photo() -> np.ndarray:
    """[row, column, RGB]: a light red disc on a dark blue ground with a yellow square, 96 x 128."""
    rows, cols = np.mgrid[0:96, 0:128]
    image = np.zeros((96, 128, 3), np.uint8)
    image[...] = (10, 30, 50)
    image[(cols - DISC[0]) ** 2 + (rows - DISC[1]) ** 2 <= DISC[2] ** 2] = (240, 120, 110)
    image[60:85, 10:40] = (230, 210, 40)
    return image


def write_dicom_picture(path, rgb: np.ndarray) -> None:
    """A one-frame colour DICOM (ophthalmic photography, as a fundus camera stores it): [row, column, RGB]."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = generate_uid(), ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = "MEDSAM2-PHOTO", "OP"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, np.uint8).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    pydicom.dcmwrite(str(path), ds)


@pytest.fixture(scope="module")
def picture_server(fine_tuned, small_model_files, tmp_path_factory):
    def write(studies):
        Image.fromarray(photo()).save(studies / "photo.png")
        Image.fromarray(photo()).save(studies / "photo_bmp.bmp")
        Image.fromarray(photo()).save(studies / "photo_tif.tiff")
        write_dicom_picture(studies / "photo_dicom.dcm", photo())
        if DICOM_CT_SLICE.is_file():  # a real one-frame DICOM: one CT slice (dcmqi's example)
            (studies / "ct_slice.dcm").write_bytes(DICOM_CT_SLICE.read_bytes())
        grey = sorted(SAMMED2D.glob("*.png"))[:1] if SAMMED2D.is_dir() else []
        for path in grey:
            (studies / path.name).write_bytes(path.read_bytes())
        return [p.stem for p in grey]

    with small_model_server(fine_tuned, small_model_files, tmp_path_factory.mktemp("viewer-pictures"), write) as running:
        yield running


def _open(page, url: str, image: str):
    page.goto(url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    page.click(f"#studies li[data-image='{image}']")
    wait_idle(page)


@needs_chromium
def test_a_colour_photo_is_shown_in_colour_segmented_corrected_saved_and_reopened(picture_server, chromium_page,
                                                                                   tmp_path):
    server, _ = picture_server
    page = chromium_page
    _open(page, server.url, "photo")
    shape = (128, 96, 1)  # [column i, row j, 1]
    assert page.evaluate("window.medsam2Viewer.view.dims") == list(shape)
    assert page.is_disabled("#slice") and page.is_disabled("#plane") and page.is_disabled("#window")
    # as the file shows it (not as a patient's axial slice): column 0 at the left, row 0 at the top
    first, last = position(page, [0, 0, 0]), position(page, [shape[0] - 1, shape[1] - 1, 0])
    assert first[0] < last[0] and first[1] < last[1], "the photo is shown mirrored or upside down"
    png = screenshot(page, "viewer-picture-1-photo", tmp_path)
    shot = Image.open(png).convert("RGB")
    source = photo()
    for i, j in ((DISC[0], DISC[1]), (25, 72), (5, 5)):  # the disc, the yellow square, the ground
        x, y = position(page, [i, j, 0])
        assert np.abs(np.array(shot.getpixel((round(x), round(y)))) - source[j, i]).max() <= 3, (i, j)

    page.click("#labels li[data-label=lesion]")
    c, r, radius = DISC
    answer = draw(page, "box", [position(page, [c - radius - 2, r - radius - 2, 0]),
                                position(page, [c + radius + 2, r + radius + 2, 0])])
    event = dict(stream_events(stream_body(answer)))["final"]
    final = event["result"]
    assert final["dimension"] == 2 and final["labels"]["lesion"]["slices"][0]["object_score"] is None
    # the page holds exactly the image predictor's mask (phantom weights: it need not be the disc)
    np.testing.assert_array_equal(held(page, 1, shape), parse_region(event["labels"]["lesion"]["mask"], shape, "mask"))
    sent = json.loads(form_field(answer.request, "params"))
    assert sent["roi"][:4] == [c - radius - 2, c + radius + 2, r - radius - 2, r + radius + 2]

    # a correction: the ground beside the disc is outside
    page.check("input[name=tool][value=point]")
    with page.expect_response(lambda resp: SEGMENT_ROUTE in resp.url, timeout=180_000) as clicked:
        page.keyboard.down("Shift")
        page.mouse.click(*position(page, [5, 5, 0]))
        page.keyboard.up("Shift")
    wait_idle(page)
    assert [5, 5, 0] in json.loads(form_field(clicked.value.request, "params"))["background"]
    assert not held(page, 1, shape)[5, 5, 0]
    # the manual brush paints the disc's middle row as drawn, with no request
    page.select_option("#brush-mode", "manual")
    requests = []
    page.on("request", lambda req: requests.append(req.url) if SEGMENT_ROUTE in req.url else None)
    assert brush_stroke(page, "brush", [c - 8, r, 0], [c + 8, r, 0], requests) == 0
    corrected = held(page, 1, shape)
    assert corrected[c - 8:c + 9, r, 0].all()

    page.click("#save")
    page.wait_for_function("document.getElementById('save-status').textContent.length > 0"
                           " || document.getElementById('status').dataset.state === 'error'", timeout=120_000)
    assert "saved" in page.inner_text("#save-status").lower(), page.inner_text("#status")
    _open(page, server.url, "photo")
    np.testing.assert_array_equal(held(page, 1, shape), corrected)


@needs_shared_data
@needs_chromium
@pytest.mark.skipif(not SAMMED2D.is_dir(), reason="SAM-Med2D's demo slices are not in ../shared/data")
def test_a_real_grey_slice_opens_as_a_picture_and_a_click_segments_it(picture_server, chromium_page):
    server, grey = picture_server
    page = chromium_page
    _open(page, server.url, grey[0])
    array = np.asarray(Image.open(SAMMED2D / f"{grey[0]}.png").convert("L")).T  # [column, row]
    shape = (*array.shape, 1)
    assert page.evaluate("window.medsam2Viewer.view.dims") == list(shape)
    assert page.evaluate("window.medsam2Viewer.view.image.rgb") is None
    page.click("#labels li[data-label=organ]")
    page.check("input[name=tool][value=point]")
    i, j = array.shape[0] // 2, array.shape[1] // 2
    with page.expect_response(lambda resp: SEGMENT_ROUTE in resp.url, timeout=180_000) as clicked:
        page.mouse.click(*position(page, [i, j, 0]))
    wait_idle(page)
    final = dict(stream_events(stream_body(clicked.value)))["final"]
    assert final["shape"] == list(shape) and final["result"]["dimension"] == 2
    assert held(page, 2, shape).sum() == final["result"]["labels"]["organ"]["voxels"]


@needs_chromium
def test_bmp_tiff_and_one_frame_dicom_pictures_open_in_colour_as_the_file_shows_them(picture_server, chromium_page,
                                                                                     tmp_path):
    server, _ = picture_server
    page = chromium_page
    source = photo()
    for image in ("photo_bmp", "photo_tif", "photo_dicom"):
        _open(page, server.url, image)
        assert page.evaluate("window.medsam2Viewer.view.dims") == [128, 96, 1], image
        shot = Image.open(screenshot(page, f"viewer-picture-{image}", tmp_path)).convert("RGB")
        for i, j in ((DISC[0], DISC[1]), (25, 72), (5, 5)):
            x, y = position(page, [i, j, 0])
            assert np.abs(np.array(shot.getpixel((round(x), round(y)))) - source[j, i]).max() <= 3, (image, i, j)


@needs_shared_data
@needs_chromium
@pytest.mark.skipif(not DICOM_CT_SLICE.is_file(), reason="dcmqi's CT slices are not in ../shared/data")
def test_a_real_one_frame_dicom_is_a_picture_segmented_by_the_image_model_and_saved_as_png(picture_server,
                                                                                            chromium_page):
    import pydicom

    server, _ = picture_server
    page = chromium_page
    _open(page, server.url, "ct_slice")
    pixels = pydicom.dcmread(DICOM_CT_SLICE).pixel_array  # [row, column]
    shape = (pixels.shape[1], pixels.shape[0], 1)
    assert page.evaluate("window.medsam2Viewer.view.dims") == list(shape)
    page.click("#labels li[data-label=organ]")
    page.check("input[name=tool][value=point]")
    with page.expect_response(lambda resp: SEGMENT_ROUTE in resp.url, timeout=180_000) as clicked:
        page.mouse.click(*position(page, [shape[0] // 2, shape[1] // 2, 0]))
    wait_idle(page)
    final = dict(stream_events(stream_body(clicked.value)))["final"]
    assert final["result"]["dimension"] == 2 and final["shape"] == list(shape)  # SAM 2's image predictor
    shown = held(page, 2, shape)
    assert shown.sum() == final["result"]["labels"]["organ"]["voxels"] > 0
    page.click("#save")
    page.wait_for_function("document.getElementById('save-status').textContent.length > 0"
                           " || document.getElementById('status').dataset.state === 'error'", timeout=120_000)
    assert "saved" in page.inner_text("#save-status").lower(), page.inner_text("#status")
    saved = sorted((server.log_path.parent / "studies" / "labels" / "final").glob("ct_slice.*"))  # small_model_server
    assert [p.suffix for p in saved] == [".png"], saved  # as MONAI Label keeps a 2D label
    np.testing.assert_array_equal(np.asarray(Image.open(saved[0])).T[:, :, None] == 2, shown)


def test_a_picture_label_saved_as_a_0_255_mask_reopens_as_the_first_structure(tmp_path):
    """A PNG mask as MONAI Label's 2D apps keep it (0/255, the sample data's skin lesion) is the
    structure of value 1 in the page, as fine-tuning reads it, not an unknown 'label 255'."""
    from lib.datastores.saved_structures import saved_label_structures

    mask = np.zeros((96, 128), np.uint8)  # [row, column]
    mask[20:40, 50:90] = 255
    Image.fromarray(mask).save(tmp_path / "photo.png")
    stack, _, entries = saved_label_structures(str(tmp_path / "photo.png"), {}, LABELS)
    assert entries == [{"name": LABELS[0], "idx": 1}]
    np.testing.assert_array_equal(stack[:, :, 0, 0], mask.T > 0)  # [column i, row j]


@needs_chromium
def test_an_error_keeps_the_numbers_in_its_words_and_drops_only_status_codes(picture_server, chromium_page):
    """A refusal naming a grid (128 x 96 x 1) reached the clinician as '[, 96, 1]': the page took every
    number from 100 to 599 for an HTTP status."""
    server, _ = picture_server
    page = chromium_page
    page.goto(server.url + "/medsam2/viewer/")
    said = page.evaluate("""async () => {
        const { plainDetail } = await import('./api.js');
        return [plainDetail(422, 'label: declares a grid of 128 x 96 x 1 voxels; its image is 512 x 512'),
                plainDetail(409, '409: HTTP 409 the label changed'), plainDetail(500, 'Traceback 123')];
    }""")
    assert said[0] == "label: declares a grid of 128 x 96 x 1 voxels; its image is 512 x 512"
    assert said[1] == "the label changed"
    assert "123" not in said[2] and "error" in said[2]  # a server error: the plain words, never its text
