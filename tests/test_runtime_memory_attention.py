"""sam2's memory attention through OpenVINO: the real-valued RoPE, the graph against PyTorch
for every memory length, int8 masks against float32 (phantom checkpoint and a real scan),
fallback, inference-only use and concurrent callers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam2_engine.mask_measures import dice as _dice
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.support.runtime_runs import masks_of_fresh_run as _masks

pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino): the runtime is optional")


def _memory_inputs(model, frames: int, pointers: int, seed: int) -> tuple:
    """(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens) shaped as sam2 calls memory attention."""
    module = model._modules["memory_attention"]
    queries = (model.image_size // model.backbone_stride) ** 2
    tokens = frames * queries + 4 * pointers
    generator = torch.Generator().manual_seed(seed)
    channels, memory_channels = module.d_model, module.layers[0].cross_attn_image.kv_in_dim
    return (torch.randn(queries, 1, channels, generator=generator), torch.randn(tokens, 1, memory_channels, generator=generator),
            torch.randn(queries, 1, channels, generator=generator), torch.randn(tokens, 1, memory_channels, generator=generator),
            4 * pointers)


def _sam2_memory_attention(model, inputs):
    curr, memory, curr_pos, memory_pos, pointer_tokens = inputs
    return model._modules["memory_attention"](curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
                                              num_obj_ptr_tokens=pointer_tokens)


def test_real_valued_rope_is_sam2s_complex_rope():
    from medsam2_engine.runtime.memory_attention import rope_tables, rotate
    from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis
    from sam2.modeling.sam.transformer import RoPEAttention

    attention = RoPEAttention(embedding_dim=32, num_heads=1, rope_k_repeat=True, feat_sizes=(4, 4))
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 16, 32, generator=generator), torch.randn(1, 1, 3 * 16, 32, generator=generator)
    expected_q, expected_k = apply_rotary_enc(q, k, compute_axial_cis(32, 4, 4), repeat_freqs_k=True)
    cos, sin = rope_tables(attention, 16)
    assert torch.allclose(rotate(q, cos, sin), expected_q, atol=1e-5)
    assert torch.allclose(rotate(k, cos, sin), expected_k, atol=1e-5)  # the table repeated per memory frame


def test_memory_attention_graph_matches_pytorch_for_every_memory_length(small_source):
    """Float32 OpenVINO memory attention: sam2's output, with the bank filling and pointers varying."""
    import openvino as ov
    from medsam2_engine.runtime.memory_attention import OpenVinoMemoryAttention

    model = small_source.get().model
    queries = (model.image_size // model.backbone_stride) ** 2
    graph = OpenVinoMemoryAttention(ov, ov.Core(), model._modules["memory_attention"], queries, 1)
    with torch.inference_mode():
        for frames, pointers in ((1, 1), (3, 5), (7, 16)):
            inputs = _memory_inputs(model, frames, pointers, seed=frames)
            assert graph.accepts(inputs[0], inputs[1], inputs[4])
            expected, got = _sam2_memory_attention(model, inputs), graph(*inputs)
            assert got.shape == expected.shape
            assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (frames, (got - expected).abs().max().item())


def _segment_with_memory_attention(segmenter, volume, prompts, attach):
    """(PyTorch masks, masks with ``attach(model)``'s memory attention, its calls) on the same weights."""
    from medsam2_engine.runtime.memory_attention import memory_attention_runtime
    from medsam2_engine.runtime import attach_cpu_runtime

    model = segmenter.models.get().model
    try:
        assert attach_cpu_runtime(model, "torch") == "torch"
        reference, _ = _masks(segmenter, volume, prompts)
        assert attach(model) == "openvino_int8"
        runtime = memory_attention_runtime(model)
        converted, result = _masks(segmenter, volume, prompts)
        assert result.run.runtimes["memory_attention"] == ["openvino_int8"]  # the result says what ran
        return reference, converted, runtime.calls
    finally:
        attach_cpu_runtime(model, "torch")


def test_int8_memory_attention_masks_agree_on_the_phantom_checkpoint(fine_tuned):
    """openvino_int8's memory attention alone (encoder on PyTorch): close outputs, masks within the bound."""
    pytest.importorskip("nncf", reason="nncf is not installed: the int8 option is unavailable")
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.runtime.memory_attention import (attach_memory_attention, calibration_inputs,
                                                         memory_attention_runtime)

    segmenter, cases = fine_tuned
    model = segmenter.models.get().model
    recorded = calibration_inputs(model)  # PyTorch's inputs and outputs of a real propagation
    with torch.inference_mode():
        expected = [_sam2_memory_attention(model, _as_call(inputs)) for inputs in recorded]
    mask = cases[1].labels == 1
    k = int(np.median(np.nonzero(mask)[2]))
    ii, jj = np.nonzero(mask[:, :, k])
    prompts = {"l": LabelPrompts(boxes=[Box(ii.min(), jj.min(), ii.max(), jj.max(), k)])}

    def attach(model):
        used = attach_memory_attention(model, "openvino_int8")
        runtime = memory_attention_runtime(model)
        for inputs, output in zip(recorded, expected):
            got = runtime(*_as_call(inputs))
            assert not torch.allclose(got, output, atol=1e-4)  # quantised: other numbers
            assert (got - output).abs().max() < 0.02 * output.abs().max()  # measured: 0.003 to 0.004
        runtime.calls = 0
        return used

    reference, quantized, calls = _segment_with_memory_attention(segmenter, cases[1].volume, prompts, attach)
    assert calls >= cases[1].volume.array.shape[2] - 2  # every propagated slice but the prompted one
    assert reference["l"].sum() > 0.3 * mask.sum()
    assert _dice(reference["l"], quantized["l"]) >= 0.99  # measured: 1.0 (0 voxels differ)


def _as_call(inputs: dict) -> tuple:
    """``graph_inputs`` back to sam2's (curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)."""
    curr, curr_pos, memory, memory_pos, pointers, pointers_pos = (torch.from_numpy(inputs[i]) for i in range(6))
    return curr, torch.cat((memory, pointers)), curr_pos, torch.cat((memory_pos, pointers_pos)), pointers.shape[0]


@needs_shared_data
def test_int8_runtime_masks_agree_on_a_real_scan(fine_tuned, graph_cache):
    """openvino_int8 (encoder and memory attention) on a DeepLesion CT against PyTorch float32."""
    pytest.importorskip("nncf", reason="nncf is not installed: the int8 option is unavailable")
    from medsam2_eval.cases import load_npz_case
    from medsam2_eval.clicks import box_prompt
    from medsam2_engine.prompts import LabelPrompts
    from medsam2_engine.runtime import attach_cpu_runtime, runtime_stages

    segmenter, _ = fine_tuned
    case = load_npz_case(sorted((SHARED_DATA / "ct_lesion_deeplesion_npz").glob("*.npz"))[0])
    prompts = {"l": LabelPrompts(boxes=[box_prompt(case.structures[0].mask)])}

    def attach(model):
        used = attach_cpu_runtime(model, "openvino_int8", [model.image_size], cache_dir=graph_cache)
        assert runtime_stages(model) == {"image_encoder": "openvino_int8", "memory_attention": "openvino_int8",
                                         "mask_decoder": "torch", "memory_encoder": "torch"}
        return used

    reference, quantized, calls = _segment_with_memory_attention(segmenter, case.volume, prompts, attach)
    assert calls >= case.volume.array.shape[2] - 2
    assert reference["l"].any(), "the phantom-trained model finds nothing here: no agreement to measure"
    assert _dice(reference["l"], quantized["l"]) >= 0.99  # measured: 0.99995


def test_memory_attention_falls_back_to_pytorch_when_conversion_fails(small_source, monkeypatch, phantom, caplog):
    import medsam2_engine.runtime.memory_attention as runtime_module
    from medsam2_engine.volume_segmenter import VolumeSegmenter
    from medsam2_engine.prompts import Box, LabelPrompts

    model = small_source.get().model

    def refuse(*args, **kwargs):
        raise RuntimeError("this graph cannot be converted")

    monkeypatch.setattr(runtime_module.MemoryAttentionGraph, "forward", refuse)
    with caplog.at_level("WARNING", logger=runtime_module.logger.name):
        used = runtime_module.attach_memory_attention(model, "openvino_int8")
    assert used.startswith("torch (openvino_int8 unavailable") and "cannot be converted" in used
    assert runtime_module.memory_attention_runtime(model) is None and "memory attention runs on PyTorch" in caplog.text
    assert model.memory_attention is model._modules["memory_attention"]  # sam2's module, called as before
    result = VolumeSegmenter(small_source).run(phantom, {"l": LabelPrompts(boxes=[Box(10, 8, 26, 20, 6)])},
                                               session_key=("ma-fallback",))
    assert result.labels["l"].mask.shape == phantom.array.shape


def test_memory_attention_runtime_only_for_inference_and_keeps_the_checkpoint_format(small_source, tmp_path):
    """Attached: inference goes through it; autograd and training use sam2's module; state_dict unchanged."""
    import openvino as ov
    from medsam2_engine.checkpoints import save_checkpoint
    from medsam2_engine.runtime.memory_attention import OpenVinoMemoryAttention

    model = small_source.get().model
    keys = list(model.state_dict())
    queries = (model.image_size // model.backbone_stride) ** 2
    graph = OpenVinoMemoryAttention(ov, ov.Core(), model._modules["memory_attention"], queries, 1)
    inputs = _memory_inputs(model, 2, 3, seed=5)
    curr, memory, curr_pos, memory_pos, pointer_tokens = inputs
    call = dict(curr=[curr], memory=memory, curr_pos=[curr_pos], memory_pos=memory_pos, num_obj_ptr_tokens=pointer_tokens)
    assert not graph.accepts(curr[: queries // 4], memory, pointer_tokens)  # another input size (crop region)
    assert not graph.accepts(curr, memory[1:], pointer_tokens)  # a bank that is not whole query maps
    assert not graph.accepts(curr, memory, 0)  # no pointer tokens
    model.serving.memory_attention = graph
    try:
        with torch.inference_mode():
            expected = _sam2_memory_attention(model, inputs)
            assert torch.allclose(model.memory_attention(**call), expected, atol=1e-4)  # sam2's list form
        assert graph.calls == 1
        with torch.enable_grad():
            assert model.memory_attention(**call).requires_grad  # autograd: PyTorch
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.memory_attention(**call)
        assert graph.calls == 1
        assert list(model.state_dict()) == keys
        save_checkpoint(model, tmp_path / "saved.pt")
        assert list(torch.load(tmp_path / "saved.pt", map_location="cpu")["model"]) == keys
    finally:
        model.serving.memory_attention = None


def test_concurrent_memory_attention_callers_each_get_their_own_output(small_source):
    from concurrent.futures import ThreadPoolExecutor

    import openvino as ov
    from medsam2_engine.runtime.memory_attention import OpenVinoMemoryAttention

    model = small_source.get().model
    queries = (model.image_size // model.backbone_stride) ** 2
    graph = OpenVinoMemoryAttention(ov, ov.Core(), model._modules["memory_attention"], queries, 1)
    calls = [_memory_inputs(model, 1 + s % 4, 1 + s, seed=s) for s in range(6)]  # different lengths too
    expected = [graph(*inputs) for inputs in calls]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda index: graph(*calls[index]), [i % 6 for i in range(18)]))
    for index, output in enumerate(got):
        assert torch.equal(output, expected[index % 6]), index
