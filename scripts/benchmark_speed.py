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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_report import print_table, ratios, summarise

STAGES = {"image_encoder": "image_encoder", "memory_attention": "memory_attention",
          "memory_encoder": "memory_encoder", "mask_decoder": "sam_mask_decoder", "prompt_encoder": "sam_prompt_encoder"}


class StageTimer:
    """Wall time spent in each SAM 2 stage, by forward hooks (outermost call only)."""

    def __init__(self, model):
        self.seconds = {name: 0.0 for name in STAGES}
        self.calls = {name: 0 for name in STAGES}
        for name, attr in STAGES.items():
            module = getattr(model, attr)
            module.register_forward_pre_hook(self._pre(name))
            module.register_forward_hook(self._post(name))
        self._start = {}

    def _pre(self, name):
        def hook(*_):
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(*_):
            self.seconds[name] += time.perf_counter() - self._start.pop(name)
            self.calls[name] += 1
        return hook

    def take(self) -> dict:
        out = {k: {"seconds": round(v, 3), "calls": self.calls[k]} for k, v in self.seconds.items()}
        self.seconds = {k: 0.0 for k in self.seconds}
        self.calls = {k: 0 for k in self.calls}
        return out


def phantom(slices: int, size: int, fraction: float, seed: int = 0) -> tuple:
    """A CT-like volume [i, j, k] in HU: body, and a lesion spanning ``fraction`` of the slices."""
    from medsam2_eval.phantoms import spindle_lesion

    return spindle_lesion(slices, size, fraction, seed)


