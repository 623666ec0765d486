"""sam2's mask decoder and memory encoder through OpenVINO: the graphs against sam2's modules,
what they refuse, and bf16 masks against float32 on a real scan."""

from __future__ import annotations

import pytest
import torch

from medsam2_engine.mask_measures import dice as _dice
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.support.runtime_runs import masks_of_fresh_run as _masks

pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino): the runtime is optional")


def _decoder_inputs(model, tokens: int, seed: int = 0) -> dict:
    decoder = model._modules["sam_mask_decoder"]
    e, c = model.image_size // model.backbone_stride, decoder.transformer_dim
    generator = torch.Generator().manual_seed(seed)
    return {"image_embeddings": torch.randn(1, c, e, e, generator=generator),
            "image_pe": model.sam_prompt_encoder.get_dense_pe(),
            "sparse_prompt_embeddings": torch.randn(1, tokens, c, generator=generator),
            "dense_prompt_embeddings": torch.randn(1, c, e, e, generator=generator),
            "repeat_image": False,
            "high_res_features": [torch.randn(1, c // 8, 4 * e, 4 * e, generator=generator),
                                  torch.randn(1, c // 4, 2 * e, 2 * e, generator=generator)]}


def _memory_encoder_inputs(model, seed: int = 0) -> tuple:
    e, s = model.image_size // model.backbone_stride, model.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, model.hidden_dim, e, e, generator=generator), torch.rand(1, 1, s, s, generator=generator)


def _heads(model, precision="f32"):
    import openvino as ov
    from medsam2_engine.runtime.heads import OpenVinoMaskDecoder, OpenVinoMemoryEncoder

    e = model.image_size // model.backbone_stride
    decoder = OpenVinoMaskDecoder(ov, ov.Core(), model._modules["sam_mask_decoder"], e, 1, precision)
    encoder = OpenVinoMemoryEncoder(ov, ov.Core(), model._modules["memory_encoder"], model.image_size, e,
                                    model.hidden_dim, 1, precision)
    return decoder, encoder


def test_head_graphs_are_sam2s_heads_in_float32(small_source):
    """The decoder for one to six prompt tokens, single and multimask (sam2's own choice of mask
    over the graph), and the memory encoder, each against sam2's module."""
    model = small_source.get().model
    decoder, encoder = _heads(model)
    module = model._modules["sam_mask_decoder"]
    with torch.inference_mode():
        for tokens in (1, 3, 6):
            for multimask in (False, True):
                inputs = {**_decoder_inputs(model, tokens, seed=tokens), "multimask_output": multimask}
                assert decoder.accepts(**inputs)
                expected, got = module(**inputs), decoder(**inputs)
                for want, have in zip(expected, got):
                    assert have.shape == want.shape
                    assert torch.allclose(have, want, atol=1e-4, rtol=1e-4), (tokens, multimask)
        pix_feat, masks = _memory_encoder_inputs(model)
        for skip in (True, False):
            assert encoder.accepts(pix_feat, masks, skip_mask_sigmoid=skip)
            expected = model._modules["memory_encoder"](pix_feat, masks, skip_mask_sigmoid=skip)
            got = encoder(pix_feat, masks, skip_mask_sigmoid=skip)
            assert torch.allclose(got["vision_features"], expected["vision_features"], atol=1e-4, rtol=1e-4)
            assert torch.allclose(got["vision_pos_enc"][0], expected["vision_pos_enc"][0], atol=1e-5)
    assert decoder.calls == 6 and encoder.calls == 2


def test_heads_leave_to_pytorch_what_they_were_not_built_for(small_source):
    """Training, gradients, several objects and another input size (a crop-region view) run sam2's modules."""
    model = small_source.get().model
    decoder, encoder = _heads(model)
    inputs = {**_decoder_inputs(model, 2), "multimask_output": False}
    pix_feat, masks = _memory_encoder_inputs(model)
    with torch.inference_mode():
        assert decoder.accepts(**inputs) and encoder.accepts(pix_feat, masks, True)
        two = {**inputs, "sparse_prompt_embeddings": inputs["sparse_prompt_embeddings"].repeat(2, 1, 1),
               "image_embeddings": inputs["image_embeddings"].repeat(2, 1, 1, 1)}
        assert not decoder.accepts(**two)  # two objects at once
        assert not encoder.accepts(pix_feat.repeat(2, 1, 1, 1), masks.repeat(2, 1, 1, 1), True)
        half = {**inputs, "image_embeddings": inputs["image_embeddings"][..., ::2, ::2]}
        assert not decoder.accepts(**half)  # another input size
        assert not encoder.accepts(pix_feat, masks[..., ::2, ::2], True)
    assert not decoder.accepts(**inputs)  # gradients on: training
    module = model._modules["sam_mask_decoder"]
    module.train()
    try:
        with torch.inference_mode():
            assert not decoder.accepts(**inputs)
    finally:
        module.eval()


@needs_shared_data
@pytest.mark.skipif(not __import__("medsam2_engine.precision", fromlist=["x"]).cpu_bf16_units(),
                    reason="this CPU has no bf16 units (AVX-512 bf16 or AMX): openvino_bf16 is not offered here")
def test_bf16_heads_run_only_when_asked_and_say_so_on_a_real_scan(fine_tuned, monkeypatch, graph_cache):
    """openvino_bf16 leaves both heads to sam2's modules by default; with the bf16 heads asked for
    (as the scripts' --bf16-heads does) they run through OpenVINO, the result says so, and the
    mask on a DeepLesion CT stays close to float32's (measured: Dice 0.998 to 1.0 on real scans,
    which is why they are not the default)."""
    from medsam2_eval.cases import load_npz_case
    from medsam2_eval.clicks import box_prompt
    from medsam2_engine.prompts import LabelPrompts
    from medsam2_engine.runtime import attach_cpu_runtime, heads, runtime_stages

    segmenter, _ = fine_tuned
    model = segmenter.models.get().model
    case = load_npz_case(sorted((SHARED_DATA / "ct_lesion_deeplesion_npz").glob("*.npz"))[0])
    prompts = {"l": LabelPrompts(boxes=[box_prompt(case.structures[0].mask)])}
    try:
        assert attach_cpu_runtime(model, "torch") == "torch"
        reference, _ = _masks(segmenter, case.volume, prompts)
        # one graph cache: the second attach reads the encoder and memory attention the first converted
        assert attach_cpu_runtime(model, "openvino_bf16", [model.image_size], cache_dir=graph_cache) == "openvino_bf16"
        assert runtime_stages(model)["mask_decoder"] == runtime_stages(model)["memory_encoder"] == "torch"
        monkeypatch.setitem(heads.HEADS, "openvino_bf16", heads.BF16_HEADS)
        assert attach_cpu_runtime(model, "openvino_bf16", [model.image_size], cache_dir=graph_cache) == "openvino_bf16"
        converted, result = _masks(segmenter, case.volume, prompts)
        calls = model.serving.memory_encoder.calls
    finally:
        attach_cpu_runtime(model, "torch")
    assert result.run.runtimes["mask_decoder"] == ["openvino_bf16"]
    assert result.run.runtimes["memory_encoder"] == ["openvino_bf16"]
    assert calls >= case.volume.array.shape[2] - 2
    assert reference["l"].any(), "the phantom-trained model finds nothing here: no agreement to measure"
    assert _dice(reference["l"], converted["l"]) >= 0.99


def test_graphs_traced_once_are_the_graphs_openvino_traces_with_its_check(small_source):
    """The runtime traces each network once (``graph.convert_graph``: no torch.jit ``check_trace``,
    which traces and runs it twice more). Its graph and OpenVINO's own conversion compute the same
    outputs bit for bit on inputs other than the tracing example. Shown on memory attention, the
    cheapest graph with the options the others use (a dynamic memory length); the image encoder's
    graph is compared with PyTorch in test_runtime.py."""
    import numpy as np
    import openvino as ov
    from medsam2_engine.runtime.graph import convert_graph
    from medsam2_engine.runtime.memory_attention import MemoryAttentionGraph, example_inputs

    attention = small_source.get().model._modules["memory_attention"]
    queries = 8 * 8
    module = MemoryAttentionGraph(attention, queries).eval()
    examples = example_inputs(queries, attention.d_model, attention.layers[0].cross_attn_image.kv_in_dim)
    shapes = [[queries, 1, attention.d_model]] * 2 + [[-1, 1, examples[2].shape[-1]]] * 4
    with torch.no_grad():  # as the runtime converts (cached tensors of earlier inference-mode runs)
        ours = convert_graph(ov, module, examples, input=shapes)
        reference = ov.convert_model(module, example_input=examples, input=shapes)
    generator = torch.Generator().manual_seed(7)
    core = ov.Core()
    ours, reference = (core.compile_model(g, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}) for g in (ours, reference))
    for frames in (1, 3):  # memory lengths other than the example's
        inputs = [torch.randn(*t.shape, generator=generator) for t in examples[:2]]
        inputs += [torch.randn(frames * queries if n < 2 else t.shape[0], 1, t.shape[2], generator=generator)
                   for n, t in enumerate(examples[2:])]
        feed = {i: t.numpy() for i, t in enumerate(inputs)}
        got, want = ours(feed), reference(feed)
        assert len(got) == len(want) > 0
        for a, b in zip(got.values(), want.values()):
            np.testing.assert_array_equal(a, b)
