"""sam2's mask decoder and memory encoder on CPU through OpenVINO: the two small stages of a slice step.

Each slice step runs memory attention, then the mask decoder (prompt tokens against the slice's
features, then the mask logits), then the memory encoder (the slice's features fused with its
mask, stored as memory for the next slices). The two heads are small (about 1 and 3 GFLOP at
512 px) but run on every step: 16 ms and 24 ms through PyTorch on a 2-core EPYC, 18 and 20 ms as
float32 OpenVINO graphs (the same numbers to 1e-5), 11 and 11 ms at bf16, called alone. HEADS
says what a runtime converts: nothing by default (why, below).

What is converted is sam2's own code: the decoder's ``predict_masks`` (the transformer, the
upscaling and the hypernetworks) and the whole ``MemoryEncoder.forward``. The decoder's choice
among its masks (multimask, stability) stays sam2's ``MaskDecoder.forward``, run over the graph.
A graph takes one object on the model's own input size, without gradients; any other call
(training, a crop-region view, several objects at once) runs PyTorch.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from .graph import CompiledGraph, convert_graph, GraphCache, cache_key

logger = logging.getLogger(__name__)

# Each runtime's heads and their precision: none converted by default. Measured on a 2-core EPYC
# (avx512_bf16) at 512 px, phantom weights (docs/performance.md, "The two heads"): at bf16 both
# are faster inside a correction's steps (decoder 20 -> 16 ms, memory encoder 26 -> 16 ms; the
# correction 7.9 -> 7.1-7.3 s), but the masks left Dice 0.999 against float32 on real scans (the
# bf16 decoder on 4 of 39 structures, the bf16 memory encoder alone on 1, min 0.998); as float32
# graphs they gained nothing measurable inside a step (22 -> 21 ms, the correction unchanged).
# So the default is sam2's modules; scripts/stage_roofline.py and scripts/runtime_agreement.py
# take --bf16-heads to measure the bf16 heads again (with other weights, on another CPU).
HEADS: dict = {}
BF16_HEADS = (("mask_decoder", "memory_encoder"), "bf16")


class MaskDecoderGraph(torch.nn.Module):
    """``MaskDecoder.predict_masks`` of one object, with sam2's two high-resolution feature maps."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, image_pe, sparse, dense, feat_s0, feat_s1):
        return self.decoder.predict_masks(image_embeddings=image_embeddings, image_pe=image_pe,
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          repeat_image=False, high_res_features=[feat_s0, feat_s1])


class MemoryEncoderGraph(torch.nn.Module):
    """``MemoryEncoder.forward`` on a mask already through its sigmoid, as sam2 calls it."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pix_feat, masks):
        out = self.encoder(pix_feat, masks, skip_mask_sigmoid=True)
        return out["vision_features"], out["vision_pos_enc"][0]


def _usable(*tensors) -> bool:
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 and t.shape[0] == 1 for t in tensors)
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"))


def _compiled(ov, core, module, graph, examples, shapes, stage: str, precision: str, threads: int,
              cache: GraphCache | None) -> CompiledGraph:
    def convert():
        return convert_graph(ov, graph, examples, input=shapes)

    if cache is not None:
        cache.configure(core)
        converted = cache.converted(ov, core, cache_key(module, stage, precision, [list(s) for s in shapes]), convert)
    else:
        converted = convert()
    compiled = CompiledGraph(core, converted, threads, precision)
    compiled.infer({i: t.numpy() for i, t in enumerate(examples)})  # warm-up: the first inference allocates
    return compiled


class _DecoderOverGraph:
    """The decoder as sam2's ``MaskDecoder.forward`` sees it, with ``predict_masks`` from the graph."""

    def __init__(self, module, predict_masks):
        self._module = module
        self.predict_masks = predict_masks

    def __getattr__(self, name):
        return getattr(self._module, name)


