"""Every setting reaches every task that uses it; one default per option; one run-info record."""

from __future__ import annotations

import numpy as np

from medsam2_engine.volume_segmenter import EngineSettings
from medsam2_engine.prompts import Click, LabelPrompts
from medsam2_engine.propagation import EarlyStop
from medsam2_engine.results import RunInfo
from tests.conftest import make_volume


def _spy_autocast(monkeypatch, module):
    """Record the ``cpu_bf16`` each autocast of ``module`` is asked for."""
    seen = []
    original = module.autocast_for

    def spy(device, cpu_bf16="off"):
        seen.append(cpu_bf16)
        return original(device, "off")  # record only: the test model runs in float32 either way

    monkeypatch.setattr(module, "autocast_for", spy)
    return seen


def test_cpu_bf16_reaches_the_2d_engine(small_source, monkeypatch):
    import medsam2_engine.image_segmenter as image2d

    seen = _spy_autocast(monkeypatch, image2d)
    images = image2d.ImageSegmenter(small_source, cpu_bf16="auto")
    images.run(make_volume((24, 20, 4), seed=2), LabelPrompts(clicks=[Click(10, 9, 2, True)]), ("bf16",),
               slice_index=2)
    assert seen and set(seen) == {"auto"}  # the encoder and the decoder call


def test_one_prompt_gets_the_engine_settings(small_source, monkeypatch):
    import medsam2_engine.one_prompt as one_prompt
    from lib.infers.one_prompt import one_prompt_settings

    engine = EngineSettings(early_stop=EarlyStop(enabled=True, patience=4), feature_cache_mb=123.0, cpu_bf16="on")
    settings = one_prompt_settings(engine)
    assert (settings.early_stop, settings.feature_cache_mb, settings.cpu_bf16) == (engine.early_stop, 123.0, "on")

    seen = _spy_autocast(monkeypatch, one_prompt)
    segmenter = one_prompt.OnePromptSegmenter(small_source, settings)
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[10:20, 12:22] = True
    segmenter.segment_images(image, [image], support_mask=mask)
    assert seen == ["on"]


def test_the_train_task_and_the_trainer_share_one_epochs_default(small_source):
    from lib.trainers.finetune import FineTuneTask
    from medsam2_engine.training.finetune import FineTuneConfig

    task = FineTuneTask(small_source, ["organ"])
    assert task.fine_tune_config({}).epochs == FineTuneConfig().epochs


def test_run_info_says_untrained_origin_only_for_fine_tunes_of_random_weights():
    from lib.infers.results_json import RANDOM_WEIGHTS_WARNING, UNTRAINED_ORIGIN_WARNING, run_json

    random = RunInfo("random", True, "medsam2", {})
    fine_tuned_from_random = RunInfo("/m/finetuned.pt", True, "medsam2", {"total": 1.0})
    trained = RunInfo("/m/MedSAM2_latest.pt", False, "medsam2", {})
    assert not random.untrained_origin and fine_tuned_from_random.untrained_origin and not trained.untrained_origin
    assert run_json(random, None, "photo")["warning"] == RANDOM_WEIGHTS_WARNING
    out = run_json(fine_tuned_from_random, None, "CT")
    assert out["warning"] == UNTRAINED_ORIGIN_WARNING and out["model"]["untrained_origin"] is True
    assert "warning" not in run_json(trained, None, "CT")
