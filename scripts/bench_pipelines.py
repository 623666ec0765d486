"""The timed pipelines of ``benchmark_speed.py``, each run in its own child process: this app's
engine (``child_ours``), MONAI Label's built-in SAM 2 task (``child_builtin``) and sam2's own
video predictor (``child_video``), on the benchmark's phantom volume, with per-stage timers.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

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
    from medsam2_engine.phantoms import spindle_lesion

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
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
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
           "cpu_runtime": models.runtime_in_use, "cpu_runtime_stages": models.status().get("cpu_runtime_stages")}
    configs = [(protocol, *options) for protocol, *options in engine_rows(args.preset)]
    if args.mode != "ours" or args.only_reference:
        configs = configs[:1]
    if args.mode == "ahead":
        return _ahead_runs(args, models, configs[0][0], volume, box, ref, out)
    if args.mode == "second_user":
        return _second_user_runs(args, models, configs[0][0], volume, box, ref, out)
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
            seg.memory.clear()
    out["peak_rss_mb"], out["peak_cuda_mb"] = round(peak_rss_mb(), 1), peak_cuda_mb()
    return out


def _ahead_runs(args, models, protocol, volume, box, ref, out) -> dict:
    """The study opened (encode-ahead starts), ``--ahead-pause`` s of looking at it, then the box:
    the time from that click to the full 3D result."""
    from medsam2_engine.encode_ahead import EncodeAhead
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.prompts import LabelPrompts

    for rep in range(args.repeats):
        seg = VolumeSegmenter(models, EngineSettings(protocol=protocol, cpu_bf16=args.cpu_bf16))
        key = (f"ahead{rep}",)
        # for the image, as GET /datastore/image (Slicer) queues it: any session's click finds it
        job = EncodeAhead(seg).request(None, volume)
        time.sleep(args.ahead_pause)
        encoded_at_click = job.encoded
        t = time.perf_counter()
        first = seg.run(volume, {"l": LabelPrompts(boxes=[box])}, session_key=key)
        t_first = time.perf_counter() - t
        job.cancelled.set()
        job.finished.wait()
        _record_first(args, out, "ahead", rep, first, t_first, ref,
                      {"protocol": protocol, "pause_s": args.ahead_pause, "encoded_before_click": encoded_at_click})
        seg.memory.clear()
    out["peak_rss_mb"], out["peak_cuda_mb"] = round(peak_rss_mb(), 1), peak_cuda_mb()
    return out


def _record_first(args, out, mode: str, rep: int, first, seconds: float, ref, extra: dict) -> None:
    """One timed first request's row (its mask kept from the first repeat, for the agreement)."""
    out["runs"].append({**extra, "first_s": seconds, "first_slices": sum(p.slices for p in first.labels["l"].passes),
                        "first_encoded": first.session.slices_encoded,
                        "first_dice": round(dice(first.labels["l"].mask, ref), 4)})
    if rep == 0:
        np.save(Path(args.workdir) / f"mask_{mode}_{args.cpu_runtime}.npy", first.labels["l"].mask)


def _second_user_runs(args, models, protocol, volume, box, ref, out) -> dict:
    """A second clinician's first request on a study another one has just segmented: the
    image's encoded slices are shared, so it propagates without encoding."""
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.prompts import LabelPrompts

    for rep in range(args.repeats):
        seg = VolumeSegmenter(models, EngineSettings(protocol=protocol, cpu_bf16=args.cpu_bf16))
        seg.run(volume, {"l": LabelPrompts(boxes=[box])}, session_key=("alice", rep))
        t = time.perf_counter()
        first = seg.run(volume, {"l": LabelPrompts(boxes=[box])}, session_key=("bob", rep))
        _record_first(args, out, "second_user", rep, first, time.perf_counter() - t, ref, {"protocol": protocol})
        seg.memory.clear()
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


def dice(a: np.ndarray, b: np.ndarray) -> float:
    from medsam2_engine.mask_measures import dice as mask_dice

    return mask_dice(a.astype(bool), b.astype(bool))
