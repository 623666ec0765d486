"""Checkpoint presets, loading through the real code, clear errors, and hot reload."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from medsam2_engine.checkpoints import (
    PRESETS,
    CheckpointError,
    get_preset,
    load_model_config,
    preset_for_config_file,
    read_state_dict,
)
from medsam2_engine.model_source import ModelNotReady, ModelSource
from medsam2_engine.prompts import Click, LabelPrompts
from tests.support.small_model import write_small_checkpoint


def test_presets_name_official_files():
    assert PRESETS["medsam2"].image_size == 512
    assert PRESETS["medsam2"].url == "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt"
    assert PRESETS["sam2.1_hiera_large"].url.endswith("/092824/sam2.1_hiera_large.pt")
    assert PRESETS["sam2_hiera_tiny"].url.endswith("/072824/sam2_hiera_tiny.pt")
    for preset in PRESETS.values():
        cfg = load_model_config(preset)  # every preset's config exists in the sam2 package
        assert cfg.model.image_size == preset.image_size
    with pytest.raises(CheckpointError, match="unknown model preset 'sam3'"):
        get_preset("sam3")


def test_official_format_roundtrip(small_model_files):
    state_dict = read_state_dict(str(small_model_files[1]))
    assert "sam_mask_decoder.pred_obj_score_head.layers.2.bias" in state_dict
    payload = torch.load(small_model_files[1], weights_only=True)
    assert set(payload) == {"model", "image_size"}  # sam2 reads "model" only; the input size is for our check
    assert payload["image_size"] == 128


def test_missing_checkpoint_names_the_file_and_the_url(tmp_path):
    source = ModelSource(get_preset("medsam2"), tmp_path / "model")
    with pytest.raises(ModelNotReady) as err:
        source.get()
    assert str(tmp_path / "model" / "MedSAM2_latest.pt") in str(err.value)
    assert "huggingface.co/wanglab/MedSAM2" in str(err.value)
    status = source.status()
    assert status["ready"] is False and "MedSAM2_latest.pt" in status["reason"]


def test_download_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    import medsam2_engine.checkpoints as checkpoints

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", unreachable)
    source = ModelSource(get_preset("sam2.1_hiera_tiny"), tmp_path)
    source.ensure_available(allow_download=True)  # must not raise: the server still starts
    assert "could not download https://dl.fbaipublicfiles.com/segment_anything_2/092824/" in source.status()["reason"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a torch file at all", "not a readable torch file"),
        (None, "not in the SAM 2 format"),
    ],
)
def test_corrupt_or_foreign_files_are_refused(small_model_files, tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"state_dict": {}}, path)  # a checkpoint, but not SAM 2's format
    else:
        path.write_bytes(content)
    source = ModelSource(preset_for_config_file(small_model_files[0]), tmp_path, checkpoint=str(path))
    with pytest.raises(CheckpointError, match=message):
        source.get()


def test_checkpoint_that_does_not_fit_the_config(small_model_files, tmp_path):
    """The small test model's weights offered to the hiera-tiny config: keys and shapes named."""
    source = ModelSource(get_preset("sam2.1_hiera_tiny"), tmp_path, checkpoint=str(small_model_files[1]))
    with pytest.raises(CheckpointError) as err:
        source.get()
    text = str(err.value)
    assert "does not fit model config configs/sam2.1/sam2.1_hiera_t.yaml" in text
    assert "image_encoder" in text


def test_random_weights_are_flagged(small_model_files, tmp_path, caplog):
    source = ModelSource(preset_for_config_file(small_model_files[0]), tmp_path, checkpoint="random")
    loaded = source.get()
    assert loaded.random_weights
    assert "UNTRAINED RANDOM WEIGHTS" in caplog.text


def test_random_weights_are_the_same_network_after_a_restart(small_model_files, tmp_path):
    """Seeded, and reported in /info: a problem seen with random weights can be reproduced."""
    from medsam2_engine.checkpoints import RANDOM_WEIGHTS_SEED, build_model

    preset = preset_for_config_file(small_model_files[0])
    torch.manual_seed(123)
    before = torch.rand(1)
    first = build_model(preset, "random").state_dict()
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the caller's random state is left alone
    second = build_model(preset, "random").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    status = ModelSource(preset, tmp_path, checkpoint="random").status()
    assert status["random_seed"] == RANDOM_WEIGHTS_SEED and status["random_weights"]


def test_finetuned_file_is_preferred_and_hot_reloaded(small_model_files, tmp_path, phantom):
    from medsam2_engine.volume_segmenter import VolumeSegmenter

    preset = preset_for_config_file(small_model_files[0])
    official = tmp_path / preset.filename
    official.write_bytes(small_model_files[1].read_bytes())
    source = ModelSource(preset, tmp_path)
    segmenter = VolumeSegmenter(source)
    prompts = {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}
    first = segmenter.run(phantom, prompts, ("u", "img"))
    assert first.run.checkpoint == str(official)

    write_small_checkpoint(tmp_path / "finetuned.pt", seed=1)  # a "fine-tuned" model appears
    second = segmenter.run(phantom, prompts, ("u", "img"))
    assert second.run.checkpoint == str(tmp_path / "finetuned.pt")
    assert second.session.started == "model weights changed"

    write_small_checkpoint(tmp_path / "finetuned.pt", seed=2)  # republished in place
    third = segmenter.run(phantom, prompts, ("u", "img"))
    assert third.session.started == "model weights changed"
    assert not np.array_equal(third.labels["organ"].mask, second.labels["organ"].mask)


def test_broken_republish_keeps_serving_previous_weights(small_model_files, tmp_path, phantom):
    from medsam2_engine.volume_segmenter import VolumeSegmenter

    preset = preset_for_config_file(small_model_files[0])
    path = tmp_path / "finetuned.pt"
    write_small_checkpoint(path, seed=1)
    source = ModelSource(preset, tmp_path)
    segmenter = VolumeSegmenter(source)
    prompts = {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}
    segmenter.run(phantom, prompts, ("u", "img"))
    path.write_bytes(b"truncated")
    result = segmenter.run(phantom, prompts, ("u", "img"))
    assert result.run.checkpoint == str(path)
    assert "not a readable torch file" in source.status()["reason"]
