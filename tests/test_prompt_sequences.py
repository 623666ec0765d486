"""No prompt sequence can break a session: random edit sequences against the engine.

Clients resend every prompt each time (OHIF, Slicer); the edits below are what a user does
between two requests. Each step must give a mask of the volume's shape or a PromptError,
never another exception, and the session must stay usable.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
from medsam2_engine.prompts import Box, Click, LabelPrompts, PromptError
from tests.conftest import make_volume

SHAPE = (24, 20, 8)
LABELS = ("organ", "lesion")


@pytest.fixture(scope="module")
def volume():
    return make_volume(SHAPE, seed=3)


@pytest.fixture(scope="module")
def segmenters(small_source):
    return {p: VolumeSegmenter(small_source, EngineSettings(protocol=p)) for p in ("medsam2", "sam2")}


coordinate = st.tuples(st.integers(0, SHAPE[0] - 1), st.integers(0, SHAPE[1] - 1), st.integers(0, SHAPE[2] - 1))
edits = st.one_of(
    st.tuples(st.just("click"), coordinate, st.booleans()),
    st.tuples(st.just("same_click_again"), st.none(), st.none()),
    st.tuples(st.just("box"), coordinate, st.integers(2, 10)),
    st.tuples(st.just("undo"), st.none(), st.none()),
    st.tuples(st.just("clear"), st.none(), st.none()),
    st.tuples(st.just("replace"), coordinate, st.booleans()),
    st.tuples(st.just("switch_label"), st.none(), st.none()),
    st.tuples(st.just("reset_label"), st.none(), st.none()),
)


def _apply(edit, prompts: LabelPrompts, history: list) -> tuple:
    """The label's prompts after one user edit; returns (prompts, reset this label)."""
    kind, where, extra = edit
    if kind == "click":
        prompts.clicks.append(Click(float(where[0]), float(where[1]), where[2], extra))
        history.append("click")
    elif kind == "same_click_again" and prompts.clicks:
        prompts.clicks.append(prompts.clicks[-1])
        history.append("click")
    elif kind == "box":
        i, j, k = where
        prompts.boxes.append(Box(float(i), float(j), float(min(i + extra, SHAPE[0] - 1)),
                                 float(min(j + extra, SHAPE[1] - 1)), k))
        history.append("box")
    elif kind == "undo" and history:
        last = history.pop()
        if last == "click" and prompts.clicks:
            prompts.clicks.pop()
        elif last == "box" and prompts.boxes:
            prompts.boxes.pop()
    elif kind == "clear":
        prompts, history[:] = LabelPrompts(), []
    elif kind == "replace":
        prompts, history[:] = LabelPrompts(clicks=[Click(float(where[0]), float(where[1]), where[2], extra)]), ["click"]
    return prompts, kind == "reset_label"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(protocol=st.sampled_from(["medsam2", "sam2"]), sequence=st.lists(edits, min_size=1, max_size=6),
       session=st.integers(0, 10**9))
def test_any_edit_sequence_gives_a_mask_or_a_prompt_error(segmenters, volume, protocol, sequence, session):
    segmenter = segmenters[protocol]
    key = ("fuzz", session)
    prompts = {label: LabelPrompts() for label in LABELS}
    history = {label: [] for label in LABELS}
    label = LABELS[0]
    try:
        for edit in sequence:
            if edit[0] == "switch_label":
                label = LABELS[1] if label == LABELS[0] else LABELS[0]
                continue
            prompts[label], reset = _apply(edit, prompts[label], history[label])
            try:
                result = segmenter.run(volume, {label: prompts[label]}, key,
                                           reset_labels=(label,) if reset else ())
            except PromptError:
                continue
            out = result.labels[label]
            assert out.mask.shape == SHAPE and out.mask.dtype == bool
            assert not result.warnings, result.warnings  # no track had to be dropped after a failure
            if prompts[label].is_empty():
                assert not out.mask.any()
    finally:
        segmenter.memory.drop(key)


@pytest.mark.parametrize("protocol", ["medsam2", "sam2"])
def test_clear_then_a_click_on_another_slice_starts_the_label_afresh(small_source, protocol):
    """OHIF's "Clear Points" then a click elsewhere: sam2 used to assert and the session stayed broken."""
    volume = make_volume((40, 28, 16), seed=4)
    segmenter = VolumeSegmenter(small_source, EngineSettings(protocol=protocol))
    first = LabelPrompts(clicks=[Click(13, 15, 12, True)])
    second = LabelPrompts(clicks=[Click(14, 15, 11, True)])
    segmenter.run(volume, {"lesion": first}, ("ohif",))
    after = segmenter.run(volume, {"lesion": second}, ("ohif",)).labels["lesion"]
    fresh = segmenter.run(volume, {"lesion": second}, ("fresh",)).labels["lesion"]
    assert after.restarted and "new track" in after.restarted
    np.testing.assert_array_equal(after.mask, fresh.mask)
    again = segmenter.run(volume, {"lesion": LabelPrompts(clicks=second.clicks + [Click(20, 12, 11, False)])},
                              ("ohif",)).labels["lesion"]
    assert again.mask.shape == volume.array.shape and again.restarted is None


def test_a_failure_inside_a_label_drops_its_track_and_says_so(small_source, monkeypatch):
    import medsam2_engine.tracks as tracks_module

    volume = make_volume((24, 20, 8), seed=5)
    segmenter = VolumeSegmenter(small_source, EngineSettings(protocol="sam2"))
    prompts = LabelPrompts(clicks=[Click(10, 9, 4, True)])
    segmenter.run(volume, {"organ": prompts}, ("broken",))
    original = tracks_module.propagate_both_ways
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise AssertionError('len(output_dict["cond_frame_outputs"]) > 0')
        return original(*args, **kwargs)

    monkeypatch.setattr(tracks_module, "propagate_both_ways", fails_once)
    prompts.clicks.append(Click(12, 9, 5, True))
    result = segmenter.run(volume, {"organ": prompts}, ("broken",))
    out = result.labels["organ"]
    assert out.restarted.startswith("error") and "AssertionError" in out.restarted
    assert result.warnings and "organ" in result.warnings[0]
    fresh = segmenter.run(volume, {"organ": prompts}, ("fresh-after-failure",)).labels["organ"]
    np.testing.assert_array_equal(out.mask, fresh.mask)
    # the session keeps working
    prompts.clicks.append(Click(8, 8, 3, False))
    assert segmenter.run(volume, {"organ": prompts}, ("broken",)).labels["organ"].restarted is None
