"""Active learning: SAM 2 uncertainty ranks a study it gets wrong above one it gets right."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medsam2_engine.volume_io import Volume

SHAPE = (40, 32, 8)
AFFINE = np.diag([0.9, 0.8, 3.0, 1.0])


def _body():
    rng = np.random.default_rng(0)
    array = np.full(SHAPE, -1000.0, np.float32)
    array[2:-2, 2:-2, :] = 40.0
    return array + rng.normal(0, 5, SHAPE).astype(np.float32)


def _cylinder(centre=(14, 12), radius=6):
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    disc = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= radius**2
    return np.repeat(disc[:, :, None], SHAPE[2], axis=2)


@pytest.fixture
def studies():
    """(right, wrong, reference label map): the structure sits where labelled studies have it, or not."""
    reference = _cylinder()
    right = _body()
    right[reference] = 200.0
    # the wrong study: the usual place holds speckled tissue, the structure lies elsewhere
    wrong = _body()
    rng = np.random.default_rng(1)
    wrong[reference] = rng.choice([-200.0, 300.0], size=int(reference.sum()))
    elsewhere = _cylinder(centre=(28, 22), radius=4)
    wrong[elsewhere] = 200.0
    return (Volume(right, AFFINE, "right"), reference), (Volume(wrong, AFFINE, "wrong"), elsewhere), reference


def test_uncertainty_ranks_the_study_the_model_gets_wrong_first(segmenter, studies):
    from lib.activelearning.uncertainty import priors_from_labels, study_uncertainty
    from medsam2_engine.prompts import LabelPrompts
    from medsam2_engine.training.validation import dice

    (right, right_truth), (wrong, wrong_truth), reference = studies
    priors = priors_from_labels([reference.astype(np.int32)])
    assert len(priors) == 1

    def dice_with_prior_box(volume, truth):
        prompt = {"x": LabelPrompts(boxes=[priors[0].box(SHAPE)])}
        mask = segmenter.segment(volume, prompt, session_key=("check", volume.path)).labels["x"].mask
        return dice(mask, truth)

    right_dice, wrong_dice = dice_with_prior_box(right, right_truth), dice_with_prior_box(wrong, wrong_truth)
    if right_dice < 0.5:
        pytest.skip(f"the test model segments nothing correctly (Dice {right_dice:.2f} on the easy study), so no "
                    "study is 'right' for it; this comparison needs a model trained to segment")
    assert right_dice > wrong_dice + 0.2, f"construction: the model should do better on right ({right_dice=}, {wrong_dice=})"

    right_score = study_uncertainty(segmenter, right, priors)
    wrong_score = study_uncertainty(segmenter, wrong, priors)
    assert 0.0 <= right_score["score"] <= 1.0 and 0.0 <= wrong_score["score"] <= 1.0
    assert wrong_score["score"] > right_score["score"], (right_score, wrong_score)


def test_strategy_serves_the_highest_stored_score_and_skips_just_served(tmp_path):
    from monailabel.datastore.local import LocalDatastore

    from lib.activelearning.scoring import SCORE_KEY
    from lib.activelearning.strategies import Uncertainty

    for name in ("a", "b", "c", "d"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), tmp_path / f"{name}.nii.gz")
    datastore = LocalDatastore(str(tmp_path), extensions=("*.nii.gz",), auto_reload=False)
    for name, score in (("a", 0.1), ("b", 0.7), ("c", 0.4)):
        datastore.update_image_info(name, {SCORE_KEY: score})
    strategy = Uncertainty()
    assert strategy({"strategy": "uncertainty"}, datastore)["id"] == "b"
    datastore.update_image_info("b", {"strategy": {"uncertainty": {"ts": 10**10}}})  # handed out just now
    assert strategy({"strategy": "uncertainty"}, datastore)["id"] == "c"
