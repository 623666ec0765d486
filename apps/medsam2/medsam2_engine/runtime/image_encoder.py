"""The image encoder (Hiera + FPN neck + the decoder's high-resolution projections) on CPU
through OpenVINO, with plain PyTorch as the fallback.

What runs is exactly sam2's ``SAM2Base.forward_image``: the graph is traced from the served
model, so the features the predictor caches are the same computation in another runtime
(float32 inference precision is forced: OpenVINO would otherwise pick bf16 on CPUs that have
bf16 units). One compiled graph per (model object, input size): a reloaded checkpoint (a
fine-tune publishing new weights) is a new model object and gets its own graph, compiled
and warmed up at load (``ModelSource``), so no user pays the compilation.

``openvino_bf16`` (option) compiles the same graphs (image encoder and memory attention) at
bf16 inference precision, only on a CPU with bf16 units (``avx512_bf16`` or ``amx_bf16``,
detected at run time; elsewhere OpenVINO would emulate it, slower than float32): its masks
differ from float32 by what ``scripts/runtime_agreement.py`` reports.

``openvino_int8`` is an option, not a faithful runtime: NNCF (OpenVINO's own quantization
tool) makes the graph int8, calibrated on a few synthetic CT-like slices (a body with a
bright lesion, windowed and normalised as the app prepares slices); its masks differ from
float32 by what the speed benchmark reports as its agreement.

Used only for what it was validated for: CPU, float32, no autograd, batch 1, a traced input
size. Anything else (training, bf16 autocast, CUDA) runs sam2's PyTorch code as before.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from ..precision import cpu_bf16_units
from .graph import CompiledGraph, convert_graph, GraphCache, RuntimeUnavailable, cache_key, int8_key, quantized

logger = logging.getLogger(__name__)

CALIBRATION_SLICES = 6

class _ForwardImage(torch.nn.Module):
    """``model.forward_image`` as a module with tensor outputs (what the runtime converts)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model.forward_image(image)
        return (*out["backbone_fpn"], *out["vision_pos_enc"])


class OpenVinoImageEncoder:
    """``forward_image`` of one model through OpenVINO, compiled per input size on first use."""

    name = "openvino"

    def __init__(self, model, threads: int | None = None, int8: bool = False, bf16: bool = False,
                 cache: GraphCache | None = None):
        try:
            import openvino as ov
            if int8:
                import nncf  # noqa: F401
        except ImportError as err:  # the fallback is PyTorch; the caller says so in /info
            raise RuntimeUnavailable(f"{err.name or 'openvino'} is not installed ({err})") from err
        if bf16 and not cpu_bf16_units():
            raise RuntimeUnavailable("this CPU has no bf16 units (avx512_bf16 or amx_bf16): bf16 would be emulated")
        self.int8 = int8
        self.precision = "bf16" if bf16 else "f32"
        self.name = "openvino_int8" if int8 else "openvino_bf16" if bf16 else "openvino"
        self._ov = ov
        self._core = ov.Core()
        self._cache = cache
        if cache is not None:
            cache.configure(self._core)
        self._model = model
        self._threads = threads or torch.get_num_threads()
        self._compiled: dict = {}  # input size -> (CompiledGraph, number of fpn levels)
        self._lock = threading.Lock()
        self.compile_seconds: dict = {}
        self.calls = 0

    def accepts(self, image: torch.Tensor) -> bool:
        return (image.device.type == "cpu" and image.dtype == torch.float32 and image.dim() == 4
                and image.shape[0] == 1 and image.shape[-1] == image.shape[-2]
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"))

    def compile(self, size: int):
        """The compiled graph for square inputs of ``size`` pixels (converted once, then kept)."""
        with self._lock:
            if size not in self._compiled:
                started = time.perf_counter()
                example = torch.zeros(1, 3, size, size)
                levels = len(self._model.forward_image(example)["backbone_fpn"])
                def convert():
                    converted = convert_graph(self._ov, _ForwardImage(self._model), example)
                    if self.int8:
                        converted = quantized(converted, [image.numpy() for image in calibration_slices(size)])
                    return converted

                try:
                    if self._cache is not None:
                        key = cache_key(self._model, "image_encoder", self.name, size,
                                        *int8_key(self.int8))
                        converted = self._cache.converted(self._ov, self._core, key, convert)
                    else:
                        converted = convert()
                    compiled = CompiledGraph(self._core, converted, self._threads, self.precision)
                except Exception as err:  # noqa: BLE001 - any conversion failure means: stay on PyTorch
                    raise RuntimeUnavailable(f"openvino cannot convert the image encoder: {err}") from err
                self._compiled[size] = (compiled, levels)
                self.compile_seconds[size] = round(time.perf_counter() - started, 2)
                logger.info("image encoder compiled with OpenVINO for %d px in %.1f s", size,
                            self.compile_seconds[size])
            return self._compiled[size]

    def __call__(self, image: torch.Tensor) -> dict:
        compiled, levels = self.compile(int(image.shape[-1]))
        outputs = compiled.infer({0: image.contiguous().numpy()})
        self.calls += 1
        fpn, pos = outputs[:levels], outputs[levels:]
        return {"vision_features": fpn[-1], "vision_pos_enc": pos, "backbone_fpn": fpn}


def calibration_slices(size: int, count: int = CALIBRATION_SLICES) -> list:
    """CT-like slices as the model receives them (the phantom's lesion on each), windowed W400/L40."""
    from ..frames import SliceFrames
    from ..phantoms import spindle_lesion
    from ..windowing import choose_window

    array, _ = spindle_lesion(max(count, 3), size, 1.0, seed=0)  # the phantom's lesion needs 3 slices
    frames = SliceFrames(array, choose_window(array, "CT", None), size)
    return [frames[k].unsqueeze(0) for k in range(count)]  # the first ``count``


def attach_image_encoder(model, runtime: str, warm_up_sizes, cache: GraphCache | None = None) -> str:
    if runtime == "torch":
        return "torch"
    try:
        encoder = OpenVinoImageEncoder(model, int8=runtime == "openvino_int8", bf16=runtime == "openvino_bf16",
                                       cache=cache)
        with torch.inference_mode():
            for size in warm_up_sizes:
                encoder(torch.zeros(1, 3, int(size), int(size)))
    except RuntimeUnavailable as err:
        logger.warning("cpu_runtime %s unavailable, the image encoder runs on PyTorch: %s", runtime, err)
        return f"torch ({runtime} unavailable: {err})"
    model.serving.image_encoder = encoder
    return runtime


def image_runtime(model):
    """The runtime attached to ``model`` (or to the model it is an input-size view of), or None."""
    return model.serving.image_encoder
