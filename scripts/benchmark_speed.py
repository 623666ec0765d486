"""Speed and memory of this app's 3D engine against MONAI Label's built-in SAM 2 task and
sam2's own video predictor, on the same synthetic volume and the same checkpoint.

    PYTHONPATH=apps/medsam2 python scripts/benchmark_speed.py --slices 32 128 --out bench.json

Each measurement runs in a fresh child process (peak memory is that process's maximum RSS;
importing the built-in task deletes its cache folder, so it is pointed at a private one).

- ``ours``: first request (box -> full 3D mask) and a correction (one more click on another
  slice). Rows: the faithful default (the preset's protocol, MedSAM2's for ``medsam2``:
  whole slices, two passes each from a prompts-only state, no option), then the default with
  each option alone (``crop_region``: a region around the prompts at the model's own scale;
  ``early_stop``; ``correction_stop``: a correction re-runs outward from the clicked slice
  until the masks meet the previous result), all three together, and the other protocol
  (``sam2``: both passes in one state). A correction with ``correction_stop`` off re-runs
  every slice, so rows without it time the correction only up to ``--full-correction-max-slices``.
- ``builtin``: ``Sam2InferTask`` 3D, the same two requests (it writes JPEGs on the first,
  propagates forward only from the lowest prompted slice, and re-encodes on every request).
- ``video``: sam2's ``build_sam2_video_predictor`` on a JPEG folder, box then both ways.
- ``precision``: our first request under CPU bf16 autocast, and with int8 linear layers
  (``cpu_int8``), each against float32 with the same weights: time and mask agreement
  (Dice), plus whether the CPU has bf16 units (amx_bf16 / avx512_bf16).

Stages (image encoder, memory attention, memory encoder, mask decoder) are timed by forward
hooks on the model's modules. ``--device cuda`` runs all three pipelines on a GPU (this app and
sam2's predictor under bf16 autocast) and adds each child's peak CUDA memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_pipelines import child_builtin, child_ours, child_video, dice, engine_rows, phantom, row_name
from bench_report import print_table, ratios, summarise
from bench_roofline import child_roofline, print_roofline, roofline_summary
from medsam2_engine.runtime import CPU_RUNTIMES

def run_child(args, mode: str, slices: int, cpu_bf16: str = "off", repeats: int | None = None,
              cpu_int8: str | None = None, cpu_runtime: str = "torch") -> dict:
    cpu_int8 = cpu_int8 or args.cpu_int8
    cmd = [sys.executable, __file__, "--child", mode, "--slices", str(slices), "--size", str(args.size),
           "--preset", args.preset, "--checkpoint", args.checkpoint, "--repeats", str(repeats or args.repeats),
           "--fraction", str(args.fraction), "--workdir", args.workdir, "--cpu-bf16", cpu_bf16,
           "--cpu-int8", cpu_int8, "--full-correction-max-slices", str(args.full_correction_max_slices),
           "--device", args.device, "--cpu-runtime", cpu_runtime, "--ahead-pause", str(args.ahead_pause)]
    if args.only_reference:
        cmd.append("--only-reference")
    print(f"[bench] {mode} slices={slices} bf16={cpu_bf16} int8={cpu_int8} runtime={cpu_runtime}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- parent
def _speed_rows(args, slices: int, vol_report: dict, own: str, builtin: dict) -> None:
    """The runtime and encode-ahead rows, each with its masks' Dice against PyTorch float32's."""
    reference = Path(args.workdir) / "mask_ours_torch.npy"
    rows = [(f"ours_{own}_reference+{runtime}", "reference", runtime) for runtime in args.cpu_runtimes
            if runtime != "torch"]
    if args.ahead_pause > 0:
        rows += [(f"ours_{own}_reference{'' if r == 'torch' else '+' + r}+encode_ahead_{args.ahead_pause:g}s",
                  "ahead", r) for r in args.cpu_runtimes]
    rows.append((f"ours_{own}_reference+second_user", "second_user", "torch"))
    for name, mode, runtime in rows:
        raw = run_child(args, mode, slices, cpu_runtime=runtime)
        row = vol_report[name] = summarise(name, raw)
        if "error" in row:
            continue
        row.update(ratios(row, builtin))
        row["cpu_runtime"], row["model_load_s"] = raw.get("cpu_runtime"), raw.get("model_load_s")
        row["cpu_runtime_stages"] = raw.get("cpu_runtime_stages")
        if mode == "ahead":
            row["encoded_before_click"] = raw["runs"][0]["encoded_before_click"]
        mask = Path(args.workdir) / f"mask_{mode}_{runtime}.npy"
        if reference.exists() and mask.exists():
            a, b = np.load(reference), np.load(mask)
            row["agreement_vs_torch_float32"] = {
                "dice": round(dice(b, a), 5) if (a.any() or b.any()) else None,
                "voxels_differing": int((a != b).sum()), "float32_voxels": int(a.sum())}


def parent(args) -> dict:
    from medsam2_engine.checkpoints import build_model, get_preset, save_checkpoint
    from medsam2_engine.precision import cpu_bf16_units

    weights = args.checkpoint
    if args.checkpoint == "random":
        torch.manual_seed(0)
        args.checkpoint = str(Path(args.workdir) / "random_seed0.pt")
        save_checkpoint(build_model(get_preset(args.preset), "random"), args.checkpoint)
        weights = "UNTRAINED random weights (seed 0): early-stop timings are not meaningful"
    report = {"weights": weights, "checkpoint": args.checkpoint, "preset": args.preset, "size": args.size,
              "device": args.device,
              "cpu_int8_ours": args.cpu_int8,
              "fraction": args.fraction, "repeats": args.repeats,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                          "cpu_bf16_units": list(cpu_bf16_units()),
                          "load_average_at_start": list(os.getloadavg())},
              "volumes": {}}
    for slices in args.slices:
        vol_report = {}
        builtin = summarise("builtin", run_child(args, "builtin", slices)) if not args.skip_builtin else {}
        ours_raw = run_child(args, "ours", slices)
        vol_report["builtin"] = builtin
        rows = engine_rows(args.preset)
        for protocol, early, local, region in rows:
            name = row_name(protocol, early, local, region, rows[0][0])
            vol_report[name] = summarise("ours", ours_raw, early=early, local=local, region=region,
                                         protocol=protocol)
            vol_report[name].update(ratios(vol_report[name], builtin))
        _speed_rows(args, slices, vol_report, rows[0][0], builtin)
        if not args.skip_roofline and args.device == "cpu":
            vol_report["roofline_float32"] = roofline_summary(run_child(args, "roofline", slices), builtin)
        if not args.skip_video:
            vol_report["sam2_video_jpeg"] = summarise("video", run_child(args, "video", slices))
            vol_report["sam2_video_jpeg"].update(ratios(vol_report["sam2_video_jpeg"], builtin))
        report["volumes"][str(slices)] = vol_report
        report["load_average_now"] = list(os.getloadavg())
        Path(args.out).write_text(json.dumps(report, indent=1))
    if args.precision_slices:
        n = args.precision_slices
        fp32 = summarise("fp32", run_child(args, "precision", n, "off", repeats=1, cpu_int8="off"))
        report["precision"] = {"slices": n, "float32": fp32}
        for name, bf16, int8 in (("bf16_autocast", "on", "off"), ("int8_linear", "off", "on")):
            other = summarise(name, run_child(args, "precision", n, bf16, repeats=1, cpu_int8=int8))
            a, b = (np.load(Path(args.workdir) / f"mask_bf16-{x}_int8-{y}.npy") if
                    (Path(args.workdir) / f"mask_bf16-{x}_int8-{y}.npy").exists() else None
                    for x, y in (("off", "off"), (bf16, int8)))
            agreement = None if a is None or b is None else {
                "dice_vs_fp32": round(dice(b, a), 4) if (a.any() or b.any()) else None,
                "voxels_differing": int((a != b).sum()), "fp32_voxels": int(a.sum()), "voxels": int(b.sum())}
            report["precision"][name] = {**other, "agreement": agreement,
                                         "speedup_vs_fp32": round(fp32["first_s"] / other["first_s"], 2)
                                         if fp32.get("first_s") and other.get("first_s") else None}
    report["load_average_now"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(report, indent=1))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, nargs="+", default=[32, 128])
    p.add_argument("--size", type=int, default=512, help="in-plane voxels of the synthetic volume")
    p.add_argument("--preset", default="medsam2", help="model preset (medsam2: SAM 2.1 tiny at 512 px)")
    p.add_argument("--checkpoint", default="random")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fraction", type=float, default=0.2, help="share of slices the structure spans")
    p.add_argument("--precision-slices", type=int, default=8,
                   help="volume for the bf16 and int8 checks against float32 (0: skip)")
    p.add_argument("--cpu-int8", choices=["off", "on"], default="off",
                   help="int8 linear layers for this app's rows (the built-in task stays float32)")
    p.add_argument("--full-correction-max-slices", type=int, default=64,
                   help="also time a correction that re-propagates the whole volume, up to this many slices")
    p.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (bf16 autocast, as the app runs there)")
    p.add_argument("--cpu-runtimes", nargs="+", default=["torch", "openvino"],
                   choices=list(CPU_RUNTIMES),
                   help="CPU runtimes of the image encoder for the extra rows (torch: float32 reference)")
    p.add_argument("--ahead-pause", type=float, default=10.0,
                   help="seconds between opening a study (encode-ahead starts) and the click (0: no such rows)")
    p.add_argument("--only-reference", action="store_true",
                   help="of this app's option rows, run the faithful default only")
    p.add_argument("--skip-builtin", action="store_true")
    p.add_argument("--skip-roofline", action="store_true",
                   help="skip counting the first request's FLOPs against the float32 matmul peak")
    p.add_argument("--skip-video", action="store_true")
    p.add_argument("--out", default="benchmark_speed.json")
    p.add_argument("--workdir", default=None)
    p.add_argument("--child", choices=["ours", "builtin", "video", "precision", "reference", "ahead", "roofline",
                                          "second_user"],
                   help=argparse.SUPPRESS)
    p.add_argument("--cpu-runtime", default="torch", help=argparse.SUPPRESS)
    p.add_argument("--cpu-bf16", default="off", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="medsam2-bench-")
    if args.child:
        import logging

        logging.basicConfig(level=logging.WARNING)
        torch.manual_seed(0)
        vol, ref = phantom(args.slices[0], args.size, args.fraction)
        args.mode = args.child
        child = {"ours": child_ours, "precision": child_ours, "reference": child_ours, "ahead": child_ours,
                 "second_user": child_ours,
                 "builtin": child_builtin, "roofline": child_roofline,
                 "video": child_video}[args.child]
        print(json.dumps(child(args, vol, ref)))
        return 0
    report = parent(args)
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1))
    print_table(report)
    for slices, rows in report["volumes"].items():
        if "roofline_float32" in rows:
            print(f"{slices} slices: ", end="")
            print_roofline(rows["roofline_float32"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
