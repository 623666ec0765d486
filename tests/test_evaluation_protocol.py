"""The simulated user's prompts and the metrics, on constructed cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2_eval.baselines import copy_slice_baseline, otsu_box_baseline
from medsam2_eval.clicks import box_prompt, centre_click, centre_of, correction_click, largest_slice
from medsam2_eval.metrics import dice, scores, summary, surface_dice


def cube(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def test_box_is_tight_on_the_largest_slice():
    ref = np.zeros((30, 20, 8), bool)
    ref[5:10, 4:7, 2] = True  # 15 voxels
    ref[3:12, 2:9, 5] = True  # 63 voxels: the largest slice
    assert largest_slice(ref) == 5
    box = box_prompt(ref)
    assert (box.i0, box.j0, box.i1, box.j1, box.k) == (3, 2, 11, 8, 5)


def test_centre_click_is_inside_a_crescent():
    ii, jj = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    outer = (ii - 30) ** 2 + (jj - 30) ** 2 <= 20**2
    inner = (ii - 30) ** 2 + (jj - 38) ** 2 <= 16**2
    ref = np.zeros((60, 60, 3), bool)
    ref[:, :, 1] = outer & ~inner
    click = centre_click(ref)
    assert click.positive and click.k == 1
    assert ref[int(click.i), int(click.j), 1]  # the centroid (30, ~25) would be outside the crescent
    assert not ref[30, 30, 1]


def test_centre_of_a_block_is_its_middle_even_at_the_image_border():
    region = cube((20, 20), (0, 0), (7, 20))  # touches three borders
    i, j = centre_of(region)
    assert i == 3 and 8 <= j <= 11


def test_correction_clicks_the_largest_error_positive_then_negative():
    ref = cube((40, 40, 10), (5, 5, 2), (25, 25, 8))
    pred = ref.copy()
    pred[5:25, 5:12, 2:8] = False  # a missed block of 20*7*6 = 840 voxels
    pred[30:34, 30:34, 0:3] = True  # a leaked block of 48 voxels
    first = correction_click(pred, ref)
    assert first.false_negative and first.click.positive and first.region_voxels == 840
    assert 5 <= first.click.i < 25 and 5 <= first.click.j < 12 and 2 <= first.click.k < 8
    assert not pred[int(first.click.i), int(first.click.j), first.click.k]
    pred[5:25, 5:12, 2:8] = True  # fixed: the leak is now the largest error
    second = correction_click(pred, ref)
    assert not second.click.positive and second.region_voxels == 48
    assert (30 <= second.click.i < 34) and (30 <= second.click.j < 34) and second.click.k in (0, 1, 2)
    assert correction_click(ref, ref) is None


def test_correction_uses_voxel_spacing_for_the_centre():
    ref = cube((30, 30, 30), (0, 0, 0), (30, 30, 30))
    pred = ref.copy()
    pred[:, :, :] = False
    pred[0:30, 0:30, 0:1] = True
    # anisotropic: k is 10x coarser, so the centre along k is still the middle of the region
    click = correction_click(pred, ref, spacing=(1.0, 1.0, 10.0)).click
    assert 13 <= click.i <= 16 and 13 <= click.j <= 16 and 14 <= click.k <= 16


def test_dice_and_nsd_known_answers():
    ref = cube((20, 20, 20), (5, 5, 5), (15, 15, 15))  # 1000 voxels
    half = cube((20, 20, 20), (5, 5, 5), (15, 15, 10))  # 500 voxels inside it
    assert dice(ref, ref) == pytest.approx(1.0)
    assert dice(half, ref) == pytest.approx(2 * 500 / 1500)
    assert dice(np.zeros_like(ref), ref) == 0.0
    assert surface_dice(ref, ref, (1, 1, 1), 1.0) == pytest.approx(1.0)
    shifted = np.roll(ref, 6, axis=0)  # surfaces 6 voxels apart: nothing within 1 mm, most within 10
    assert surface_dice(shifted, ref, (1, 1, 1), 1.0) < 0.5
    assert surface_dice(shifted, ref, (1, 1, 1), 10.0) == pytest.approx(1.0)
    # the same shift in mm counts differently with a finer spacing
    assert surface_dice(shifted, ref, (0.1, 1, 1), 1.0) == pytest.approx(1.0)
    assert surface_dice(np.zeros_like(ref), ref, (1, 1, 1), 2.0) == 0.0
    assert scores(half, ref, (1, 1, 1), 2.0)["dice"] == pytest.approx(0.66667, abs=1e-4)


def test_summary_ignores_nan():
    s = summary([0.5, float("nan"), 1.0])
    assert s["n"] == 2 and s["mean"] == 0.75 and s["min"] == 0.5


def test_copy_baseline_spans_the_reference_extent():
    ref = np.zeros((10, 10, 9), bool)
    ref[2:6, 2:6, 3:7] = True
    ref[2:8, 2:8, 5] = True
    out = copy_slice_baseline(ref, 5)
    assert out[:, :, 3:7].sum() == 4 * 36 and not out[:, :, :3].any() and not out[:, :, 7:].any()
    assert dice(out, ref) < 1.0


def test_otsu_box_baseline_finds_a_bright_blob_and_a_dark_one():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 5, (40, 40, 6)).astype(np.float32)
    ref = cube(image.shape, (10, 12, 1), (22, 26, 5))
    image[ref] += 100
    box = box_prompt(ref)
    grown = type(box)(box.i0 - 3, box.j0 - 3, box.i1 + 3, box.j1 + 3, box.k)
    assert dice(otsu_box_baseline(image, grown), ref) > 0.95
    assert dice(otsu_box_baseline(-image, grown), ref) > 0.95  # the side of the threshold follows the centre


def test_per_case_windows_from_a_table(tmp_path):
    import numpy as np

    from medsam2_engine.volume_io import Volume
    from medsam2_eval.cases import Case
    from medsam2_eval.cli import apply_windows, read_windows

    table = tmp_path / "windows.csv"
    table.write_text("case,low,high\nlesion_a,-175,275\n004_02_01_123,-1350,150\nnobody,0,1\n")
    windows = read_windows(str(table))
    cases = [Case("lesion_a", Volume(np.zeros((4, 4, 2)), np.eye(4))),
             Case("ds__004_02_01_123", Volume(np.zeros((4, 4, 2)), np.eye(4)), source={"image": "/d/004_02_01_123.npz"}),
             Case("other", Volume(np.zeros((4, 4, 2)), np.eye(4)))]
    assert apply_windows(cases, windows) == ["nobody"]
    assert [c.window for c in cases] == [[-175.0, 275.0], [-1350.0, 150.0], None]
    table.write_text("a,300,100\n")
    with pytest.raises(SystemExit, match="low < high"):
        read_windows(str(table))


def test_compare_protocols_reports_every_protocol_and_the_full_passes(small_source):
    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.propagation import EarlyStop
    from medsam2_eval.cli import protocol_variants

    rows = protocol_variants(small_source, get_preset("medsam2"), None, EarlyStop(), compare=True)
    names = [r.name for r in rows]
    assert names[:2] == ["engine_medsam2_reference", "engine_medsam2_full_passes"]
    assert {"engine_medsam2_point_protocol", "engine_sam2_protocol"} <= set(names)
    full = rows[1].volumes.settings.early_stop
    assert not full.exact_stop and rows[0].volumes.settings.early_stop.exact_stop
