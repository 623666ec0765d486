"""What both CPU stages share: the runtimes' names, the compiled OpenVINO graph, int8 by NNCF."""

from __future__ import annotations

import threading

import torch

CPU_RUNTIMES = ("torch", "openvino", "openvino_bf16", "openvino_int8")


class RuntimeUnavailable(RuntimeError):
    """The runtime is not installed, or cannot take this model: serve with PyTorch."""


class CompiledGraph:
    """An OpenVINO graph compiled for CPU at float32 inference precision, with one infer request
    per concurrent caller (a request holds its outputs: two callers never share one)."""

    def __init__(self, core, converted, threads: int, precision: str = "f32"):
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads),
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
