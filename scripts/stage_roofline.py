"""Each SAM 2 stage's time per slice step beside this CPU's roofline, for each CPU runtime.

    PYTHONPATH=apps/medsam2:scripts python scripts/stage_roofline.py --checkpoint phantom.pt \\
        --runtimes torch openvino_bf16 --out reports/stage_roofline.json

A correction on a 512 x 512 x N CT-like phantom (every slice already encoded, so a step is
memory attention, prompt encoder + mask decoder, memory encoder and sam2's glue), and one
slice's image encoding, timed per stage by wrapping sam2's methods for that stage (the
runtimes replace the modules' calls, so module hooks would miss them). FLOPs per call come
from torch's ``FlopCounterMode`` on the same request in float32. The roofline: the best
matrix-multiply rate this machine reaches with the same threads in float32 and in bf16
(torch's oneDNN kernels; bf16 runs on AVX-512 bf16 or AMX units where ``lscpu`` lists them,
and is emulated, slower, where it does not), and its copy bandwidth. ``floor`` is a stage's
FLOPs at the peak of its precision: no runtime can beat it on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "apps" / "medsam2"))

# sam2 methods that hold each stage of one slice step, and the module FlopCounterMode names
STEP_STAGES = {
    "memory_attention": ("_prepare_memory_conditioned_features", "MemoryAttention"),
    "mask_decoder": ("_forward_sam_heads", "MaskDecoder"),  # prompt encoder + mask decoder
    "memory_encoder": ("_encode_new_memory", "MemoryEncoder"),
}
ENCODER = ("forward_image", "ImageEncoder")


def copy_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    src = torch.ones(mb * 2**18)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - started)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9  # read + write


@contextmanager
def timed_methods(cls, names: dict):
    """Wall time and calls of each ``cls`` method named (outermost call only), restored after."""
    seconds = {stage: 0.0 for stage in names}
    calls = {stage: 0 for stage in names}
    originals = {stage: getattr(cls, method) for stage, method in names.items()}

    def wrap(stage, original):
        def timed(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                seconds[stage] += time.perf_counter() - started
                calls[stage] += 1
        return timed

    for stage, method in names.items():
        setattr(cls, method, wrap(stage, originals[stage]))
    try:
        yield seconds, calls
    finally:
        for stage, method in names.items():
            setattr(cls, method, originals[stage])


def stage_times(checkpoint: str, runtime: str, vol: np.ndarray, ref: np.ndarray) -> dict:
    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.predictor import VolumePredictor
    from medsam2_engine.prompts import Box, Click, LabelPrompts
    from medsam2_engine.volume_io import Volume
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter

    models = ModelSource(get_preset("medsam2"), tempfile.mkdtemp(), checkpoint=checkpoint, device="cpu",
                         cpu_runtime=runtime)
    segmenter = VolumeSegmenter(models, EngineSettings())
    k = int(np.argmax(ref.sum(axis=(0, 1))))
    ii, jj = np.nonzero(ref[:, :, k])
    box = Box(int(ii.min()) - 2, int(jj.min()) - 2, int(ii.max()) + 2, int(jj.max()) + 2, k)
    volume = Volume(vol, np.diag([0.8, 0.8, 2.5, 1.0]), declared_modality="CT")
    first = {"l": LabelPrompts(boxes=[box])}
    names = {stage: method for stage, (method, _) in {**STEP_STAGES, "image_encoder": ENCODER}.items()}
    session_key = ("stages",)
    with timed_methods(VolumePredictor, names) as (seconds, calls):
        segmenter.run(volume, first, session_key)
        encode_s, encode_calls = seconds["image_encoder"], calls["image_encoder"]
        for stage in seconds:
            seconds[stage], calls[stage] = 0.0, 0
        ci, cj = np.argwhere(ref[:, :, k + 2]).mean(axis=0).round().astype(int)
        correction = {"l": LabelPrompts(boxes=[box], clicks=[Click(int(ci), int(cj), k + 2, True)])}
        started = time.perf_counter()
        result = segmenter.run(volume, correction, session_key)
        step_total = time.perf_counter() - started
    steps = sum(p.slices for p in result.labels["l"].passes)
    out = {"runtime": models.cpu_runtime, "steps": steps, "correction_s": round(step_total, 3),
           "image_encoder": {"s_per_call": round(encode_s / max(encode_calls, 1), 4), "calls": encode_calls}}
    for stage in STEP_STAGES:
        out[stage] = {"s_per_call": round(seconds[stage] / max(calls[stage], 1), 4), "calls": calls[stage]}
    inside = sum(seconds[stage] for stage in STEP_STAGES)
    out["glue"] = {"s_per_step": round((step_total - inside) / max(steps, 1), 4)}
    return out


def flops_per_call(checkpoint: str, vol: np.ndarray, ref: np.ndarray) -> dict:
    """GFLOP per call of each stage, float32 PyTorch, one first request counted."""
    from bench_roofline import _count_cpu_attention
    from torch.utils.flop_counter import FlopCounterMode

    from medsam2_engine.predictor import VolumePredictor

    _count_cpu_attention()
    names = {stage: method for stage, (method, _) in {**STEP_STAGES, "image_encoder": ENCODER}.items()}
    with timed_methods(VolumePredictor, names) as (_, calls), FlopCounterMode(display=False) as counter:
        stage_times_first_only(checkpoint, vol, ref)
    counts = counter.get_flop_counts()
    out = {}
    for stage, (_, module) in {**STEP_STAGES, "image_encoder": ENCODER}.items():
        flops = sum(counts.get(module, {}).values())
        if stage == "mask_decoder":
            flops += sum(counts.get("PromptEncoder", {}).values())
        out[stage] = round(flops / 1e9 / max(calls[stage], 1), 3)
    return out


def stage_times_first_only(checkpoint, vol, ref) -> None:
    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.volume_io import Volume
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter

    models = ModelSource(get_preset("medsam2"), tempfile.mkdtemp(), checkpoint=checkpoint, device="cpu",
                         cpu_runtime="torch")
    k = int(np.argmax(ref.sum(axis=(0, 1))))
    ii, jj = np.nonzero(ref[:, :, k])
    box = Box(int(ii.min()) - 2, int(jj.min()) - 2, int(ii.max()) + 2, int(jj.max()) + 2, k)
    VolumeSegmenter(models, EngineSettings()).run(Volume(vol, np.diag([0.8, 0.8, 2.5, 1.0]), declared_modality="CT"),
                                                  {"l": LabelPrompts(boxes=[box])}, ("flops",))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="", help="phantom-trained weights (none: random weights)")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "auto"])
    parser.add_argument("--slices", type=int, default=220)
    parser.add_argument("--span", type=int, default=24, help="slices the lesion spans")
    parser.add_argument("--out", default="reports/stage_roofline.json")
    parser.add_argument("--bf16-heads", action="store_true",
                        help="also run the mask decoder and memory encoder at bf16 under openvino_bf16 (not the default)")
    args = parser.parse_args(argv)
    if args.bf16_heads:
        from medsam2_engine.runtime import heads

        heads.HEADS["openvino_bf16"] = heads.BF16_HEADS

    from benchmark_replicas import cpu_name
    from bench_pipelines import phantom
    from bench_roofline import sgemm_peak_gflops
    from medsam2_engine.precision import cpu_bf16_units

    vol, ref = phantom(args.slices, 512, args.span / args.slices)
    report = {"cpu": cpu_name(), "cpu_bf16_units": cpu_bf16_units(), "cores": len(os.sched_getaffinity(0)),
              "threads": torch.get_num_threads(), "weights": args.checkpoint or "random (timing only)",
              "volume": f"512 x 512 x {args.slices} phantom, lesion on {int(ref.any(axis=(0, 1)).sum())} slices; "
                        "a correction with every slice it reaches encoded"}
    report["peak_gflops"] = {"float32": round(sgemm_peak_gflops(dtype=torch.float32), 1),
                             "bfloat16": round(sgemm_peak_gflops(dtype=torch.bfloat16), 1)}
    report["copy_gbs"] = round(copy_bandwidth_gbs(), 1)
    report["gflop_per_call"] = flops_per_call(args.checkpoint, vol, ref)
    report["runtimes"] = {}
    for runtime in args.runtimes:
        row = stage_times(args.checkpoint, runtime, vol, ref)
        report["runtimes"][row["runtime"]] = row
        print(json.dumps(row))
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def print_table(report: dict) -> None:
    peak = report["peak_gflops"]
    print(f"{report['cpu']} ({', '.join(report['cpu_bf16_units']) or 'no bf16 units'}), {report['threads']} threads: "
          f"matmul peak float32 {peak['float32']} GFLOPS, bf16 {peak['bfloat16']} GFLOPS; copy {report['copy_gbs']} GB/s")
    print("| stage | GFLOP per call | floor float32 / bf16 | " + " | ".join(report["runtimes"]) + " |")
    for stage, gflop in report["gflop_per_call"].items():
        floors = f"{gflop / peak['float32'] * 1000:.0f} / {gflop / peak['bfloat16'] * 1000:.0f} ms"
        cells = [f"{row[stage]['s_per_call'] * 1000:.0f} ms" for row in report["runtimes"].values()]
        print(f"| {stage} | {gflop} | {floors} | " + " | ".join(cells) + " |")
    cells = [f"{row['glue']['s_per_step'] * 1000:.0f} ms" for row in report["runtimes"].values()]
    print("| sam2's glue per step | | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
