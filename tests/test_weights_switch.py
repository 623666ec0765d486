"""New weights without a stall: prepared in the background while the old ones answer, switched
between two requests, reported only once served; compiled runtimes kept on disk by their weights."""

from __future__ import annotations

import os
import threading
import time

import pytest

import medsam2_engine.model_source as model_source_module
from medsam2_engine.checkpoints import preset_for_config_file
from medsam2_engine.model_source import ModelSource
from medsam2_engine.prompts import Click, LabelPrompts
from medsam2_engine.volume_segmenter import VolumeSegmenter
from tests.support.small_model import write_small_checkpoint

PROMPTS = {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}


def _publish(path, seed: int) -> None:
    write_small_checkpoint(path, seed=seed)
    later = time.time_ns() + 10**9  # a new stamp even within the file system's time resolution
    os.utime(path, ns=(later, later))


@pytest.fixture
def held_preparation(monkeypatch):
    """(entered, release, hold): after ``hold()``, preparing weights stops at its check until ``release``."""
    entered, release = threading.Event(), threading.Event()
    real_check = model_source_module.check_prepared

    def held(model):
        entered.set()
        assert release.wait(60), "the test never released the preparation"
        real_check(model)

    yield entered, release, lambda: monkeypatch.setattr(model_source_module, "check_prepared", held)
    release.set()


def test_a_click_during_preparation_is_answered_by_the_old_weights(small_model_files, tmp_path, phantom,
                                                                    held_preparation):
    entered, release, hold = held_preparation
    served = tmp_path / "finetuned.pt"
    _publish(served, seed=1)
    source = ModelSource(preset_for_config_file(small_model_files[0]), tmp_path, prepare_in_background=True)
    segmenter = VolumeSegmenter(source)
    first = segmenter.run(phantom, PROMPTS, ("u", "img"))
    old_version, old_loaded = source.status()["version"], source.get()
    assert source.status()["preparing"] is None

    hold()
    _publish(served, seed=2)  # a fine-tune publishes
    during = segmenter.run(phantom, PROMPTS, ("u", "img"))  # answered while the new weights are held
    assert entered.wait(30), "no preparation started"
    assert not release.is_set()  # the click did not wait for the preparation
    assert during.session.started != "model weights changed"
    assert (during.labels["organ"].mask == first.labels["organ"].mask).all()  # the old weights made it
    status = source.status()
    assert status["version"] == old_version and status["preparing"]["stage"] == "checking"

    release.set()
    assert source.wait_prepared(60)
    after = segmenter.run(phantom, PROMPTS, ("u", "img"))
    assert after.session.started == "model weights changed"
    assert source.status()["preparing"] is None
    assert source.get().version == old_loaded.version + 1


def test_weights_that_fail_their_check_are_never_served(small_model_files, tmp_path, phantom, monkeypatch):
    served = tmp_path / "finetuned.pt"
    _publish(served, seed=1)
    source = ModelSource(preset_for_config_file(small_model_files[0]), tmp_path, prepare_in_background=True)
    first = source.get()

    def nan_features(model):
        raise model_source_module.CheckpointError("the new weights give non-finite image features")

    monkeypatch.setattr(model_source_module, "check_prepared", nan_features)
    _publish(served, seed=2)
    assert source.get() is first
    assert source.wait_prepared(60)
    assert source.get() is first and "non-finite" in source.status()["reason"]
    assert source.status()["preparing"] is None  # tried once; again only when the file changes


def test_the_check_refuses_non_finite_features(small_model_files):
    import torch

    from medsam2_engine.checkpoints import build_model

    model = build_model(preset_for_config_file(small_model_files[0]), str(small_model_files[1]), "cpu")
    model_source_module.check_prepared(model)  # finite: accepted
    with torch.no_grad():
        next(model.image_encoder.parameters()).fill_(float("nan"))
    with pytest.raises(model_source_module.CheckpointError, match="non-finite"):
        model_source_module.check_prepared(model)


def test_a_restart_with_the_same_weights_reads_the_compiled_runtime_from_disk(small_model_files, tmp_path):
    pytest.importorskip("openvino", reason="the OpenVINO runtime is not installed")
    preset = preset_for_config_file(small_model_files[0])
    cache = tmp_path / "runtime-cache"
    served = tmp_path / "served.pt"
    _publish(served, seed=1)

    def start():
        source = ModelSource(preset, tmp_path / "model", checkpoint=str(served), device="cpu",
                             cpu_runtime="openvino", runtime_cache_dir=cache)
        return source.get().model.serving.graph_cache

    first = start()
    assert (first.hits, first.misses) == (0, 1)  # converted once and saved
    again = start()  # a restart: same weights
    assert (again.hits, again.misses) == (1, 0)
    _publish(served, seed=2)  # new weights never match an old entry
    new = start()
    assert (new.hits, new.misses) == (0, 1)
    assert len(list(cache.glob("*.xml"))) == 2 and not list(cache.glob(".tmp-*"))


def test_new_weights_are_compiled_by_a_low_priority_child_into_the_cache(small_model_files, tmp_path):
    """In the background the compile runs in a child process at nice 19 (the clicks keep the cores);
    the server then only reads the compiled graphs from the cache."""
    pytest.importorskip("openvino", reason="the OpenVINO runtime is not installed")
    served = tmp_path / "finetuned.pt"
    _publish(served, seed=1)
    source = ModelSource(preset_for_config_file(small_model_files[0]), tmp_path, device="cpu",
                         cpu_runtime="openvino", prepare_in_background=True, runtime_cache_dir=tmp_path / "cache")
    first = source.get()
    assert first.model.serving.graph_cache.misses == 1  # the first load compiles here, as before
    _publish(served, seed=2)
    assert source.get() is first
    assert source.wait_prepared(300)
    new = source.get()
    assert new is not first and source.status()["cpu_runtime"] == "openvino"
    assert (new.model.serving.graph_cache.hits, new.model.serving.graph_cache.misses) == (1, 0)
