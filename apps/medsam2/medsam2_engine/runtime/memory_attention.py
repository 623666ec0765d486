"""sam2's memory attention on CPU through OpenVINO: one graph for every memory length.

What is converted is sam2's own ``MemoryAttention`` (its layers, norms, projections and
``scaled_dot_product_attention``) with one change of formulation: sam2 applies its rotary
position encoding (RoPE) through complex tensors, which OpenVINO's converter does not take,
so :func:`rotate` does the same rotation on (real, imaginary) pairs with the cosines and
sines of sam2's own ``freqs_cis`` (tested against sam2 to 1e-5).

The memory grows as propagation goes (the prompted slice's features, then up to six earlier
slices, each one query map long, then four tokens per object pointer, up to 16 pointers),
so the graph takes the spatial memories and the pointer tokens as two inputs of free length;
``num_obj_ptr_tokens`` is the length of the second. The query map (the model's input size
over 16, squared) is fixed per graph: other sizes (a crop-region view) run PyTorch.

``openvino_int8`` quantises this graph with NNCF, calibrated on the memory-attention inputs
of a short propagation the served model itself runs at load on a synthetic CT-like phantom
(:func:`calibration_inputs`); an option, its agreement reported in the README.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .graph import CompiledGraph, convert_graph, GraphCache, cache_key, int8_key, quantized

logger = logging.getLogger(__name__)

CALIBRATION_SLICES = 12  # the box on slice 2: the bank reaches its full 7 memories going forward


def rope_tables(attention, queries: int) -> tuple:
    """(cos, sin), each (queries, head_dim / 2): sam2's ``freqs_cis`` for this query map, as reals."""
    side = math.sqrt(queries)
    freqs = attention.compute_cis(end_x=side, end_y=side)
    return freqs.real.contiguous(), freqs.imag.contiguous()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """sam2's ``apply_rotary_enc`` on real pairs: ``x`` (B, heads, r * Q, D), the table repeated r times.

    Channels (2i, 2i + 1) are a complex number multiplied by ``cos + i sin`` of its position.
    """
    b, heads, length, dim = x.shape
    pairs = x.reshape(b, heads, -1, cos.shape[0], dim // 2, 2)  # (.., r, Q, D/2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.reshape(b, heads, length, dim)


def _attend(attention, q, k, v, cos, sin, k_unrotated=None):
    """sam2's ``RoPEAttention.forward`` with :func:`rotate`; ``k_unrotated``: trailing keys RoPE skips."""
    q = attention._separate_heads(attention.q_proj(q), attention.num_heads)
    k = attention._separate_heads(attention.k_proj(k), attention.num_heads)
    v = attention._separate_heads(attention.v_proj(v), attention.num_heads)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    if k_unrotated is not None:
        k = torch.cat((k, attention._separate_heads(attention.k_proj(k_unrotated), attention.num_heads)), dim=2)
    out = F.scaled_dot_product_attention(q, k, v)
    return attention.out_proj(attention._recombine_heads(out))


class MemoryAttentionGraph(torch.nn.Module):
    """``MemoryAttention.forward`` for batch 1 with the memory given as (spatial, pointer) parts.

    Inputs are sam2's (sequence, batch, channels) tensors; the output is the same.
    """

    def __init__(self, memory_attention, queries: int):
        super().__init__()
        self.memory_attention = memory_attention
        first = memory_attention.layers[0]
        for name, attention in (("self", first.self_attn), ("cross", first.cross_attn_image)):
            cos, sin = rope_tables(attention, queries)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)

    def forward(self, curr, curr_pos, memory, memory_pos, pointers, pointers_pos):
        module = self.memory_attention
        output = curr
        if module.pos_enc_at_input:
            output = output + 0.1 * curr_pos
        output, query_pos = output.transpose(0, 1), curr_pos.transpose(0, 1)
        memory, memory_pos = memory.transpose(0, 1), memory_pos.transpose(0, 1)
        pointers, pointers_pos = pointers.transpose(0, 1), pointers_pos.transpose(0, 1)
        for layer in module.layers:
            output = self._layer(layer, output, query_pos, memory, memory_pos, pointers, pointers_pos)
        return module.norm(output).transpose(0, 1)

    def _layer(self, layer, tgt, query_pos, memory, memory_pos, pointers, pointers_pos):
        tgt2 = layer.norm1(tgt)
        q = tgt2 + query_pos if layer.pos_enc_at_attn else tgt2
        tgt = tgt + _attend(layer.self_attn, q, q, tgt2, self.self_cos, self.self_sin)
        tgt2 = layer.norm2(tgt)
        q = tgt2 + query_pos if layer.pos_enc_at_cross_attn_queries else tgt2
        keys = memory + memory_pos if layer.pos_enc_at_cross_attn_keys else memory
        pointer_keys = pointers + pointers_pos if layer.pos_enc_at_cross_attn_keys else pointers
        values = torch.cat((memory, pointers), dim=1)
        tgt = tgt + _attend(layer.cross_attn_image, q, keys, values, self.cross_cos, self.cross_sin, pointer_keys)
        tgt2 = layer.norm3(tgt)
        return tgt + layer.linear2(layer.activation(layer.linear1(tgt2)))


