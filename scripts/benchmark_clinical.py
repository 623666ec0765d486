"""Clinical-size speed: a box on a structure of a few slices in a CT of hundreds, then a correction.

    PYTHONPATH=apps/medsam2 python scripts/benchmark_clinical.py --checkpoint phantom.pt \\
        --slices 200 400 --span 20 --out clinical.json

On a 512 x 512 x N CT-like phantom (``medsam2_eval.phantoms.spindle_lesion``: a lesion over
``--span`` slices in the middle), three pipelines side by side in one run, each in a fresh
child process (peak memory is that process's maximum RSS):

- ``builtin``: MONAI Label's ``Sam2InferTask`` 3D (forward from the prompted slice to the end);
- ``full``: this app's MedSAM2 protocol with both passes to the volume's ends
  (``exact_stop`` off: the reference);
- ``default``: the app's default, whose passes end where nothing more is connected to the
  prompts (exact, see docs/performance.md).

Each: the first request (box on the lesion's largest slice -> 3D mask) and a correction (a
click on another slice of the lesion), with time to the full result, slice steps, slices
encoded, Dice against the phantom's mask and, for ``default``, the voxels that differ from
``full``'s. Weights: pass the phantom-trained checkpoint (``scripts/phantom_checkpoint.py``);
they prove timing and plumbing, never accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipelines import StageTimer, child_builtin, dice, peak_rss_mb, prompts_for  # noqa: E402
from medsam2_engine.runtime import CPU_RUNTIMES  # noqa: E402


def lesion_volume(slices: int, size: int, span: int) -> tuple:
    from medsam2_engine.phantoms import spindle_lesion

    return spindle_lesion(slices, size, span / slices, seed=0)


def child_engine(args, vol, ref) -> dict:
    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.propagation import EarlyStop
    from medsam2_engine.volume_io import Volume

    models = ModelSource(get_preset(args.preset), tempfile.mkdtemp(), checkpoint=args.checkpoint, device=args.device,
                         cpu_runtime=args.cpu_runtime)
    stages = StageTimer(models.get().model)
    box, click = prompts_for(ref)
    volume = Volume(vol, np.diag([0.8, 0.8, 2.5, 1.0]), declared_modality="CT")
    settings = EngineSettings(early_stop=EarlyStop(exact_stop=args.child == "default"))
    warm = Box(box.i0, box.j0, box.i1, box.j1, 0)  # one-off costs on two slices, not in the timing
    VolumeSegmenter(models, settings).run(Volume(vol[:, :, :2], np.eye(4), declared_modality="CT"),
                                          {"l": LabelPrompts(boxes=[warm])})
    seg = VolumeSegmenter(models, settings)
    stages.take()
    t = time.perf_counter()
    first = seg.run(volume, {"l": LabelPrompts(boxes=[box])}, session_key=("u",))
    t_first, st_first = time.perf_counter() - t, stages.take()
    t = time.perf_counter()
    corr = seg.run(volume, {"l": LabelPrompts(boxes=[box], clicks=[click])}, session_key=("u",))
    t_corr, st_corr = time.perf_counter() - t, stages.take()
    workdir = Path(args.workdir)
    np.save(workdir / f"{args.child}_first.npy", first.labels["l"].mask)
    np.save(workdir / f"{args.child}_correction.npy", corr.labels["l"].mask)
    stopped = first.labels["l"].exact_stop
    return {"first_s": round(t_first, 2), "correction_s": round(t_corr, 2),
            "first_steps": sum(p.slices for p in first.labels["l"].passes),
            "correction_steps": sum(p.slices for p in corr.labels["l"].passes),
            "first_encoded": first.session.slices_encoded, "correction_encoded": corr.session.slices_encoded,
            "first_dice": round(dice(first.labels["l"].mask, ref), 4),
            "correction_dice": round(dice(corr.labels["l"].mask, ref), 4),
            "segmented_slices": None if stopped is None else [stopped.first, stopped.last],
            "stages_first": st_first, "stages_correction": st_corr, "peak_rss_mb": round(peak_rss_mb(), 1)}


def child_builtin_row(args, vol, ref) -> dict:
    args.repeats = 1
    run = child_builtin(args, vol, ref)
    row = run["runs"][0]
    return {"first_s": round(row["first_s"], 2), "correction_s": round(row["correction_s"], 2),
            "first_steps": row["first_slices"], "correction_steps": row["correction_slices"],
            "first_dice": row["first_dice"], "correction_dice": row["correction_dice"],
            "stages_correction": row["stages_correction"], "peak_rss_mb": run["peak_rss_mb"]}


def run_child(args, mode: str, slices: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--slices", str(slices), "--size", str(args.size),
           "--span", str(args.span), "--preset", args.preset, "--checkpoint", args.checkpoint,
           "--workdir", args.workdir, "--device", args.device, "--cpu-runtime", args.cpu_runtime]
    print(f"[clinical] {mode}, {slices} slices", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(workdir: Path, request: str) -> dict | None:
    full, default = workdir / f"full_{request}.npy", workdir / f"default_{request}.npy"
    if not (full.exists() and default.exists()):
        return None
    a, b = np.load(full), np.load(default)
    return {"voxels_differing": int((a != b).sum()), "full_voxels": int(a.sum()), "identical": bool((a == b).all())}


def parent(args) -> dict:
    from medsam2_engine.precision import cpu_bf16_units

    report = {"checkpoint": args.checkpoint, "preset": args.preset, "size": args.size, "span": args.span,
              "device": args.device, "cpu_runtime": args.cpu_runtime,
              "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "cpu_bf16_units": list(cpu_bf16_units()),
                          "load_average_at_start": list(os.getloadavg())},
              "volumes": {}}
    for slices in args.slices:
        rows = {}
        for mode in args.pipelines:
            rows[mode] = run_child(args, mode, slices)
        for request in ("first", "correction"):
            rows[f"default_vs_full_{request}"] = agreement(Path(args.workdir), request)
        builtin, default, full = rows.get("builtin", {}), rows.get("default", {}), rows.get("full", {})
        if "first_s" in default:
            rows["correction_share_of_first"] = round(default["correction_s"] / default["first_s"], 3)
        if "first_s" in builtin and "first_s" in default:
            rows["first_speedup_vs_builtin"] = round(builtin["first_s"] / default["first_s"], 2)
        if "first_s" in full and "first_s" in default:
            rows["first_speedup_vs_full"] = round(rows["full"]["first_s"] / default["first_s"], 2)
        report["volumes"][str(slices)] = rows
        report["load_average_now"] = list(os.getloadavg())
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


def print_table(report: dict) -> None:
    print(f"{'slices':>6} {'pipeline':<8} {'first s':>8} {'steps':>5} {'corr s':>7} {'steps':>5} {'peak MB':>8} "
          f"{'Dice':>6}")
    for slices, rows in report["volumes"].items():
        for mode in ("builtin", "full", "default"):
            r = rows.get(mode)
            if r is None:
                continue
            if "error" in r:
                print(f"{slices:>6} {mode:<8} error")
                continue
            print(f"{slices:>6} {mode:<8} {r['first_s']:>8} {r['first_steps']:>5} {r['correction_s']:>7} "
                  f"{r['correction_steps']:>5} {r['peak_rss_mb']:>8} {r['first_dice']:>6}")
        print(f"{'':>6} default: {rows.get('first_speedup_vs_builtin')}x the built-in task's first result, "
              f"{rows.get('first_speedup_vs_full')}x the full protocol's; correction "
              f"{rows.get('correction_share_of_first')} of the first; vs full: {rows.get('default_vs_full_first')}, "
              f"correction {rows.get('default_vs_full_correction')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, nargs="+", default=[200, 400])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--span", type=int, default=20, help="slices the lesion spans (10-30 in a clinical CT)")
    p.add_argument("--preset", default="medsam2")
    p.add_argument("--checkpoint", required=True, help="the phantom-trained checkpoint (scripts/phantom_checkpoint.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cpu-runtime", default="torch", choices=list(CPU_RUNTIMES))
    p.add_argument("--pipelines", nargs="+", default=["builtin", "full", "default"],
                   choices=["builtin", "full", "default"])
    p.add_argument("--out", default="benchmark_clinical.json")
    p.add_argument("--workdir", default=None)
    p.add_argument("--child", choices=["builtin", "full", "default"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="medsam2-clinical-")
    if args.child:
        import logging

        logging.basicConfig(level=logging.WARNING)
        torch.manual_seed(0)
        vol, ref = lesion_volume(args.slices[0], args.size, args.span)
        child = child_builtin_row if args.child == "builtin" else child_engine
        print(json.dumps(child(args, vol, ref)))
        return 0
    started = time.monotonic()
    report = parent(args)
    report["seconds"] = round(time.monotonic() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
