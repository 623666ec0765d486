"""How far a CPU runtime could take the faithful default: the request's float32 work, counted,
against this machine's float32 matrix-multiply peak, measured in the same run.

``child_roofline`` runs the benchmark's first request (the preset's protocol, whole slices, a
box) once under torch's ``FlopCounterMode``, which counts every matmul, convolution and
attention of the model by module, and once timed with the stage hooks. The peak is the
median of a few 2048x2048 float32 matrix products with the same threads. ``floor_s`` (the
request's FLOPs at that peak) is a lower bound for any float32 runtime on this machine,
fused or not: it ignores everything that is not a multiply-add.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

# FlopCounterMode's module names (class paths) for the SAM 2 stages the benchmark times
STAGE_MODULES = {"image_encoder": "ImageEncoder", "memory_attention": "MemoryAttention",
                 "memory_encoder": "MemoryEncoder", "mask_decoder": "MaskDecoder", "prompt_encoder": "PromptEncoder"}
_registered = False


def _count_cpu_attention() -> None:
    """torch counts the CUDA attention kernels only; the CPU one has the same FLOPs."""
    global _registered
    if _registered:
        return
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        @flop_counter.register_flop_formula(cpu_sdpa)
        def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_flop_count(query, key, value)
    _registered = True


def sgemm_peak_gflops(n: int = 2048, repeats: int = 7, dtype=torch.float32) -> float:
    """Median GFLOPS of an n x n matrix product in ``dtype`` at torch's current thread count."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def counted_gflop(run) -> tuple:
    """(total GFLOP, GFLOP per stage) of ``run()``."""
    _count_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        run()
    counts = counter.get_flop_counts()
    stages = {name: round(sum(counts.get(module, {}).values()) / 1e9, 2) for name, module in STAGE_MODULES.items()}
    return round(counter.get_total_flops() / 1e9, 2), stages


def child_roofline(args, vol, ref) -> dict:
    from bench_pipelines import StageTimer, prompts_for

    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.volume_io import Volume

    models = ModelSource(get_preset(args.preset), tempfile.mkdtemp(), checkpoint=args.checkpoint, device="cpu",
                         cpu_runtime="torch")
    stages = StageTimer(models.get().model)
    box, _ = prompts_for(ref)
    segmenter = VolumeSegmenter(models, EngineSettings())
    warm_box = Box(box.i0, box.j0, box.i1, box.j1, 0)
    segmenter.run(Volume(vol[:, :, :2], np.eye(4), declared_modality="CT"), {"l": LabelPrompts(boxes=[warm_box])},
                  session_key=("warm",))

    def first_request(key):
        # a fresh array, no sessions: encoded slices are shared per image, and both runs must encode every slice
        segmenter.memory.clear()
        fresh = Volume(vol.copy(), np.diag([0.8, 0.8, 2.5, 1.0]), declared_modality="CT")
        return segmenter.run(fresh, {"l": LabelPrompts(boxes=[box])}, session_key=(key,))

    total, per_stage = counted_gflop(lambda: first_request("counted"))
    stages.take()
    started = time.perf_counter()
    result = first_request("timed")
    seconds = time.perf_counter() - started
    timed = stages.take()
    peak = sgemm_peak_gflops()
    slices = sum(p.slices for p in result.labels["l"].passes)
    if result.session.slices_encoded != len(vol[0, 0]):
        raise RuntimeError(f"the timed request encoded {result.session.slices_encoded} slices, not all {vol.shape[2]}")
    out = {"threads": torch.get_num_threads(), "sgemm_peak_gflops": round(peak, 1), "request_gflop": total,
           "request_s": round(seconds, 2), "slices": slices, "achieved_gflops": round(total / seconds, 1),
           "share_of_peak": round(total / seconds / peak, 3), "floor_s": round(total / peak, 2),
           "slices_per_s_at_floor": round(slices / (total / peak), 3), "stages": {}}
    for name, gflop in per_stage.items():
        stage_s = timed[name]["seconds"]
        out["stages"][name] = {"gflop": gflop, "seconds": stage_s, "calls": timed[name]["calls"],
                               "share_of_peak": round(gflop / stage_s / peak, 3) if stage_s else None}
    return out


def roofline_summary(row: dict, builtin: dict) -> dict:
    """The row with the best float32 throughput ratio to the built-in task this machine allows."""
    if "error" in row or not builtin.get("first_slices_per_s"):
        return row
    return {**row, "max_throughput_vs_builtin_float32": round(row["slices_per_s_at_floor"]
                                                               / builtin["first_slices_per_s"], 2)}


def print_roofline(row: dict) -> None:
    if not row or "error" in row:
        print(f"roofline: {row.get('error', 'skipped')[-300:] if row else 'skipped'}")
        return
    print(f"roofline ({row['threads']} threads): float32 matmul peak {row['sgemm_peak_gflops']} GFLOPS; the first "
          f"request is {row['request_gflop']} GFLOP, ran in {row['request_s']} s = {row['achieved_gflops']} GFLOPS "
          f"({row['share_of_peak']:.0%} of peak); no float32 runtime can take under {row['floor_s']} s "
          f"({row['slices_per_s_at_floor']} slices/s, at most {row.get('max_throughput_vs_builtin_float32')}x "
          f"the built-in task's throughput)")
    for name, stage in row["stages"].items():
        if stage["calls"]:
            share = "-" if stage["share_of_peak"] is None else f"{stage['share_of_peak']:.0%}"
            print(f"    {name:<17} {stage['gflop']:>8} GFLOP {stage['seconds']:>7} s {stage['calls']:>3} calls "
                  f"{share:>5} of peak")
