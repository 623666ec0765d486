"""MedSAM2's video protocol (the echo preset's) on a real echocardiography cine loop: a box on a
middle frame carries the structure through time both ways in one state, with the raw mask."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, needs_shared_data

CAMUS = SHARED_DATA / "us_echo_cine_camus"


@needs_shared_data
@pytest.mark.skipif(not CAMUS.is_dir(), reason="the CAMUS cine loops are not in ../shared/data")
def test_medsam2_video_protocol_runs_both_ways_from_a_middle_frame(small_source):
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.volume_io import load_image
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.propagation import EarlyStop

    loop = load_image(CAMUS / "patient0001" / "patient0001_2CH_half_sequence.nii.gz")
    truth = np.asarray(load_image(CAMUS / "patient0001" / "patient0001_2CH_half_sequence_gt.nii.gz").array) == 1
    frames = loop.array.shape[2]
    middle = frames // 2
    ii, jj = np.nonzero(truth[:, :, middle])
    settings = EngineSettings(protocol="medsam2_video", early_stop=EarlyStop(enabled=False))
    segmenter = VolumeSegmenter(small_source, settings)
    result = segmenter.run(loop, {"lv": LabelPrompts(boxes=[Box(ii.min(), jj.min(), ii.max(), jj.max(), middle)])},
                           session_key=("cine",))
    assert result.run.protocol == "medsam2_video"
    passes = {p.direction: p for p in result.labels["lv"].passes}
    assert set(passes) == {"forward", "backward"}
    assert passes["forward"].start == middle and passes["forward"].last == frames - 1
    assert passes["backward"].start == middle and passes["backward"].last == 0
    mask = result.labels["lv"].mask
    assert mask.shape == truth.shape  # one mask per frame, on the loop's grid