def convertible(memory_attention) -> str | None:
    """Why this memory attention is not the kind the graph reproduces, or None when it is."""
    from sam2.modeling.memory_attention import MemoryAttention
    from sam2.modeling.sam.transformer import RoPEAttention

    if type(memory_attention) is not MemoryAttention or not memory_attention.batch_first:
        return f"{type(memory_attention).__name__} is not sam2's batch-first MemoryAttention"
    for layer in memory_attention.layers:
        if not (isinstance(layer.self_attn, RoPEAttention) and isinstance(layer.cross_attn_image, RoPEAttention)
                and layer.cross_attn_image.rope_k_repeat and not layer.self_attn.rope_k_repeat):
            return "a memory-attention layer without sam2's RoPE self and cross attention"
    return None


class OpenVinoMemoryAttention:
    """``model.memory_attention`` of one model through one OpenVINO graph (a fixed query map)."""

    def __init__(self, ov, core, memory_attention, queries: int, threads: int, calibration=None,
                 precision: str = "f32", cache: GraphCache | None = None):
        reason = convertible(memory_attention)
        if reason:
            raise ValueError(reason)
        self.module = memory_attention
        self.queries = int(queries)
        self.int8 = calibration is not None
        self.name = "openvino_int8" if self.int8 else "openvino_bf16" if precision == "bf16" else "openvino"
        self.calls = 0
        started = time.perf_counter()
        dims = memory_attention.d_model, memory_attention.layers[0].cross_attn_image.kv_in_dim
        examples = example_inputs(self.queries, *dims)
        shapes = [[self.queries, 1, dims[0]]] * 2 + [[-1, 1, dims[1]]] * 4

        def convert():
            converted = convert_graph(ov, MemoryAttentionGraph(memory_attention, self.queries), examples, input=shapes)
            # calibration: the inputs themselves, or a callable that records them (only on a cache miss)
            return quantized(converted, calibration() if callable(calibration) else calibration) if self.int8 \
                else converted

        if cache is not None:
            cache.configure(core)
            converted = cache.converted(ov, core, cache_key(memory_attention, "memory_attention", self.name,
                                                            self.queries, *int8_key(self.int8)),
                                       convert)
        else:
            converted = convert()
        self.warm_up_inputs = {i: t.numpy() for i, t in enumerate(examples)}
        self._graph = CompiledGraph(core, converted, threads, precision)
        self.compile_seconds = round(time.perf_counter() - started, 2)

    def accepts(self, curr, memory, num_obj_ptr_tokens: int) -> bool:
        spatial = memory.shape[0] - num_obj_ptr_tokens
        return (curr.device.type == "cpu" and curr.dtype == torch.float32 and memory.dtype == torch.float32
                and curr.dim() == 3 and curr.shape[0] == self.queries and curr.shape[1] == 1
                and memory.shape[1] == 1 and num_obj_ptr_tokens > 0 and spatial > 0 and spatial % self.queries == 0
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and not self.module.training)

    def __call__(self, curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens: int) -> torch.Tensor:
        output = self.infer(graph_inputs(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens))
        self.calls += 1
        return output

    def infer(self, inputs: dict) -> torch.Tensor:
        """The graph on numbered inputs (:func:`graph_inputs`)."""
        return self._graph.infer(inputs)[0]


