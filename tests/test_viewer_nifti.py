"""The page reads a study as the engine does, and shows it the way radiologists read it.

The page's NIfTI reader (viewer/page/nifti.js) runs in headless Chromium on files nibabel
writes (sform only, qform only with a negative qfac, both disagreeing, scaled integers, the
voxel types a study comes in): its dimensions, affine and real values must be nibabel's,
which the engine's reader uses (tests/test_volume_io.py). Then what the clinician sees: a
bright block on the patient's right and front (or top) is drawn on the screen's left and
upper half, whichever way the file's axes run. The server's side: which stored files go to
the page as they are, and that they arrive byte for byte.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.support.browser import chromium_page, needs_chromium, screenshot  # noqa: F401  (fixture)

PAGE_DIR = Path(__file__).resolve().parents[1] / "apps" / "medsam2" / "viewer" / "page"
ORIGIN = "http://viewer.test"
HOST_PAGE = """<!doctype html><html><body style="margin:0;background:#000">
<canvas id="image" style="width:400px;height:300px;display:block"></canvas></body></html>"""


def _serve_page_files(page) -> None:
    """The page's modules from disk at ORIGIN (no server), and a bare page with one canvas."""
    def answer(route):
        name = route.request.url[len(ORIGIN) + 1:].split("?")[0]
        if name == "host.html":
            return route.fulfill(body=HOST_PAGE, content_type="text/html")
        path = PAGE_DIR / name
        if name.endswith(".js") and path.is_file():
            return route.fulfill(body=path.read_text(), content_type="text/javascript")
        return route.fulfill(status=404, body="")

    page.route(f"{ORIGIN}/**", answer)
    page.goto(f"{ORIGIN}/host.html")


READ = """async (b64) => {
    const { readNifti } = await import('./nifti.js');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const image = readNifti(bytes.buffer);
    return { dims: image.dims, affine: image.affine, values: Array.from(image.voxels, (v) => v * image.slope + image.inter) };
}"""


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ \
        np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])


