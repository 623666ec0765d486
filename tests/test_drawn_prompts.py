"""Drawn prompts in the engine: a stroke becomes points along it, a lasso the slice's mask
prompt, a mask a mask prompt; a locked structure keeps its voxels. Malformed drawings are
refused naming the field. End to end with the phantom-trained small model (plumbing, not
accuracy)."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2_engine.drawn_prompts import (STROKE_POINTS, STROKE_SPACING, parse_lassos, parse_slice_masks,
                                          parse_strokes, polygon_mask, stroke_points)
from medsam2_engine.mask_regions import mask_region
from medsam2_engine.prompts import PromptError

SHAPE = (40, 30, 12)


def test_a_stroke_becomes_points_spaced_along_it_ends_included():
    line = np.array([[2.0, 5.0], [32.0, 5.0], [32.0, 25.0]])  # 50 voxels long, one corner
    points = stroke_points(line)
    assert len(points) == min(STROKE_POINTS, int(np.ceil(50 / STROKE_SPACING)) + 1)
    np.testing.assert_allclose(points[0], line[0])
    np.testing.assert_allclose(points[-1], line[-1])
    gaps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    assert np.all(gaps <= 50 / (len(points) - 1) + 1e-9)  # never farther apart than the arc's share
    assert len(stroke_points(np.array([[4.0, 4.0]]))) == 1  # a dot is one point


def test_strokes_are_checked_and_turned_into_clicks():
    clicks = parse_strokes([{"points": [[2, 3, 4], [20, 3, 4]], "positive": True},
                            {"points": [[5, 5, 4]], "positive": False}], SHAPE)
    assert {c.k for c in clicks} == {4} and [c.positive for c in clicks].count(False) == 1
    for bad, field in (([{"points": [[2, 3, 4], [2, 3, 5]]}], "strokes[0].points"),  # two slices
                       ([{"points": [[2, 3, 40]]}], "strokes[0].points"),  # off the image
                       ([{"points": [[2, 3]]}], "strokes[0].points"),  # not [i, j, k]
                       ([{"points": [[2, 3, 4]], "positive": "yes"}], "strokes[0]"),
                       ("scribble", "strokes")):
        with pytest.raises(PromptError, match=field.replace("[", r"\[").replace("]", r"\]")):
            parse_strokes(bad, SHAPE)


def test_a_lasso_is_the_voxels_whose_centres_lie_inside():
    mask = polygon_mask(np.array([[9.5, 4.5], [19.5, 4.5], [19.5, 9.5], [9.5, 9.5]]), SHAPE[:2])
    expected = np.zeros(SHAPE[:2], bool)
    expected[10:20, 5:10] = True
    np.testing.assert_array_equal(mask, expected)
    [prompt] = parse_lassos([{"slice": 6, "polygon": [[9.5, 4.5], [19.5, 4.5], [19.5, 9.5], [9.5, 9.5]]}], SHAPE)
    assert prompt.k == 6 and prompt.mask.sum() == 50
    for bad, field in (([{"slice": 6, "polygon": [[1, 1], [3, 1]]}], "lasso[0].polygon"),  # two vertices
                       ([{"slice": 6, "polygon": [[1, 1], [50, 1], [3, 3]]}], "lasso[0].polygon"),
                       ([{"slice": 12, "polygon": [[1, 1], [5, 1], [3, 3]]}], "lasso[0].slice"),
                       ([{"slice": 6, "polygon": [[1.1, 1.1], [1.2, 1.1], [1.1, 1.2]]}], "lasso[0].polygon")):
        with pytest.raises(PromptError, match=field.replace("[", r"\[").replace("]", r"\]")):
            parse_lassos(bad, SHAPE)


def test_a_painted_slice_is_its_mask_prompt_and_a_malformed_one_is_refused_naming_it():
    import base64
    import gzip

    painted = np.zeros(SHAPE[:2], bool)
    painted[10:20, 5:9] = True
    painted[12, 20] = True  # a separate dab: the region's box covers both
    [prompt] = parse_slice_masks([{"slice": 3, **mask_region(painted)}], SHAPE)
    assert prompt.k == 3
    np.testing.assert_array_equal(prompt.mask, painted)

    region = mask_region(painted)
    bomb = base64.b64encode(gzip.compress(b"\x01" * 10**7)).decode()
    for bad, field in (([{"slice": 12, **region}], "slice_masks[0].slice"),
                       ([{"slice": 3, **region, "i": [10, 41]}], "slice_masks[0].i"),  # off the image
                       ([{"slice": 3, **region, "j": [5]}], "slice_masks[0].j"),
                       ([{"slice": 3, **region, "data": "not base64!"}], "slice_masks[0].data"),
                       ([{"slice": 3, **region, "data": bomb}], "slice_masks[0].data"),  # inflates past the box
                       ([{"slice": 3, **region, "i": [10, 19]}], "slice_masks[0].data"),  # voxels for another box
                       ([{"slice": 3, **mask_region(np.zeros(SHAPE[:2], bool)), "i": [0, 1], "j": [0, 1],
                          "data": base64.b64encode(gzip.compress(b"\x00")).decode()}], "slice_masks[0]"),  # empty
                       ("painted", "slice_masks")):
        with pytest.raises(PromptError, match=field.replace("[", r"\[").replace("]", r"\]")):
            parse_slice_masks(bad, SHAPE)


def test_a_mask_prompt_segments_the_structure_and_a_lock_keeps_its_voxels(fine_tuned):
    from medsam2_engine.mask_measures import dice
    from medsam2_engine.prompts import Box, LabelPrompts, MaskPrompt
    from medsam2_engine.volume_io import Volume

    segmenter, cases = fine_tuned
    case = cases[1]
    truth = case.labels == 1
    volume = Volume(case.volume.array, case.volume.affine, "")
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    from_mask = segmenter.run(volume, {"lesion": LabelPrompts(masks=[MaskPrompt(k, truth[:, :, k])])},
                              session_key=("mask", "s"))
    result = from_mask.labels["lesion"]
    assert result.protocol == "medsam2_point"  # no box: MedSAM2's point protocol, which gives SAM 2 masks
    assert dice(result.mask, truth) > 0.8, "a mask prompt on the largest slice should find the structure"
    assert len(result.slices) > 1, "the mask prompt should propagate beyond its slice"

    # a box from the same session, with that mask locked: not one voxel of it is taken
    ii, jj = np.nonzero(truth[:, :, k])
    box = Box(ii.min(), jj.min(), ii.max(), jj.max(), k)
    free = segmenter.run(volume, {"other": LabelPrompts(boxes=[box])}, session_key=("mask", "s")).labels["other"]
    locked = segmenter.run(volume, {"other": LabelPrompts(boxes=[box], exclude=result.mask)},
                           session_key=("mask", "s")).labels["other"]
    assert (free.mask & result.mask).any(), "the test needs two overlapping structures"
    assert not (locked.mask & result.mask).any()
    assert locked.locked_out == int((free.mask & result.mask).sum())
    np.testing.assert_array_equal(locked.mask, free.mask & ~result.mask)
