"""The image encoder (Hiera + FPN neck + the decoder's high-resolution projections) on CPU
through OpenVINO, with plain PyTorch as the fallback.

What runs is exactly sam2's ``SAM2Base.forward_image``: the graph is traced from the served
model, so the features the predictor caches are the same computation in another runtime
(float32 inference precision is forced: OpenVINO would otherwise pick bf16 on CPUs that have
bf16 units). One compiled graph per (model object, input size): a reloaded checkpoint (a
fine-tune publishing new weights) is a new model object and gets its own graph, compiled
and warmed up at load (``ModelSource``), so no user pays the compilation.

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

logger = logging.getLogger(__name__)

CPU_RUNTIMES = ("torch", "openvino", "openvino_int8")
CALIBRATION_SLICES = 6


class RuntimeUnavailable(RuntimeError):
    """The runtime is not installed, or cannot take this model: serve with PyTorch."""


class CompiledGraph:
    """An OpenVINO graph compiled for CPU at float32 inference precision, with one infer request
    per concurrent caller (a request holds its outputs: two callers never share one)."""

    def __init__(self, core, converted, threads: int):
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads),
                  "PERFORMANCE_HINT": "LATENCY"}
        self._compiled = core.compile_model(converted, "CPU", config)
        self._outputs = len(self._compiled.outputs)
        self._idle: list = []  # requests made once and reused: making one per call costs time
        self._lock = threading.Lock()

    def infer(self, inputs: dict) -> list:
        """Every output of the graph on ``inputs`` (numbered numpy arrays), as tensors of their own."""
        with self._lock:
            request = self._idle.pop() if self._idle else None
        if request is None:
            request = self._compiled.create_infer_request()
        try:
            request.infer(inputs)
            return [torch.from_numpy(request.get_output_tensor(i).data.copy()) for i in range(self._outputs)]
        finally:
            with self._lock:
                self._idle.append(request)


def quantized(converted, samples: list):
    """``converted`` made int8 by NNCF, calibrated on ``samples`` (the graph's inputs, numpy)."""
    import nncf

    return nncf.quantize(converted, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(samples))


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

    def __init__(self, model, threads: int | None = None, int8: bool = False):
        try:
            import openvino as ov
            if int8:
                import nncf  # noqa: F401
        except ImportError as err:  # the fallback is PyTorch; the caller says so in /info
            raise RuntimeUnavailable(f"{err.name or 'openvino'} is not installed ({err})") from err
        self.int8 = int8
        self.name = "openvino_int8" if int8 else "openvino"
        self._ov = ov
        self._core = ov.Core()
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
                try:
                    converted = self._ov.convert_model(_ForwardImage(self._model).eval(), example_input=example)
                    if self.int8:
                        converted = quantized(converted, [image.numpy() for image in calibration_slices(size)])
                    compiled = CompiledGraph(self._core, converted, self._threads)
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
    """CT-like slices as the model receives them: soft tissue, a bright lesion, noise, W400/L40."""
    import numpy as np

    from .frames import SliceFrames
    from .windowing import choose_window

    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    array = np.full((size, size, count), -1000.0, np.float32)
    for k in range(count):
        body = ((i - size / 2) / (0.42 * size)) ** 2 + ((j - size / 2) / (0.32 * size)) ** 2 <= 1
        array[body, k] = 40.0
        radius = size * (0.03 + 0.1 * rng.random())
        centre = size * (0.35 + 0.3 * rng.random(2))
        array[(i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= radius ** 2, k] = 160.0
    array += rng.normal(0, 15, array.shape).astype(np.float32)
    frames = SliceFrames(array, choose_window(array, "CT", None), size)
    return [frames[k].unsqueeze(0) for k in range(count)]


def attach_cpu_runtime(model, runtime: str, warm_up_sizes=()) -> str:
    """Give ``model`` (a VolumePredictor) its CPU runtime; returns what runs the image encoder.

    ``"torch"`` detaches any runtime. ``"openvino"`` (or ``"openvino_int8"``) compiles and runs one slice per size in
    ``warm_up_sizes`` now; if OpenVINO is missing or cannot convert the model, the model keeps
    PyTorch and the returned text says why. ``"openvino_int8"`` also quantises memory attention
    (``runtime_memory_attention``); :func:`runtime_stages` says what runs each stage.
    """
    from .runtime_memory_attention import attach_memory_attention

    if runtime not in CPU_RUNTIMES:
        raise ValueError(f"cpu_runtime must be one of {CPU_RUNTIMES}, got {runtime!r}")
    model.__dict__.pop("_image_runtime", None)
    model.__dict__.pop("_memory_attention_runtime", None)
    encoder = _attach_image_encoder(model, runtime, warm_up_sizes)
    memory_attention = attach_memory_attention(model, runtime) if encoder == runtime else "torch"
    model.__dict__["_runtime_stages"] = {"image_encoder": encoder, "memory_attention": memory_attention}
    return encoder


def _attach_image_encoder(model, runtime: str, warm_up_sizes) -> str:
    if runtime == "torch":
        return "torch"
    try:
        encoder = OpenVinoImageEncoder(model, int8=runtime == "openvino_int8")
        with torch.inference_mode():
            for size in warm_up_sizes:
                encoder(torch.zeros(1, 3, int(size), int(size)))
    except RuntimeUnavailable as err:
        logger.warning("cpu_runtime %s unavailable, the image encoder runs on PyTorch: %s", runtime, err)
        return f"torch ({runtime} unavailable: {err})"
    model.__dict__["_image_runtime"] = encoder
    return runtime


def runtime_stages(model) -> dict:
    """What runs each stage of ``model`` on CPU: ``{"image_encoder": ..., "memory_attention": ...}``."""
    return dict(model.__dict__.get("_runtime_stages", {"image_encoder": "torch", "memory_attention": "torch"}))


def image_runtime(model):
    """The runtime attached to ``model`` (or to the model it is an input-size view of), or None."""
    return model.__dict__.get("_image_runtime")