def _affine(degrees: float, spacing, flip=(1, 1, 1)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation(degrees) @ np.diag(np.multiply(spacing, flip))
    affine[:3, 3] = [-20.5, 33.0, 7.25]
    return affine


def _variants():
    rng = np.random.default_rng(5)
    shape = (5, 4, 3)
    values = rng.integers(-1000, 1000, shape)
    out = {}
    image = nib.Nifti1Image(values.astype(np.int16), _affine(20, (0.7, 0.8, 2.5)))
    image.set_qform(None, code=0)
    out["sform only, int16"] = image
    image = nib.Nifti1Image(values.astype(np.float32) / 3, None)
    image.set_qform(_affine(35, (0.9, 0.6, 3.0), flip=(1, 1, -1)), code=1)  # a left-handed grid: qfac -1
    image.set_sform(None, code=0)
    out["qform only, qfac -1, float32"] = image
    image = nib.Nifti1Image(values.astype(np.float64), _affine(10, (1.0, 1.0, 1.0)))
    image.set_qform(_affine(40, (2.0, 2.0, 2.0)), code=1)
    image.set_sform(_affine(10, (1.0, 1.0, 1.0)), code=2)  # they disagree: the sform wins, as in nibabel
    out["both, sform wins, float64"] = image
    image = nib.Nifti1Image((values + 1000).astype(np.uint16), _affine(0, (0.5, 0.5, 1.0), flip=(-1, -1, 1)))
    image.header.set_slope_inter(0.5, -1024.0)
    out["scaled uint16"] = image
    out["uint8"] = nib.Nifti1Image((values % 200).astype(np.uint8), _affine(5, (1.0, 2.0, 3.0)))
    return out


@needs_chromium
def test_the_page_reads_a_nifti_as_nibabel_does(chromium_page):
    import base64

    page = chromium_page
    _serve_page_files(page)
    for name, image in _variants().items():
        read = page.evaluate(READ, base64.b64encode(image.to_bytes()).decode())
        loaded = nib.Nifti1Image.from_bytes(image.to_bytes())
        assert read["dims"] == list(loaded.shape), name
        np.testing.assert_allclose(np.array(read["affine"]), loaded.affine[:3], atol=1e-4, err_msg=name)
        np.testing.assert_allclose(np.array(read["values"]), loaded.get_fdata().ravel(order="F"), rtol=1e-6,
                                   atol=1e-4, err_msg=name)


# studies whose bright block is at the patient's right, front and top: the page shows slices across
# k, so the block is on the screen's left and top for an axial or coronal series (right, front or
# top) and a sagittal one (front on the left, as Slicer shows it), flipped or tilted
ORIENTATIONS = {
    "axial RAS": np.diag([0.8, 0.8, 2.0, 1.0]),
    "axial LPS-like": np.diag([-0.8, -0.8, 2.0, 1.0]),
    "coronal (k along y)": np.array([[0.8, 0, 0, 0], [0, 0, 2.0, 0], [0, -0.8, 0, 0], [0, 0, 0, 1.0]]),
    "sagittal, tilted 15 degrees": np.array([[0, 0, -2.0, 0], [0.8, 0, 0, 0], [0, 0.8, 0, 0], [0, 0, 0, 1.0]]),
}

SHOW = """async ([b64, slice]) => {
    const { VolumeView } = await import('./view.js');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const view = new VolumeView(document.getElementById('image'));
    view.open(bytes.buffer, { window: [0, 100], slice });
    window.shownView = view;
    await view.drawn();
}"""


def _bright_corner_study(affine: np.ndarray, shape=(24, 20, 16)) -> tuple:
    """A study with one bright block at the patient's right, anterior and superior corner; the
    file slice k through it."""
    voxels = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    ras = voxels @ affine[:3, :3].T + affine[:3, 3]
    # RAS: +x right, +y anterior, +z superior; the block: the top quarter of each
    high = [np.quantile(ras[:, d], 0.75) for d in range(3)]
    inside = np.all(ras > high, axis=1).reshape(shape)
    array = np.where(inside, 100, 0).astype(np.int16)
    k = int(np.argmax(inside.sum(axis=(0, 1))))
    return array, k


@needs_chromium
@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_the_patients_right_and_front_are_on_the_screens_left_and_top(chromium_page, name, tmp_path):
    import base64

    from PIL import Image

    affine = ORIENTATIONS[name]
    if "tilted" in name:
        tilt = np.eye(4)
        tilt[:3, :3] = _rotation(15)
        affine = tilt @ affine
    array, k = _bright_corner_study(affine)
    page = chromium_page
    _serve_page_files(page)
    page.evaluate(SHOW, [base64.b64encode(nib.Nifti1Image(array, affine).to_bytes()).decode(), k])
    canvas = page.locator("#image").bounding_box()
    rgb = np.asarray(Image.open(screenshot(page, f"viewer-orientation-{name}", tmp_path)).convert("L"))
    box = rgb[int(canvas["y"]):int(canvas["y"] + canvas["height"]), int(canvas["x"]):int(canvas["x"] + canvas["width"])]
    ys, xs = np.nonzero(box > 128)
    assert len(xs) > 20, f"{name}: the bright block is not on screen"
    shown = page.evaluate("window.shownView.layout().map(s => [s.start / devicePixelRatio, s.n * s.step / devicePixelRatio])")
    (x0, width), (y0, height) = shown
    assert xs.mean() < x0 + width / 2, f"{name}: the patient's right is drawn on the screen's right"
    assert ys.mean() < y0 + height / 2, f"{name}: the patient's front (or top) is drawn at the bottom"


@pytest.mark.parametrize("case, expected", [("plain", True), ("two members", False), ("big-endian", False),
                                            ("four dimensions", False), ("no affine", False), ("not gzipped", False)])
def test_which_stored_studies_go_to_the_page_as_they_are(tmp_path, case, expected):
    from lib.shown_volumes import sendable_as_stored

    array = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    image = nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0]))
    path = tmp_path / "study.nii.gz"
    if case == "four dimensions":
        image = nib.Nifti1Image(array[..., None].repeat(2, axis=3), np.eye(4))
    if case == "no affine":
        image.set_sform(None, code=0)
        image.set_qform(None, code=0)
    if case == "big-endian":
        image = nib.Nifti1Image(array.astype(">i2"), image.affine, nib.Nifti1Header(endianness=">"))
    raw = image.to_bytes()
    if case == "two members":
        path.write_bytes(gzip.compress(raw[:400]) + gzip.compress(raw[400:]))
    elif case == "not gzipped":
        path = tmp_path / "study.nii"
        path.write_bytes(raw)
    else:
        path.write_bytes(gzip.compress(raw))
    assert nib.load(path).shape[:3] == (4, 3, 2)  # every case is a readable study
    assert sendable_as_stored(str(path)) is expected, json.dumps(case)
