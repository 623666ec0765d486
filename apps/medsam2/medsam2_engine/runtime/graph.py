"""What both CPU stages share: the runtimes' names, the compiled OpenVINO graph, int8 by NNCF."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import torch

from ..precision import cpu_int8_dot_units

logger = logging.getLogger(__name__)

CPU_RUNTIMES = ("torch", "openvino", "openvino_bf16", "openvino_int8")


class RuntimeUnavailable(RuntimeError):
    """The runtime is not installed, or cannot take this model: serve with PyTorch."""


def convert_graph(ov, module: torch.nn.Module, example_input, **options):
    """``ov.convert_model`` of ``module``, traced once by torch.jit on ``example_input``.

    OpenVINO's own tracing keeps torch.jit's ``check_trace``, which traces and runs the network
    twice more only to compare the second trace with the first. The graph is the same without
    it (compiled outputs bit-identical: tests/test_runtime_heads.py, scripts/benchmark_conversion.py),
    and a conversion takes 1.8x (MedSAM2's encoder) to 2.6x (sam2.1 tiny at 1024 px) less time."""
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    traced = TorchScriptPythonDecoder(module.eval(), example_input=example_input,
                                      trace_kwargs={"check_trace": False})
    return ov.convert_model(traced, example_input=example_input, **options)


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


def int8_overflow_fix() -> str:
    """NNCF's overflow fix for this CPU: its default (the first layer's weights in 7 bits) where the
    CPU has int8 dot-product units; every layer's where it has not. Without the fix on an AVX2-only
    CPU the products saturate: measured on a 2-core AMD EPYC (AVX2 only), the phantom model's int8
    encoder was off by 36% of float32's largest feature (0.68 of 1.90), its memory attention by 3.1%;
    with it, by 3.9% and 0.85% (docs/performance.md)."""
    return "first_layer_only" if cpu_int8_dot_units() else "enable"


def int8_key(int8: bool) -> tuple:
    """What an int8 graph's cache key adds: its overflow fix (a graph made for a VNNI CPU is not
    served on an AVX2-only one sharing the cache folder)."""
    return (int8_overflow_fix(),) if int8 else ()


def quantized(converted, samples: list):
    """``converted`` made int8 by NNCF, calibrated on ``samples`` (the graph's inputs, numpy), with
    the overflow fix this CPU needs (a part of every int8 graph's cache key)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    fix = AdvancedQuantizationParameters(overflow_fix=OverflowFix(int8_overflow_fix()))
    return nncf.quantize(converted, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(samples), advanced_parameters=fix)


class GraphCache:
    """Converted graphs on disk, keyed by the exact weights and what was asked of them, so that a
    restart with the same weights (a replica started again, a server restarted) neither traces
    nor compiles again: the converted graph is saved as OpenVINO IR and the compiled blob goes
    to OpenVINO's own model cache (``CACHE_DIR``). New weights give new keys: nothing stale is
    ever served. A cache that cannot be written is skipped (the graph is converted as before)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def configure(self, core) -> None:
        """Let ``core`` keep compiled blobs in the cache too."""
        try:
            (self.folder / "compiled").mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(self.folder / "compiled")})
        except Exception as err:  # noqa: BLE001 - an unwritable cache only costs the compile time
            logger.warning("OpenVINO model cache unavailable in %s: %s", self.folder, err)

    def converted(self, ov, core, key: str, convert):
        """The graph under ``key`` from disk, or ``convert()`` saved there under it."""
        path = self.folder / f"{key}.xml"
        if path.is_file() and path.with_suffix(".bin").is_file():
            try:
                model = core.read_model(str(path))
                self.hits += 1
                return model
            except Exception as err:  # noqa: BLE001 - a damaged entry is converted again
                logger.warning("cached graph %s unreadable (%s): converting again", path, err)
        self.misses += 1
        model = convert()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.folder))
            try:
                ov.save_model(model, str(staging / path.name), compress_to_fp16=False)
                os.replace(staging / path.with_suffix(".bin").name, path.with_suffix(".bin"))
                os.replace(staging / path.name, path)  # the .xml last: it marks the entry complete
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except Exception as err:  # noqa: BLE001 - serving goes on without the cache
            logger.warning("could not cache the converted graph in %s: %s", self.folder, err)
        return model


def cache_key(module: torch.nn.Module, *what) -> str:
    """A digest of ``module``'s exact weights and buffers, and of ``what`` (runtime, size, versions)."""
    import openvino

    digest = hashlib.sha256(repr((openvino.__version__, torch.__version__, *what)).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        if isinstance(tensor, torch.Tensor) and not tensor.is_quantized:
            digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # packed or quantized parameters (cpu_int8): their serialised form
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            digest.update(buffer.getvalue())
    return digest.hexdigest()[:32]
