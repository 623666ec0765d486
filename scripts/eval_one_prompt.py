"""One-prompt evaluation: support from one case, targets all others, Dice per target vs a baseline.

    PYTHONPATH=apps/medsam2 python scripts/eval_one_prompt.py ../shared/data \\
        [--model medsam2 | --model-config small.yaml] [--checkpoint PATH|random] [--out one_prompt.json]

Groups are (data set folder, structure) with at least two 3D cases (see
``medsam2_engine.evaluation.one_prompt_protocol``). With ``--checkpoint random`` (or no
trained checkpoint) the figures measure nothing but the plumbing; the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "medsam2"))

from medsam2_engine.checkpoints import get_preset, preset_for_config_file  # noqa: E402
from medsam2_engine.evaluation.cases import find_cases  # noqa: E402
from medsam2_engine.evaluation.one_prompt_protocol import group_cases, run_group  # noqa: E402
from medsam2_engine.model_source import ModelSource  # noqa: E402
from medsam2_engine.one_prompt import OnePromptSegmenter, OnePromptSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", default="medsam2", help="model preset")
    parser.add_argument("--model-config", type=Path, help="a SAM 2 yaml of one's own instead of a preset")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file, or 'random' for untrained weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", default=None, help="data set folders to include (default: all)")
    parser.add_argument("--support-slices", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    preset = preset_for_config_file(args.model_config) if args.model_config else get_preset(args.model)
    model_dir = args.model_config.parent if args.model_config else Path("apps/medsam2/model")
    models = ModelSource(preset, model_dir, checkpoint=args.checkpoint, device=args.device)
    loaded = models.get()
    segmenter = OnePromptSegmenter(models, OnePromptSettings(slices_per_support=args.support_slices))

    cases = find_cases(args.data)
    groups = group_cases(cases, args.data)
    if args.only:
        groups = {key: members for key, members in groups.items() if key[0] in args.only}
    report = {
        "protocol": "one-prompt: support = first case of each (data set, structure) group, targets = the others",
        "model": preset.name,
        "checkpoint": loaded.checkpoint,
        "random_weights": loaded.random_weights,
        "note": "UNTRAINED WEIGHTS: the model's Dice measures the plumbing only" if loaded.random_weights else "",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {models.device}",
        "groups": {},
    }
    started = time.perf_counter()
    for (dataset, structure), members in groups.items():
        key = f"{dataset}/{structure}"
        print(f"{key}: {len(members)} cases", flush=True)
        report["groups"][key] = outcome = run_group(segmenter, members)
        for target in outcome["targets"]:
            print(f"  {outcome['support']} -> {target['target']}: dice {target['dice']:.3f} "
                  f"(centroid copy {target['baseline_centroid_copy_dice']:.3f}), confidence {target['confidence']:.3f}, "
                  f"{target['seconds']:.1f} s", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text if not args.out else f"report written to {args.out}")


if __name__ == "__main__":
    main()