def prompts_for(ref: np.ndarray) -> tuple:
    from medsam2_eval.clicks import box_prompt
    from medsam2_engine.prompts import Click

    box = box_prompt(ref)
    k2 = min(box.k + max(1, int(np.nonzero(ref.any(axis=(0, 1)))[0].size // 3)), ref.shape[2] - 1)
    ii, jj = np.nonzero(ref[:, :, k2]) if ref[:, :, k2].any() else np.nonzero(ref[:, :, box.k])
    click = Click(float(np.median(ii)), float(np.median(jj)), int(k2), True)
    return box, click


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_cuda_mb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------- children
def engine_rows(preset_name: str) -> list:
    """(row name, protocol, early stop, correction stop, crop region): the faithful default first."""
    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.protocols import default_protocol

    own = default_protocol(get_preset(preset_name))
    other = "sam2" if own == "medsam2" else "medsam2"
    return [(own, False, False, False), (own, False, False, True), (own, True, False, False),
            (own, False, True, False), (own, True, True, True), (other, False, False, False)]


def row_name(protocol: str, early: bool, local: bool, region: bool, own: str) -> str:
    options = [name for name, on in (("crop_region", region), ("early_stop", early), ("correction_stop", local)) if on]
    if protocol != own:
        return f"ours_{protocol}_protocol"
    return f"ours_{protocol}_reference" + "".join(f"+{o}" for o in options)


def _region_json(report):
    """The label's crop region as the app's JSON shows it (None: whole slices throughout)."""
    if report is None:
        return None
    region = report.region
    return {**(region.to_json() if region else {"whole_slices": True}), "grows": report.grows}


def child_ours(args, vol, ref) -> dict:
    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.engine import EngineSettings, VolumeSegmenter
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.propagation import CorrectionStop, EarlyStop
    from medsam2_engine.crop_region import CropRegionSettings
    from medsam2_engine.volume_io import Volume

    t = time.perf_counter()
    models = ModelSource(get_preset(args.preset), tempfile.mkdtemp(), checkpoint=args.checkpoint, device=args.device,
                         cpu_int8=args.cpu_int8 == "on", cpu_runtime=args.cpu_runtime)
    stages = StageTimer(models.get().model)
    load_s = time.perf_counter() - t
    rss_model = peak_rss_mb()
    box, click = prompts_for(ref)
    volume = Volume(vol, np.diag([0.8, 0.8, 2.5, 1.0]), declared_modality="CT")
    out = {"rss_after_model_mb": round(rss_model, 1), "runs": [], "model_load_s": round(load_s, 2),
           "cpu_runtime": models.runtime_in_use}
    configs = [(protocol, *options) for protocol, *options in engine_rows(args.preset)]
    if args.mode != "ours" or args.only_reference:
        configs = configs[:1]
    if args.mode == "ahead":
        return _ahead_runs(args, models, configs[0][0], volume, box, ref, out)
    # the first call in a process pays one-off costs: spend them on two slices, not on the first row
    warm_box = Box(box.i0, box.j0, box.i1, box.j1, 0)
    VolumeSegmenter(models, EngineSettings(cpu_bf16=args.cpu_bf16)).run(
        Volume(vol[:, :, :2], np.eye(4), declared_modality="CT"), {"l": LabelPrompts(boxes=[warm_box])})
    stages.take()
    for protocol, early, local, region in configs:
        seg = VolumeSegmenter(models, EngineSettings(protocol=protocol, cpu_bf16=args.cpu_bf16,
                                                     crop_region=CropRegionSettings(enabled=region),
                                                     correction_stop=CorrectionStop(enabled=local)))
        stop = EarlyStop(enabled=early)
        for rep in range(args.repeats):
            key = (f"rep{rep}",)
            stages.take()
            t = time.perf_counter()
            first = seg.run(volume, {"l": LabelPrompts(boxes=[box])}, session_key=key,
                            options=seg.settings.options(early_stop=stop))
            t_first, st_first = time.perf_counter() - t, stages.take()
            # without correction_stop a correction re-runs every slice: long volumes time the first request only
            corr = t_corr = st_corr = None
            if local or vol.shape[2] <= args.full_correction_max_slices:
                t = time.perf_counter()
                corr = seg.run(volume, {"l": LabelPrompts(boxes=[box], clicks=[click])}, session_key=key,
                               options=seg.settings.options(early_stop=stop))
                t_corr, st_corr = time.perf_counter() - t, stages.take()
            out["runs"].append({
                "protocol": protocol, "early_stop": early, "correction_stop": local, "crop_region": region,
                "region": _region_json(first.labels["l"].crop_region), "first_s": t_first, "correction_s": t_corr,
                "first_slices": sum(p.slices for p in first.labels["l"].passes),
                "first_encoded": first.session.slices_encoded,
                "correction_slices": corr and sum(p.slices for p in corr.labels["l"].passes),
                "correction_encoded": corr and corr.session.slices_encoded,
                "first_dice": round(dice(first.labels["l"].mask, ref), 4),
                "correction_dice": corr and round(dice(corr.labels["l"].mask, ref), 4),
                "stages_first": st_first, "stages_correction": st_corr,
            })
            if rep == 0 and (protocol, early, local, region) == configs[0]:
                np.save(Path(args.workdir) / f"mask_{args.mode}_{args.cpu_runtime}.npy", first.labels["l"].mask)
            if args.mode == "precision":
                np.save(Path(args.workdir) / f"mask_bf16-{args.cpu_bf16}_int8-{args.cpu_int8}.npy",
                        first.labels["l"].mask)
            seg.sessions.clear()
    out["peak_rss_mb"], out["peak_cuda_mb"] = round(peak_rss_mb(), 1), peak_cuda_mb()
    return out


def _ahead_runs(args, models, protocol, volume, box, ref, out) -> dict:
    """The study opened (encode-ahead starts), ``--ahead-pause`` s of looking at it, then the box:
    the time from that click to the full 3D result."""
    from medsam2_engine.encode_ahead import EncodeAhead
    from medsam2_engine.engine import EngineSettings, VolumeSegmenter
    from medsam2_engine.prompts import LabelPrompts

    for rep in range(args.repeats):
        seg = VolumeSegmenter(models, EngineSettings(protocol=protocol, cpu_bf16=args.cpu_bf16))
        key = (f"ahead{rep}",)
        job = EncodeAhead(seg).request(key, volume)
        time.sleep(args.ahead_pause)
        encoded_at_click = job.encoded
        t = time.perf_counter()
        first = seg.run(volume, {"l": LabelPrompts(boxes=[box])}, session_key=key)
        t_first = time.perf_counter() - t
        job.cancelled.set()
        job.finished.wait()
        out["runs"].append({"protocol": protocol, "first_s": t_first, "pause_s": args.ahead_pause,
                            "encoded_before_click": encoded_at_click,
                            "first_slices": sum(p.slices for p in first.labels["l"].passes),
                            "first_encoded": first.session.slices_encoded,
                            "first_dice": round(dice(first.labels["l"].mask, ref), 4)})
        if rep == 0:
            np.save(Path(args.workdir) / f"mask_ahead_{args.cpu_runtime}.npy", first.labels["l"].mask)
        seg.sessions.clear()
    out["peak_rss_mb"], out["peak_cuda_mb"] = round(peak_rss_mb(), 1), peak_cuda_mb()
    return out


def child_builtin(args, vol, ref) -> dict:
    from medsam2_engine.checkpoints import get_preset
    from medsam2_eval.builtin_sam2 import BuiltinSam2Method
    from medsam2_eval.cases import Case, Structure
    from medsam2_engine.volume_io import Volume

    workdir = Path(tempfile.mkdtemp(prefix="bench-builtin-"))
    method = BuiltinSam2Method(get_preset(args.preset), args.checkpoint, workdir, device=args.device)
    box, click = prompts_for(ref)
    out = {"runs": []}
    stages = None
    for rep in range(args.repeats):
        case = Case(f"rep{rep}", Volume(vol, np.diag([0.8, 0.8, 2.5, 1.0])), [Structure("l", ref)])
        method.begin(case, case.structures[0], "bench")
        if stages is not None:
            stages.take()
        t = time.perf_counter()
        mask1, info1 = method.segment(box, [])
        t_first = time.perf_counter() - t
        if stages is None:  # the model exists after the first request
            stages = StageTimer(method.task.predictors[args.device])
            out["rss_after_model_mb"] = round(peak_rss_mb(), 1)
        st_first = stages.take()
        t = time.perf_counter()
        mask2, info2 = method.segment(box, [click])
        t_corr, st_corr = time.perf_counter() - t, stages.take()
        out["runs"].append({"first_s": t_first, "correction_s": t_corr, "first_slices": info1["slices_propagated"],
                            "correction_slices": info2["slices_propagated"],
                            "first_dice": round(dice(mask1, ref), 4), "correction_dice": round(dice(mask2, ref), 4), "stages_first": st_first if rep else None,
                            "stages_correction": st_corr})
    out["peak_rss_mb"], out["peak_cuda_mb"] = round(peak_rss_mb(), 1), peak_cuda_mb()
    return out


def child_video(args, vol, ref) -> dict:
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor

    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.windowing import choose_window

    preset = get_preset(args.preset)
    GlobalHydra.instance().clear()
    initialize_config_module("sam2", version_base="1.2")
    extra = [f"++{k}={json.dumps(v)}" for k, v in preset.overrides.items()]
    predictor = build_sam2_video_predictor(preset.config, args.checkpoint, device=args.device,
                                           hydra_overrides_extra=extra)
    stages = StageTimer(predictor)
    box, _ = prompts_for(ref)
    window = choose_window(vol, "CT", None)
    out = {"runs": []}
    for rep in range(args.repeats):
        folder = Path(tempfile.mkdtemp(prefix="bench-jpeg-"))
        t = time.perf_counter()
        for k in range(vol.shape[2]):
            plane = (window.apply(vol[:, :, k]).T * 255).astype(np.uint8)
            Image.fromarray(plane).convert("RGB").save(folder / f"{k:05d}.jpg", quality=95)
        t_jpeg = time.perf_counter() - t
        stages.take()
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=args.device.startswith("cuda")):
            t = time.perf_counter()
            state = predictor.init_state(str(folder))
            predictor.add_new_points_or_box(state, frame_idx=box.k, obj_id=1,
                                            box=np.array([box.i0, box.j0, box.i1, box.j1], np.float32))
            n = sum(1 for _ in predictor.propagate_in_video(state, start_frame_idx=box.k))
            n += sum(1 for _ in predictor.propagate_in_video(state, start_frame_idx=box.k, reverse=True))
            t_first = time.perf_counter() - t
        out["runs"].append({"jpeg_write_s": t_jpeg, "first_s": t_first, "first_slices": n, "stages_first": stages.take()})
    out["peak_rss_mb"], out["peak_cuda_mb"] = round(peak_rss_mb(), 1), peak_cuda_mb()
    return out


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
def dice(a: np.ndarray, b: np.ndarray) -> float:
    from medsam2_engine.mask_measures import dice as mask_dice

    return mask_dice(a.astype(bool), b.astype(bool))


def _speed_rows(args, slices: int, vol_report: dict, own: str, builtin: dict) -> None:
    """The runtime and encode-ahead rows, each with its masks' Dice against PyTorch float32's."""
    reference = Path(args.workdir) / "mask_ours_torch.npy"
    rows = [(f"ours_{own}_reference+{runtime}", "reference", runtime) for runtime in args.cpu_runtimes
            if runtime != "torch"]
    if args.ahead_pause > 0:
        rows += [(f"ours_{own}_reference{'' if r == 'torch' else '+' + r}+encode_ahead_{args.ahead_pause:g}s",
                  "ahead", r) for r in args.cpu_runtimes]
    for name, mode, runtime in rows:
        raw = run_child(args, mode, slices, cpu_runtime=runtime)
        row = vol_report[name] = summarise(name, raw)
        if "error" in row:
            continue
        row.update(ratios(row, builtin))
        row["cpu_runtime"], row["model_load_s"] = raw.get("cpu_runtime"), raw.get("model_load_s")
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
                   choices=["torch", "openvino", "openvino_int8"],
                   help="CPU runtimes of the image encoder for the extra rows (torch: float32 reference)")
    p.add_argument("--ahead-pause", type=float, default=10.0,
                   help="seconds between opening a study (encode-ahead starts) and the click (0: no such rows)")
    p.add_argument("--only-reference", action="store_true",
                   help="of this app's option rows, run the faithful default only")
    p.add_argument("--skip-builtin", action="store_true")
    p.add_argument("--skip-video", action="store_true")
    p.add_argument("--out", default="benchmark_speed.json")
    p.add_argument("--workdir", default=None)
    p.add_argument("--child", choices=["ours", "builtin", "video", "precision", "reference", "ahead"],
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
                 "builtin": child_builtin,
                 "video": child_video}[args.child]
        print(json.dumps(child(args, vol, ref)))
        return 0
    report = parent(args)
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1))
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