class OpenVinoMaskDecoder:
    """``model.sam_mask_decoder`` through one graph for a fixed embedding size."""

    def __init__(self, ov, core, decoder, embedding: int, threads: int, precision: str = "f32",
                 cache: GraphCache | None = None):
        started = time.perf_counter()
        self.module = decoder
        self.embedding = int(embedding)
        self.name = "openvino_bf16" if precision == "bf16" else "openvino"
        self.calls = 0
        e, c = self.embedding, decoder.transformer_dim
        shapes = [(1, c, e, e), (1, c, e, e), (1, 3, c), (1, c, e, e), (1, c // 8, 4 * e, 4 * e), (1, c // 4, 2 * e, 2 * e)]
        generator = torch.Generator().manual_seed(0)
        examples = tuple(torch.randn(*shape, generator=generator) for shape in shapes)
        shapes[2] = (1, -1, c)  # any number of prompt tokens
        self._graph = _compiled(ov, core, decoder, MaskDecoderGraph(decoder), examples, shapes, "mask_decoder",
                                precision, threads, cache)
        self.compile_seconds = round(time.perf_counter() - started, 2)

    def accepts(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output, repeat_image, high_res_features=None) -> bool:
        e = self.embedding
        return (high_res_features is not None and len(high_res_features) == 2 and not self.module.training
                and tuple(image_embeddings.shape[-2:]) == (e, e) and sparse_prompt_embeddings.shape[1] > 0
                and tuple(high_res_features[0].shape[-2:]) == (4 * e, 4 * e)
                and _usable(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                            *high_res_features))

    def __call__(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                 multimask_output, repeat_image, high_res_features=None):
        def predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                          repeat_image, high_res_features):
            inputs = (image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, *high_res_features)
            return tuple(self._graph.infer({i: t.detach().contiguous().numpy() for i, t in enumerate(inputs)}))

        self.calls += 1
        return type(self.module).forward(
            _DecoderOverGraph(self.module, predict_masks), image_embeddings=image_embeddings, image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings, dense_prompt_embeddings=dense_prompt_embeddings,
            multimask_output=multimask_output, repeat_image=repeat_image, high_res_features=high_res_features)


class OpenVinoMemoryEncoder:
    """``model.memory_encoder`` through one graph for a fixed input size."""

    def __init__(self, ov, core, encoder, image_size: int, embedding: int, channels: int, threads: int,
                 precision: str = "f32", cache: GraphCache | None = None):
        started = time.perf_counter()
        self.module = encoder
        self.image_size, self.embedding = int(image_size), int(embedding)
        self.name = "openvino_bf16" if precision == "bf16" else "openvino"
        self.calls = 0
        shapes = [(1, channels, self.embedding, self.embedding), (1, 1, self.image_size, self.image_size)]
        generator = torch.Generator().manual_seed(0)
        examples = (torch.randn(*shapes[0], generator=generator), torch.rand(*shapes[1], generator=generator))
        self._graph = _compiled(ov, core, encoder, MemoryEncoderGraph(encoder), examples, shapes, "memory_encoder",
                                precision, threads, cache)
        self.compile_seconds = round(time.perf_counter() - started, 2)

    def accepts(self, pix_feat, masks, skip_mask_sigmoid: bool = False) -> bool:
        return (not self.module.training and tuple(masks.shape[-2:]) == (self.image_size, self.image_size)
                and tuple(pix_feat.shape[-2:]) == (self.embedding, self.embedding) and _usable(pix_feat, masks))

    def __call__(self, pix_feat, masks, skip_mask_sigmoid: bool = False) -> dict:
        if not skip_mask_sigmoid:
            masks = F.sigmoid(masks)
        features, position = self._graph.infer({0: pix_feat.detach().contiguous().numpy(),
                                                1: masks.detach().contiguous().numpy()})
        self.calls += 1
        return {"vision_features": features, "vision_pos_enc": [position]}


def attach_heads(model, runtime: str, threads: int | None = None, cache: GraphCache | None = None) -> dict:
    """Give ``model`` its CPU mask decoder and memory encoder for ``runtime``; returns what runs each.

    Compiled and run once now, at load. A head OpenVINO cannot take stays on PyTorch (logged,
    and said in the returned text)."""
    model.serving.mask_decoder = model.serving.memory_encoder = None
    converted, precision = HEADS.get(runtime, ((), None))
    threads = threads or torch.get_num_threads()
    embedding = model.image_size // model.backbone_stride
    builders = {
        "mask_decoder": lambda ov, core: OpenVinoMaskDecoder(ov, core, model._modules["sam_mask_decoder"], embedding,
                                                             threads, precision, cache),
        "memory_encoder": lambda ov, core: OpenVinoMemoryEncoder(ov, core, model._modules["memory_encoder"],
                                                                 model.image_size, embedding, model.hidden_dim,
                                                                 threads, precision, cache),
    }
    stages = dict.fromkeys(builders, "torch")
    for stage in converted:
        build = builders[stage]
        try:
            import openvino as ov

            attached = build(ov, ov.Core())
        except Exception as err:  # noqa: BLE001 - any failure means: this head stays on PyTorch
            logger.warning("%s runs on PyTorch: %s cannot take it: %s", stage, runtime, err)
            stages[stage] = f"torch ({runtime} unavailable: {err})"
            continue
        setattr(model.serving, stage, attached)
        stages[stage] = attached.name
        logger.info("%s through OpenVINO %s, built in %.1f s", stage, precision, attached.compile_seconds)
    return stages
