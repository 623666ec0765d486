"""A correction re-propagates from the corrected slice only until it meets the previous result.

Run with the small model fine-tuned on phantoms (an untrained model's masks never settle,
so nothing would converge and the test would prove nothing).
"""

from __future__ import annotations

import pytest

from medsam2_engine.prompts import Click, LabelPrompts
from medsam2_engine.propagation import CorrectionStop
from medsam2_engine.volume_io import Volume

SHAPE = (40, 32, 24)


@pytest.fixture
def tall_structure():
    """A bright ellipsoid through most of a 24-slice body, like the phantoms the model learnt."""
    from tests.support.trained_small_model import AFFINE, STRUCTURE_HU, body, ellipsoid

    mask = ellipsoid((19, 16, 12), (8, 6, 10), SHAPE)
    array = body(7, SHAPE)
    array[mask] = STRUCTURE_HU
    return Volume(array, AFFINE, "tall"), mask


def _box_then_click(segmenter, volume, truth, key, stop: CorrectionStop):
    from medsam2_engine.mask_measures import box_on_largest_slice

    prompts = LabelPrompts(boxes=[box_on_largest_slice(truth)])
    first = segmenter.run(volume, {"x": prompts}, session_key=key)
    prompts.clicks.append(Click(19, 16, 18, True))  # one more click, six slices away
    second = segmenter.run(volume, {"x": prompts}, session_key=key,
                            options=segmenter.settings.options(correction_stop=stop))
    # the same prompts again with the stop turned off: a locally corrected mask is re-run in full
    again = segmenter.run(volume, {"x": prompts}, session_key=key,
                           options=segmenter.settings.options(correction_stop=CorrectionStop(False)))
    assert again.labels["x"].reused == (not stop.enabled)
    segmenter.memory.drop(key)
    return first.labels["x"], second.labels["x"]


def test_correction_stops_where_it_meets_the_previous_result(fine_tuned, tall_structure):
    from medsam2_engine.mask_measures import dice

    segmenter, _ = fine_tuned
    volume, truth = tall_structure
    first, local = _box_then_click(segmenter, volume, truth, ("stop", "on"), CorrectionStop(True, 0.95, 3))
    _, full = _box_then_click(segmenter, volume, truth, ("stop", "off"), CorrectionStop(enabled=False))
    assert dice(first.mask, truth) > 0.8, "the fine-tuned model should segment the tall phantom"

    depth = SHAPE[2]
    full_slices = sum(p.slices for p in full.passes)
    local_slices = sum(p.slices for p in local.passes)
    # medsam2 protocol: forward from the box slice (12), backward from the last prompt (18), each to the
    # volume's end or to where the exact stop ended it (exact_stop.py)
    forward, backward = full.passes
    assert (forward.start, backward.start) == (12, 18)
    assert forward.last == depth - 1 or forward.ended_detached
    assert backward.last == 0 or backward.ended_detached
    assert full_slices == (forward.last - 12 + 1) + (18 - backward.last + 1) <= (depth - 12) + (18 + 1)
    assert not any(p.converged for p in full.passes)
    assert all(p.start == 18 for p in local.passes) and all(p.converged for p in local.passes)
    assert local_slices <= 2 * (3 + 1) + 1, f"the correction re-ran {local_slices} slices"
    assert local.prompted_slices == [12, 18] and local.mask[:, :, 18].any()
    assert dice(local.mask, full.mask) > 0.97  # the kept slices are what a full pass gives, near enough
    assert set(local.slices) >= set(first.slices)  # every slice the first result reached still has one
