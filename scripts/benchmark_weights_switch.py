"""What a clinician waits for when new weights are published, and what a restart costs.

    .venv/bin/python scripts/benchmark_weights_switch.py [--model medsam2] [--slices 40] [--out FILE]

One run, side by side, on this machine's CPU (named in the output with its units):
- a correction click with nothing being prepared (the baseline);
- the same click while new weights (a "fine-tune" published to ``finetuned.pt``) are being
  loaded, compiled for the CPU runtime and checked in the background (the server's mode), and
  how long that preparation took; the click is answered by the old weights;
- the same click with the old behaviour, where the request itself loads and compiles the new
  weights (``prepare_in_background=False``): the stall the server no longer has;
- a start (a replica restarting) with the compiled runtime cache cold, and with it warm.

Weights are drawn at random (timing only: nothing here measures accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "medsam2"))
sys.path.insert(0, str(ROOT / "scripts"))

from medsam2_engine.checkpoints import build_model, get_preset, save_checkpoint  # noqa: E402
from medsam2_engine.model_source import ModelSource  # noqa: E402
from medsam2_engine.phantoms import spindle_lesion  # noqa: E402
from medsam2_engine.precision import cpu_bf16_units  # noqa: E402
from medsam2_engine.prompts import Click, LabelPrompts  # noqa: E402
from medsam2_engine.volume_io import Volume  # noqa: E402
from medsam2_engine.volume_segmenter import VolumeSegmenter  # noqa: E402
from benchmark_replicas import cpu_name  # noqa: E402


def publish(preset, path: Path, seed: int) -> None:
    save_checkpoint(build_model(preset, "random", seed=seed), path)
    later = time.time_ns() + 10**9
    os.utime(path, ns=(later, later))


def timed(call) -> tuple:
    started = time.perf_counter()
    value = call()
    return round(time.perf_counter() - started, 2), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medsam2")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--out")
    args = parser.parse_args()
    preset = get_preset(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench_switch_"))
    array, lesion = spindle_lesion(args.slices, preset.image_size, 0.5, seed=0)
    volume = Volume(array, np.diag([0.8, 0.8, 2.5, 1.0]), declared_modality="CT")
    k = int(lesion.sum(axis=(0, 1)).argmax())
    ii, jj = lesion[:, :, k].nonzero()
    first = {"lesion": LabelPrompts(clicks=[Click(int(ii.mean()), int(jj.mean()), k, True)])}
    added = []

    def correction():
        """The first click and one more each time: every timed click is a real correction."""
        added.append(Click(int(ii.min()) + len(added), int(jj.mean()), k, True))
        return {"lesion": LabelPrompts(clicks=[Click(int(ii.mean()), int(jj.mean()), k, True), *added])}

    result = {"cpu": cpu_name(), "bf16_units": list(cpu_bf16_units()), "cores": os.cpu_count(),
              "model": preset.name, "image_size": preset.image_size, "slices": args.slices,
              "weights": "random (timing only)"}

    def source(folder: Path, background: bool) -> ModelSource:
        return ModelSource(preset, folder, device="cpu", cpu_runtime=args.runtime, prepare_in_background=background,
                           runtime_cache_dir=folder / "runtime-cache")

    # the server's mode
    folder = work / "server"
    folder.mkdir()
    publish(preset, folder / "finetuned.pt", seed=1)
    result["start_cold_cache_s"], _ = timed(lambda: source(folder, True).get())  # converts and compiles
    result["start_warm_cache_s"], _ = timed(lambda: source(folder, True).get())  # a restart: from the cache
    models = source(folder, True)
    models.get()
    result["cpu_runtime"] = models.runtime_in_use
    segmenter = VolumeSegmenter(models)
    segmenter.run(volume, first, ("u", "study"))
    result["click_baseline_s"], _ = timed(lambda: segmenter.run(volume, correction(), ("u", "study")))
    publish(preset, folder / "finetuned.pt", seed=2)
    models.get()  # the watcher's poll: preparation starts
    prepare_started = time.perf_counter()
    result["click_while_preparing_s"], during = timed(lambda: segmenter.run(volume, correction(), ("u", "study")))
    result["click_while_preparing_answered_by"] = during.run.model_version.get("name")
    result["still_preparing_after_click"] = models.status()["preparing"] is not None
    models.wait_prepared()
    result["preparation_s"] = round(time.perf_counter() - prepare_started, 2)
    result["first_click_after_switch_s"], _ = timed(lambda: segmenter.run(volume, correction(), ("u", "study")))

    # the old behaviour: the request loads and compiles (no cache: what a new fine-tune costs)
    folder = work / "inline"
    folder.mkdir()
    publish(preset, folder / "finetuned.pt", seed=1)
    inline = ModelSource(preset, folder, device="cpu", cpu_runtime=args.runtime)
    inline.get()
    old = VolumeSegmenter(inline)
    old.run(volume, first, ("u", "study"))
    publish(preset, folder / "finetuned.pt", seed=3)
    result["click_inline_reload_s"], _ = timed(lambda: old.run(volume, correction(), ("u", "study")))
    result["stall_removed_ratio"] = round(result["click_inline_reload_s"] / max(result["click_while_preparing_s"],
                                                                                 1e-6), 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