def example_inputs(queries: int, channels: int, memory_channels: int, frames: int = 2, pointers: int = 8) -> tuple:
    generator = torch.Generator().manual_seed(0)
    shapes = [(queries, channels)] * 2 + [(frames * queries, memory_channels)] * 2 + [(pointers, memory_channels)] * 2
    return tuple(torch.randn(n, 1, c, generator=generator) for n, c in shapes)


def graph_inputs(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens: int) -> dict:
    """One call's arguments as the graph's numbered inputs (what calibration feeds NNCF)."""
    spatial = memory.shape[0] - num_obj_ptr_tokens
    parts = (curr, curr_pos, memory[:spatial], memory_pos[:spatial], memory[spatial:], memory_pos[spatial:])
    return {i: t.detach().contiguous().numpy() for i, t in enumerate(parts)}


def calibration_inputs(model, slices: int = CALIBRATION_SLICES) -> list:
    """Memory-attention inputs of ``model`` (PyTorch) propagating a box through a CT-like phantom."""
    from ..frames import SliceFrames
    from ..phantoms import spindle_lesion
    from ..windowing import choose_window

    size = model.image_size
    volume, lesion = spindle_lesion(slices, size, 1.0, seed=0)
    frames = SliceFrames(volume, choose_window(volume, "CT", None), size)
    start = 2
    ii, jj = np.nonzero(lesion[:, :, start])
    box = np.array([jj.min(), ii.min(), jj.max(), ii.max()], np.float32)  # sam2's (x0, y0, x1, y1)
    recorded = []

    def record(module, args, kwargs):
        curr, curr_pos = kwargs["curr"], kwargs["curr_pos"]
        curr, curr_pos = (curr[0], curr_pos[0]) if isinstance(curr, list) else (curr, curr_pos)
        if kwargs["num_obj_ptr_tokens"] > 0:
            inputs = graph_inputs(curr, kwargs["memory"], curr_pos, kwargs["memory_pos"], kwargs["num_obj_ptr_tokens"])
            recorded.append({i: array.copy() for i, array in inputs.items()})

    handle = model._modules["memory_attention"].register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.inference_mode():
            state = model.init_state_from_frames(frames)
            model.add_new_points_or_box(state, frame_idx=start, obj_id=1, box=box)
            for _ in model.propagate_in_video(state, start_frame_idx=start):
                pass
            for _ in model.propagate_in_video(state, start_frame_idx=start, reverse=True):
                pass
    finally:
        handle.remove()
    return recorded


def attach_memory_attention(model, runtime: str, threads: int | None = None, cache: GraphCache | None = None) -> str:
    """Give ``model`` its CPU memory attention for ``runtime``; returns what will run it.

    Only ``openvino_int8`` and ``openvino_bf16`` convert it: float32 OpenVINO measured no faster
    than PyTorch here (docs/performance.md, "CPU runtime: memory attention"). Calibrated (int8),
    compiled and run once now, at load.
    """
    model.serving.memory_attention = None
    if runtime not in ("openvino_int8", "openvino_bf16"):
        return "torch"
    try:
        import openvino as ov

        queries = (model.image_size // model.backbone_stride) ** 2
        calls = 0

        def calibration():  # int8 only, and only when the quantised graph is not cached
            nonlocal calls
            recorded = calibration_inputs(model)
            calls = len(recorded)
            if not recorded:
                raise ValueError("the calibration propagation made no memory-attention call")
            return recorded

        int8 = runtime == "openvino_int8"
        attached = OpenVinoMemoryAttention(ov, ov.Core(), model._modules["memory_attention"], queries,
                                           threads or torch.get_num_threads(), calibration=calibration if int8 else None,
                                           precision="f32" if int8 else "bf16", cache=cache)
        attached.infer(attached.warm_up_inputs)  # warm-up: the first inference allocates
    except Exception as err:  # noqa: BLE001 - any failure means: memory attention stays on PyTorch
        logger.warning("memory attention runs on PyTorch: %s cannot take it: %s", runtime, err)
        return f"torch ({runtime} unavailable: {err})"
    logger.info("memory attention through OpenVINO %s (%d calibration calls), built in %.1f s",
                runtime, calls, attached.compile_seconds)
    model.serving.memory_attention = attached
    return runtime


def memory_attention_runtime(model):
    """The memory-attention runtime attached to ``model``, or None."""
    return model.serving.memory_attention
