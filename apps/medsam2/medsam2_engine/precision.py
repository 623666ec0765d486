"""Numeric precision on CPU: bf16 autocast where the CPU has bf16 units, int8 linear layers.

bf16 autocast only pays on CPUs with bf16 matrix/vector units (Intel AMX ``amx_bf16``, AVX-512
``avx512_bf16``); elsewhere PyTorch emulates it and it is several times *slower* than float32
(measured: 2-core AMD EPYC without those flags, SAM 2.1 tiny encoder at 512 px, 2.7 s float32
vs 12-13 s bf16 per slice). ``"auto"`` therefore turns it on only where the units exist.

Where there are no such units, ``quantize_int8`` is the lever left: the linear layers of the
stages that run once per slice (image encoder, memory attention, memory encoder) become
dynamically quantized int8 (weights int8, activations quantized per call; fbgemm's AVX2
kernels). It changes the numbers, so it is off by default; the speed benchmark measures
both its speed and its masks against float32 with the same weights.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INT8_DOT_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
INT8_MODULES = ("image_encoder", "memory_attention", "memory_encoder")
CPU_BF16_CHOICES = ("off", "on", "auto")


@lru_cache(maxsize=4)
def _cpu_flags(cpuinfo_path: str) -> frozenset:
    try:
        with open(cpuinfo_path) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_units(cpuinfo_path: str = "/proc/cpuinfo") -> tuple:
    """The bf16 flags this CPU reports (empty when none, or when /proc/cpuinfo is unreadable)."""
    flags = _cpu_flags(cpuinfo_path)
    return tuple(f for f in BF16_FLAGS if f in flags)


def cpu_int8_dot_units(cpuinfo_path: str = "/proc/cpuinfo") -> tuple:
    """The int8 dot-product flags this CPU reports (VNNI, AMX int8). Without them int8 products are
    summed in 16 bits and can saturate (AVX2's ``vpmaddubsw``), which int8 graphs must allow for."""
    flags = _cpu_flags(cpuinfo_path)
    return tuple(f for f in INT8_DOT_FLAGS if f in flags)


def use_cpu_bf16(setting: str = "off") -> bool:
    if setting not in CPU_BF16_CHOICES:
        raise ValueError(f"cpu_bf16 must be one of {CPU_BF16_CHOICES}, got {setting!r}")
    return setting == "on" or (setting == "auto" and bool(cpu_bf16_units()))


def autocast_for(device: str, cpu_bf16: str = "off"):
    """bf16 autocast on CUDA (with the reference's attention kernel, see cuda_numerics.py); on CPU only
    if ``cpu_bf16`` asks for it; float32 otherwise."""
    if str(device).startswith("cuda"):
        return _cuda_scope(str(device))
    if use_cpu_bf16(cpu_bf16):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _cuda_scope(device: str):
    from .cuda_numerics import attention_context

    with torch.autocast("cuda", dtype=torch.bfloat16), attention_context(device):
        yield


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Make the per-slice stages' ``nn.Linear`` layers dynamic int8, in place (CPU inference only)."""
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        for name in INT8_MODULES:
            stage = getattr(model, name)
            setattr(model, name, torch.ao.quantization.quantize_dynamic(stage, {torch.nn.Linear}, dtype=torch.qint8))
    return model
