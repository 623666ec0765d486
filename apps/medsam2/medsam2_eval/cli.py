"""Accuracy evaluation on a folder of labelled images: ``python -m medsam2_eval``.

Example (untrained weights, plumbing only)::

    python -m medsam2_eval --data ../shared/data/mr_brain_breast_pyradiomics \
        --checkpoint random --out report/

The protocol is documented in :mod:`medsam2_eval.protocol` and
:mod:`medsam2_eval.clicks`; every number and setting lands in ``report.json``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from medsam2_engine.checkpoints import RANDOM_WEIGHTS, build_model, get_preset, preset_for_config_file, save_checkpoint
from .cases import find_cases, model_input_window, select_structures
from .methods import CopySliceMethod, EngineMethod, OtsuBoxMethod
from medsam2_engine.protocols import PROTOCOLS, default_protocol
from medsam2_engine.propagation import CorrectionStop
from medsam2_engine.crop_region import CropRegionSettings
from .protocol import ProtocolSettings, run_structure
from .report import curves, plot_curves, plot_overlay, summarise, write_json
from medsam2_engine.model_source import ModelSource
from medsam2_engine.propagation import EarlyStop

logger = logging.getLogger("medsam2_eval")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m medsam2_eval", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder of images with reference labels")
    p.add_argument("--out", required=True, help="report folder (created)")
    p.add_argument("--checkpoint", required=True, help="SAM 2 checkpoint {'model': state_dict}, or 'random'")
    p.add_argument("--preset", default="medsam2", help="model preset (default medsam2: SAM 2.1 tiny at 512 px)")
    p.add_argument("--model-config", help="a model config yaml of one's own instead of --preset")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained weights with --checkpoint random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clicks", type=int, default=5, help="correction clicks after the box (default 5)")
    p.add_argument("--builtin-clicks", type=int, help="correction clicks for the built-in task (default --clicks)")
    p.add_argument("--no-builtin", action="store_true", help="skip MONAI Label's built-in Sam2InferTask")
    p.add_argument("--builtin-input", choices=["raw", "windowed"], default="raw")
    p.add_argument("--max-structures", type=int, default=3, help="largest N structures per case (0: all)")
    p.add_argument("--min-voxels", type=int, default=20)
    p.add_argument("--max-cases", type=int, default=0, help="first N cases only (0: all)")
    p.add_argument("--cases", help="regular expression on case names")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (pixels for 2D)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), help="the engine's protocol (default: the preset's)")
    p.add_argument("--compare-protocols", action="store_true",
                   help="run every protocol and option side by side (the preset's protocol with and without the exact "
                   "stop, each option alone, the other protocols): Dice, NSD and time per row")
    p.add_argument("--windows", help="CSV of per-case windows, rows 'case,low,high' (e.g. DeepLesion's DICOM windows); "
                   "a case's name or file stem")
    p.add_argument("--early-stop", choices=["on", "off"], default="off")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--one-prompt", action="store_true",
                   help="also run the one-prompt protocol: per (data set, structure), the first case's label is the "
                   "support and every other case a target, with no prompts")
    p.add_argument("--one-prompt-only", action="store_true", help="run only the one-prompt protocol")
    return p.parse_args(argv)


def run_one_prompt(models: ModelSource, cases: list, root: Path, tolerance: float = 2.0) -> dict:
    """Per target: one-prompt from a support's memory alone, beside the interactive protocol (one box)
    on the same target and a centroid-aligned copy of the support; Dice and NSD; targets a minute."""
    from .one_prompt_protocol import group_cases, run_group
    from medsam2_engine.one_prompt import OnePromptSegmenter
    from medsam2_engine.volume_segmenter import VolumeSegmenter

    segmenter, interactive = OnePromptSegmenter(models), VolumeSegmenter(models)
    results = {}
    for (dataset, structure), members in group_cases(cases, root).items():
        results[f"{dataset}/{structure}"] = outcome = run_group(segmenter, members, interactive=interactive,
                                                                tolerance=tolerance)
        for target in outcome["targets"]:
            logger.info("one-prompt %s -> %s: dice %.3f nsd %.3f (interactive box %.3f, centroid copy %.3f), "
                        "confidence %.3f, %.1f s", outcome["support"], target["target"], target["dice"],
                        target["nsd"], target["interactive_dice"], target["baseline_centroid_copy_dice"],
                        target["confidence"], target["seconds"])
    return results


def protocol_variants(models, preset, protocol: str | None, early_stop: EarlyStop, compare: bool) -> list:
    """The engine as configured; with ``compare``, the reference protocol and each option beside it."""
    protocol = protocol or default_protocol(preset)
    if not compare:
        return [EngineMethod(models, early_stop, protocol=protocol)]
    off = EarlyStop(enabled=False)
    rows = [
        EngineMethod(models, off, f"engine_{protocol}_reference", protocol),
        EngineMethod(models, off, f"engine_{protocol}+crop_region", protocol, crop_region=CropRegionSettings(enabled=True)),
        EngineMethod(models, EarlyStop(enabled=True), f"engine_{protocol}+early_stop", protocol),
        EngineMethod(models, off, f"engine_{protocol}+correction_stop", protocol,
                     correction_stop=CorrectionStop(enabled=True)),
    ]
    if protocol == "medsam2":  # the default's exact stop against both passes to the ends
        rows.insert(1, EngineMethod(models, EarlyStop(enabled=False, exact_stop=False),
                                    f"engine_{protocol}_full_passes", protocol))
    return rows + [EngineMethod(models, off, f"engine_{other}_protocol", other) for other in PROTOCOLS
                   if other != protocol]


def read_windows(path: str) -> dict:
    """``{case name or stem: [low, high]}`` from a CSV of rows ``case,low,high`` (a header row is skipped)."""
    import csv

    windows = {}
    with open(path, newline="") as handle:
        for row in csv.reader(handle):
            if len(row) < 3 or not row[0].strip() or row[0].strip().lower() == "case":
                continue
            try:
                low, high = float(row[1]), float(row[2])
            except ValueError as err:
                raise SystemExit(f"--windows {path}: row {row!r}: low and high must be numbers") from err
            if not high > low:
                raise SystemExit(f"--windows {path}: row {row!r}: needs low < high")
            windows[row[0].strip()] = [low, high]
    return windows


def apply_windows(cases: list, windows: dict) -> list:
    """Give each case its window from the table (by name, else by its image's file stem); returns the unmatched."""
    used = set()
    for case in cases:
        stem = Path(str(case.source.get("image", case.name))).name.split(".")[0]
        key = case.name if case.name in windows else stem if stem in windows else None
        if key is not None:
            case.window, _ = windows[key], used.add(key)
    return sorted(set(windows) - used)


def resolve_checkpoint(args, preset, workdir: Path) -> tuple:
    """The checkpoint file both models load; untrained weights are saved once, seeded."""
    if args.checkpoint != RANDOM_WEIGHTS:
        if not Path(args.checkpoint).is_file():
            raise SystemExit(f"checkpoint {args.checkpoint} not found")
        return args.checkpoint, f"checkpoint {Path(args.checkpoint).name}"
    torch.manual_seed(args.seed)
    path = workdir / f"random_seed{args.seed}.pt"
    save_checkpoint(build_model(preset, RANDOM_WEIGHTS), path)
    return str(path), f"UNTRAINED random weights (seed {args.seed}): plumbing only, not accuracy"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="medsam2-eval-"))
    preset = preset_for_config_file(args.model_config) if args.model_config else get_preset(args.preset)
    checkpoint, weights_label = resolve_checkpoint(args, preset, workdir)
    early_stop = EarlyStop(enabled=args.early_stop == "on", patience=args.patience)
    models = ModelSource(preset, workdir, checkpoint=checkpoint, device=args.device)
    engine_methods = protocol_variants(models, preset, args.protocol, early_stop, args.compare_protocols)
    methods = [*engine_methods, CopySliceMethod(), OtsuBoxMethod()]
    if not args.no_builtin:
        from .builtin_sam2 import BuiltinSam2Method

        methods.append(BuiltinSam2Method(preset, checkpoint, workdir, args.builtin_input))
    settings = ProtocolSettings(max_clicks=args.clicks, nsd_tolerance=args.nsd_tolerance)
    builtin_clicks = args.clicks if args.builtin_clicks is None else args.builtin_clicks

    cases = find_cases(args.data)
    if args.windows:
        unmatched = apply_windows(cases, read_windows(args.windows))
        if unmatched:
            logger.warning("--windows: no case named %s", ", ".join(unmatched))
    if args.cases:
        cases = [c for c in cases if re.search(args.cases, c.name)]
    if args.max_cases:
        cases = cases[: args.max_cases]
    records, case_list, started = [], [], time.perf_counter()
    for case in [] if args.one_prompt_only else cases:
        structures = select_structures(case, args.max_structures, args.min_voxels)
        case_list.append({"case": case.name, "shape": list(case.volume.array.shape), "spacing": list(case.spacing),
                          "source": case.source, "model_input_window": model_input_window(case), "structures": [s.name for s in structures],
                          "structures_found": len(case.structures)})
        for structure in structures:
            masks = {}
            for method in methods:
                if not (method.supports_3d if case.volume.is_3d else method.supports_2d):
                    continue
                clicks = builtin_clicks if method.own_click_budget else None
                run = run_structure(method, case, structure, settings, clicks)
                for r in run.records:
                    records.append({"case": case.name, "structure": structure.name, "method": method.name,
                                    "learned": method.learned, **r})
                masks[method.name] = run.masks["box"]
            plot_overlay(out, case, structure, masks, methods[0].name, weights_label)
            logger.info("%s / %s: %s", case.name, structure.name,
                        {m: r["dice"] for m, r in ((r["method"], r) for r in records[-40:]
                                                  if r["case"] == case.name and r["structure"] == structure.name
                                                  and r["protocol"] == "box")})
        for method in methods:
            if hasattr(method, "close"):
                method.close()
    curve_data = curves(records)
    payload = {
        "weights": weights_label,
        "random_weights": args.checkpoint == RANDOM_WEIGHTS,
        "settings": {**vars(args), "preset": preset.name, "image_size": preset.image_size,
                     "builtin_clicks": builtin_clicks, "early_stop": vars(early_stop)},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "protocol": {"box": "tight box on the largest slice, propagate", "click": "one positive click at the "
                     "distance-transform centre of the largest slice", "correction": "box, then clicks at the centre "
                     "of the largest 3D error component (distance transform), Dice after each"},
        "methods": {m.name: {"learned": m.learned, "runs_on_3d": m.supports_3d, "runs_on_2d": m.supports_2d}
                    for m in methods},
        "cases": case_list,
        "summary": summarise(records),
        "dice_vs_clicks": curve_data,
        "records": records,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.one_prompt or args.one_prompt_only:
        payload["one_prompt"] = run_one_prompt(models, cases, Path(args.data), args.nsd_tolerance)
        payload["seconds"] = round(time.perf_counter() - started, 1)
    path = write_json(out, payload)
    plot_curves(out, curve_data, weights_label)
    logger.info("report written to %s (%d records, %.0f s)", path, len(records), payload["seconds"])
    for method, protocols in payload["summary"].items():
        for protocol, values in protocols.items():
            d, n = values["dice"], values["nsd"]
            print(f"{method:32s} {protocol:10s} dice {d.get('mean', float('nan')):.3f}±{d.get('std', 0):.3f} "
                  f"nsd {n.get('mean', float('nan')):.3f} (n={d['n']})")
    for group, outcome in payload.get("one_prompt", {}).items():
        for target in outcome["targets"]:
            print(f"one-prompt {group:40s} {outcome['support']} -> {target['target']}: dice {target['dice']:.3f} "
                  f"(centroid copy {target['baseline_centroid_copy_dice']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
