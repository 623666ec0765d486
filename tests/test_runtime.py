"""The CPU runtime (OpenVINO) for the image encoder: same features and masks as PyTorch
float32 on the same weights, PyTorch when the runtime is missing, a new graph for new weights."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
import torch

from medsam2_engine.mask_measures import dice as _dice
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.support.runtime_runs import masks_of_fresh_run as _masks

pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino): the runtime is optional")


def _with_and_without_runtime(segmenter, volume, prompts, graph_cache):
    """(torch masks, openvino masks, openvino calls) for one call each on the same weights."""
    from medsam2_engine.runtime import attach_cpu_runtime, image_runtime

    model = segmenter.models.get().model
    try:
        assert attach_cpu_runtime(model, "torch") == "torch"
        reference, _ = _masks(segmenter, volume, prompts)
        assert attach_cpu_runtime(model, "openvino", [model.image_size], cache_dir=graph_cache) == "openvino"
        runtime = image_runtime(model)
        calls_before = runtime.calls
        converted, result = _masks(segmenter, volume, prompts)
        return reference, converted, runtime.calls - calls_before, result
    finally:
        attach_cpu_runtime(model, "torch")


def test_encoder_outputs_match_pytorch(small_source, graph_cache):
    from medsam2_engine.runtime import OpenVinoImageEncoder
    from medsam2_engine.runtime.graph import GraphCache

    model = small_source.get().model
    image = torch.randn(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.forward_image(image)
        got = OpenVinoImageEncoder(model, cache=GraphCache(graph_cache))(image)  # converted here, read after
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(got[key]) == len(expected[key])
        for a, b in zip(got[key], expected[key]):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (key, (a - b).abs().max().item())
    assert torch.equal(got["vision_features"], got["backbone_fpn"][-1])


def test_masks_agree_with_pytorch_on_the_phantom_checkpoint(fine_tuned, graph_cache):
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.volume_io import Volume

    segmenter, cases = fine_tuned
    case = cases[0]
    mask = case.labels == 1
    ii, jj, kk = np.nonzero(mask)
    k = int(np.median(kk))
    ii, jj = np.nonzero(mask[:, :, k])
    prompts = {"l": LabelPrompts(boxes=[Box(ii.min(), jj.min(), ii.max(), jj.max(), k)])}
    volume = Volume(case.volume.array, case.volume.affine, "")
    reference, converted, calls, _ = _with_and_without_runtime(segmenter, volume, prompts, graph_cache)
    assert calls >= volume.array.shape[2]  # every slice went through the runtime
    assert reference["l"].sum() > 0.3 * mask.sum()  # trained weights: a real mask, not an empty one
    assert _dice(reference["l"], converted["l"]) >= 0.999


@needs_shared_data
def test_masks_agree_with_pytorch_on_a_real_scan(fine_tuned, graph_cache):
    from medsam2_eval.cases import load_npz_case
    from medsam2_eval.clicks import box_prompt
    from medsam2_engine.prompts import LabelPrompts

    segmenter, _ = fine_tuned
    path = sorted((SHARED_DATA / "ct_lesion_deeplesion_npz").glob("*.npz"))[0]
    case = load_npz_case(path)
    structure = case.structures[0]
    prompts = {"l": LabelPrompts(boxes=[box_prompt(structure.mask)])}
    reference, converted, calls, _ = _with_and_without_runtime(segmenter, case.volume, prompts, graph_cache)
    assert calls >= case.volume.array.shape[2]
    assert reference["l"].any(), "the phantom-trained model finds nothing here: no agreement to measure"
    assert _dice(reference["l"], converted["l"]) >= 0.999


def test_missing_runtime_falls_back_to_pytorch(small_source, monkeypatch, phantom):
    from medsam2_engine.volume_segmenter import VolumeSegmenter
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.runtime import attach_cpu_runtime, image_runtime

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    model = small_source.get().model
    used = attach_cpu_runtime(model, "openvino", [model.image_size])
    assert used.startswith("torch (openvino unavailable") and image_runtime(model) is None
    result = VolumeSegmenter(small_source).run(phantom, {"l": LabelPrompts(boxes=[Box(10, 8, 26, 20, 6)])},
                                                   session_key=("fallback",))
    assert result.labels["l"].mask.shape == phantom.array.shape


def _served_with_openvino(small_model_files, tmp_path, graph_cache) -> tuple:
    """(config, served checkpoint file, ModelSource on it with the OpenVINO encoder; the small model's
    graph from the session's cache, new weights converted)."""
    from medsam2_engine.checkpoints import preset_for_config_file
    from medsam2_engine.model_source import ModelSource

    config, checkpoint = small_model_files
    served = tmp_path / "served.pt"
    served.write_bytes(checkpoint.read_bytes())
    return config, served, ModelSource(preset_for_config_file(config), tmp_path, checkpoint=str(served),
                                       device="cpu", cpu_runtime="openvino", runtime_cache_dir=graph_cache)


def test_new_weights_get_a_new_graph_compiled_at_load(small_model_files, tmp_path, graph_cache):
    from medsam2_engine.checkpoints import build_model, preset_for_config_file, save_checkpoint
    from medsam2_engine.runtime import image_runtime
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    config, served, source = _served_with_openvino(small_model_files, tmp_path, graph_cache)
    first = source.get()
    runtime = image_runtime(first.model)
    assert source.status()["cpu_runtime"] == "openvino"
    # float32 OpenVINO memory attention and heads measured no faster than PyTorch: they stay
    assert source.status()["cpu_runtime_stages"] == {"image_encoder": "openvino", "memory_attention": "torch",
                                                     "mask_decoder": "torch", "memory_encoder": "torch"}
    assert list(runtime.compile_seconds) == [first.model.image_size]  # compiled before any request
    save_checkpoint(build_model(preset_for_config_file(config), "random", seed=1), served)  # as a fine-tune publishes
    os.utime(served, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = source.get()
    assert second.version == first.version + 1
    new_runtime = image_runtime(second.model)
    assert new_runtime is not runtime and list(new_runtime.compile_seconds) == [second.model.image_size]
    image = torch.rand(1, 3, second.model.image_size, second.model.image_size)
    with torch.inference_mode():
        got = new_runtime(image)["backbone_fpn"][-1]
        reference = SAM2VideoPredictor.forward_image(second.model, image)["backbone_fpn"][-1]  # PyTorch
        old = runtime(image)["backbone_fpn"][-1]
    assert torch.allclose(got, reference, atol=1e-4)  # the new weights, not the old graph's
    assert not torch.allclose(old, reference, atol=1e-4)


def test_int8_option_is_quantized_and_close_on_the_phantom_checkpoint(fine_tuned, graph_cache):
    """openvino_int8 (NNCF) is an option: not float32's numbers, masks close to them (measured here)."""
    pytest.importorskip("nncf", reason="nncf is not installed: the int8 option is unavailable")
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.runtime import OpenVinoImageEncoder, attach_cpu_runtime, calibration_slices
    from medsam2_engine.runtime.graph import GraphCache

    segmenter, cases = fine_tuned
    model = segmenter.models.get().model
    image = calibration_slices(model.image_size, 1)[0]
    with torch.inference_mode():  # the graph cache: the runtime attached below reads this int8 encoder
        float32 = OpenVinoImageEncoder(model, cache=GraphCache(graph_cache))(image)["backbone_fpn"][-1]
        int8 = OpenVinoImageEncoder(model, int8=True, cache=GraphCache(graph_cache))(image)["backbone_fpn"][-1]
    assert not torch.allclose(int8, float32, atol=1e-4)  # quantized: other numbers
    assert (int8 - float32).abs().max() < 0.25 * float32.abs().max()
    mask = cases[0].labels == 1
    k = int(np.median(np.nonzero(mask)[2]))
    ii, jj = np.nonzero(mask[:, :, k])
    prompts = {"l": LabelPrompts(boxes=[Box(ii.min(), jj.min(), ii.max(), jj.max(), k)])}
    try:
        assert attach_cpu_runtime(model, "torch") == "torch"
        reference, _ = _masks(segmenter, cases[0].volume, prompts)
        assert attach_cpu_runtime(model, "openvino_int8", [model.image_size], cache_dir=graph_cache) == "openvino_int8"
        quantized, _ = _masks(segmenter, cases[0].volume, prompts)
    finally:
        attach_cpu_runtime(model, "torch")
    assert _dice(reference["l"], quantized["l"]) >= 0.9


def test_concurrent_callers_each_get_their_own_features(small_source, graph_cache):
    from concurrent.futures import ThreadPoolExecutor

    from medsam2_engine.runtime import OpenVinoImageEncoder
    from medsam2_engine.runtime.graph import GraphCache

    model = small_source.get().model
    encoder = OpenVinoImageEncoder(model, cache=GraphCache(graph_cache))
    images = [torch.rand(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(s))
              for s in range(6)]
    with torch.inference_mode():
        expected = [encoder(image)["backbone_fpn"][-1] for image in images]

        def encode(index):
            with torch.inference_mode():
                return encoder(images[index])["backbone_fpn"][-1]

        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(encode, [i % 6 for i in range(18)]))
    for index, features in enumerate(got):
        assert torch.equal(features, expected[index % 6]), index


def test_published_weights_are_loaded_and_compiled_before_the_next_request(small_model_files, tmp_path, graph_cache):
    from medsam2_engine.checkpoints import build_model, preset_for_config_file, save_checkpoint
    from medsam2_engine.runtime import image_runtime

    config, served, source = _served_with_openvino(small_model_files, tmp_path, graph_cache)
    first = source.get()
    source.watch(interval_s=0.05)
    try:
        save_checkpoint(build_model(preset_for_config_file(config), "random", seed=2), served)  # a fine-tune publishes
        os.utime(served, ns=(time.time_ns(), time.time_ns() + 10**9))
        deadline = time.monotonic() + 60
        while source._loaded is first and time.monotonic() < deadline:  # no request calls get()
            time.sleep(0.05)
        reloaded = source._loaded
    finally:
        source.stop_watching()
    assert reloaded is not first and reloaded.version == first.version + 1
    assert list(image_runtime(reloaded.model).compile_seconds) == [reloaded.model.image_size]


def test_a_broken_published_file_is_tried_once_not_on_every_poll(small_model_files, tmp_path, monkeypatch):
    import medsam2_engine.model_source as model_source_module
    from medsam2_engine.checkpoints import preset_for_config_file
    from medsam2_engine.model_source import ModelSource

    config, checkpoint = small_model_files
    served = tmp_path / "served.pt"
    served.write_bytes(checkpoint.read_bytes())
    source = ModelSource(preset_for_config_file(config), tmp_path, checkpoint=str(served), device="cpu")
    first = source.get()
    builds = []
    real_load = model_source_module.load_model
    monkeypatch.setattr(model_source_module, "load_model", lambda *a, **k: builds.append(1) or real_load(*a, **k))
    source.watch(interval_s=0.02)
    try:
        served.write_bytes(b"not a checkpoint")
        time.sleep(1.0)
    finally:
        source.stop_watching()
    assert len(builds) == 1 and source._loaded is first  # still serving the old weights
    assert source.last_error


# --- memory attention (runtime/memory_attention.py) -------------------------------------------


def test_slices_encoded_by_one_runtime_are_never_served_to_another(small_source, phantom, graph_cache):
    from medsam2_engine.volume_segmenter import VolumeSegmenter
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.runtime import attach_cpu_runtime

    segmenter = VolumeSegmenter(small_source)
    model = small_source.get().model
    prompts = {"l": LabelPrompts(boxes=[Box(10, 8, 26, 20, 6)])}
    try:
        torch_run = segmenter.run(phantom, prompts, session_key=("torch",))
        assert attach_cpu_runtime(model, "openvino", [model.image_size], cache_dir=graph_cache) == "openvino"
        openvino_run = segmenter.run(phantom, prompts, session_key=("openvino",))
    finally:
        attach_cpu_runtime(model, "torch")
    torch_again = segmenter.run(phantom, prompts, session_key=("torch again",))
    assert torch_run.session.slices_encoded > 0
    assert openvino_run.session.slices_encoded == torch_run.session.slices_encoded  # its own cache
    assert torch_again.session.slices_encoded == 0  # the same runtime's slices are shared
    # each result says what ran its network stages in that call
    heads = {"mask_decoder": ["torch"], "memory_encoder": ["torch"]}
    assert torch_run.run.runtimes == {"image_encoder": ["torch"], "memory_attention": ["torch"], **heads}
    assert openvino_run.run.runtimes == {"image_encoder": ["openvino"], "memory_attention": ["torch"], **heads}
    assert torch_again.run.runtimes == {"memory_attention": ["torch"], **heads}  # nothing encoded in that call


def test_bf16_option_only_where_the_cpu_has_bf16_units(small_source, monkeypatch):
    from medsam2_engine.runtime import image_encoder as runtime_openvino
    from medsam2_engine.runtime import attach_cpu_runtime, runtime_stages

    model = small_source.get().model
    monkeypatch.setattr(runtime_openvino, "cpu_bf16_units", lambda: ())  # a CPU without them (AVX2 only)
    try:
        used = attach_cpu_runtime(model, "openvino_bf16", [model.image_size])
        assert used.startswith("torch (openvino_bf16 unavailable") and "no bf16 units" in used
        assert runtime_stages(model) == {"image_encoder": used, "memory_attention": "torch",
                                         "mask_decoder": "torch", "memory_encoder": "torch"}
    finally:
        attach_cpu_runtime(model, "torch")


@pytest.mark.skipif(not __import__("medsam2_engine.precision", fromlist=["x"]).cpu_bf16_units(),
                    reason="this CPU has no bf16 units (avx512_bf16 or amx_bf16)")
def test_bf16_option_runs_both_stages_in_bf16_close_to_float32(small_source):
    from medsam2_engine.runtime import OpenVinoImageEncoder, calibration_slices

    model = small_source.get().model
    image = calibration_slices(model.image_size, 1)[0]
    with torch.inference_mode():
        float32 = OpenVinoImageEncoder(model)(image)["backbone_fpn"][-1]
        bf16 = OpenVinoImageEncoder(model, bf16=True)(image)["backbone_fpn"][-1]
    assert not torch.equal(bf16, float32)  # other arithmetic
    assert (bf16 - float32).abs().max() < 0.1 * float32.abs().max()


def test_auto_picks_bf16_only_where_the_cpu_has_bf16_units(monkeypatch):
    from medsam2_engine import precision
    from medsam2_engine.runtime import resolve_cpu_runtime

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ("avx512_bf16",))
    assert resolve_cpu_runtime("auto") == "openvino_bf16"
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ())  # AVX2 only: float32
    assert resolve_cpu_runtime("auto") == "openvino" and resolve_cpu_runtime("torch") == "torch"
    with pytest.raises(ValueError, match="cpu_runtime"):
        resolve_cpu_runtime("fast")
