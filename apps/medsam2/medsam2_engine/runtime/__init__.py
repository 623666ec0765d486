"""The CPU runtimes of the per-slice stages: the image encoder and memory attention through
OpenVINO (float32, bf16 or int8), PyTorch otherwise; the mask decoder and memory encoder can be
(``heads``: measured, not the default). ``graph`` holds
what they share, one module per stage (``heads`` for the two small ones), and
:func:`attach_cpu_runtime` above them gives a model its runtime.
"""

from __future__ import annotations

import logging

from .graph import CPU_RUNTIMES, GraphCache, RuntimeUnavailable
from .heads import attach_heads
from .image_encoder import OpenVinoImageEncoder, attach_image_encoder, calibration_slices, image_runtime
from .memory_attention import attach_memory_attention, memory_attention_runtime

logger = logging.getLogger(__name__)

__all__ = ["CPU_RUNTIMES", "CPU_RUNTIME_CHOICES", "GraphCache", "OpenVinoImageEncoder", "RuntimeUnavailable", "attach_cpu_runtime",
           "calibration_slices", "image_runtime", "memory_attention_runtime", "resolve_cpu_runtime", "runtime_stages"]

CPU_RUNTIME_CHOICES = ("auto", *CPU_RUNTIMES)


def resolve_cpu_runtime(choice: str) -> str:
    """``auto`` (the app's default): ``openvino_bf16`` on a CPU with bf16 units, detected now (its masks
    agreed with float32 at Dice >= 0.9996 on every real scan measured, docs/performance.md), else
    ``openvino`` (float32). Any other choice is taken as it is."""
    from ..precision import cpu_bf16_units

    if choice not in CPU_RUNTIME_CHOICES:
        raise ValueError(f"cpu_runtime must be one of {CPU_RUNTIME_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    return "openvino_bf16" if cpu_bf16_units() else "openvino"


def attach_cpu_runtime(model, runtime: str, warm_up_sizes=(), cache_dir=None) -> str:
    """Give ``model`` (a VolumePredictor) its CPU runtime; returns what runs the image encoder.

    ``"torch"`` detaches any runtime. ``"openvino"`` (or ``"openvino_int8"``) compiles and runs one slice per size in
    ``warm_up_sizes`` now; if OpenVINO is missing or cannot convert the model, the model keeps
    PyTorch and the returned text says why. ``"openvino_bf16"`` and ``"openvino_int8"`` also convert
    memory attention (``runtime.memory_attention``); the mask decoder and memory encoder stay sam2's
    modules unless ``runtime.heads.HEADS`` names them for the runtime (measured, not by default);
    :func:`runtime_stages` says what runs each stage.
    ``cache_dir``: converted and compiled graphs kept on disk by their weights (``GraphCache``).
    """
    if runtime not in CPU_RUNTIMES:
        raise ValueError(f"cpu_runtime must be one of {CPU_RUNTIMES}, got {runtime!r}")
    model.serving.image_encoder = model.serving.memory_attention = None
    model.serving.mask_decoder = model.serving.memory_encoder = None
    cache = GraphCache(cache_dir) if cache_dir else None
    encoder = attach_image_encoder(model, runtime, warm_up_sizes, cache)
    converted = encoder == runtime  # OpenVINO is there and takes this model
    memory_attention = attach_memory_attention(model, runtime, cache=cache) if converted else "torch"
    heads = attach_heads(model, runtime, cache=cache) if converted else attach_heads(model, "torch")
    model.serving.graph_cache = cache
    model.serving.stages = {"image_encoder": encoder, "memory_attention": memory_attention, **heads}
    return encoder


def runtime_stages(model) -> dict:
    """What runs each stage of ``model`` on CPU: ``{"image_encoder": ..., "memory_attention": ...,
    "mask_decoder": ..., "memory_encoder": ...}``."""
    return dict(model.serving.stages)


