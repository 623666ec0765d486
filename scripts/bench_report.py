"""Rows and ratios of the speed benchmark's report: medians over repeats, ratios to the built-in task."""

from __future__ import annotations

import statistics


def median(runs: list, key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarise(name: str, result: dict, early: bool | None = None, local: bool | None = None,
              region: bool | None = None, protocol: str | None = None) -> dict:
    if "error" in result:
        return {"error": result["error"]}
    runs = [r for r in result["runs"] if (protocol is None or r.get("protocol") == protocol)
            and (early is None or r.get("early_stop", False) == early)
            and (local is None or r.get("correction_stop", False) == local)
            and (region is None or r.get("crop_region", False) == region)]
    if not runs:
        return {}
    row = {"first_s": median(runs, "first_s"), "correction_s": median(runs, "correction_s"),
           "first_slices": runs[0]["first_slices"], "correction_slices": runs[0].get("correction_slices"),
           "first_encoded": runs[0].get("first_encoded"), "correction_encoded": runs[0].get("correction_encoded"),
           "peak_rss_mb": result["peak_rss_mb"], "rss_after_model_mb": result.get("rss_after_model_mb"),
           "peak_cuda_mb": result.get("peak_cuda_mb"),
           "repeats": len(runs), "first_dice": runs[0].get("first_dice"),
           "correction_dice": runs[0].get("correction_dice")}
    row["first_slices_per_s"] = round(row["first_slices"] / row["first_s"], 3) if row["first_s"] else None
    if row["correction_s"]:
        row["correction_slices_per_s"] = round(row["correction_slices"] / row["correction_s"], 3)
    stages = runs[-1].get("stages_first") or runs[0].get("stages_first")
    if stages:
        total = sum(s["seconds"] for s in stages.values()) or 1.0
        row["stages_first"] = {k: {**v, "share": round(v["seconds"] / total, 3)} for k, v in stages.items()}
        row["dominant_stage_first"] = max(stages, key=lambda k: stages[k]["seconds"])
    if runs[-1].get("stages_correction"):
        row["stages_correction"] = runs[-1]["stages_correction"]
    if "jpeg_write_s" in runs[0]:
        row["jpeg_write_s"] = median(runs, "jpeg_write_s")
    return row


def ratios(row: dict, builtin: dict) -> dict:
    out = {}
    if "error" in row or "error" in builtin:
        return out
    if row.get("first_slices_per_s") and builtin.get("first_slices_per_s"):
        out["throughput_vs_builtin"] = round(row["first_slices_per_s"] / builtin["first_slices_per_s"], 2)
    if row.get("first_s") and builtin.get("first_s"):
        out["first_speedup_vs_builtin"] = round(builtin["first_s"] / row["first_s"], 2)
    if row.get("correction_s") and builtin.get("correction_s"):
        out["correction_speedup_vs_builtin"] = round(builtin["correction_s"] / row["correction_s"], 2)
    return out


def print_table(report: dict) -> None:
    """One line per (volume, method): times, slices, throughput and ratios to the built-in task."""
    head = (f"{'slices':>6} {'method':<46} {'first s':>8} {'sl':>4} {'sl/s':>6} {'corr s':>7} {'sl':>4} "
            f"{'MB':>6} {'thru x':>6} {'first x':>7} {'corr x':>6} {'Dice':>6} {'Dice c':>6}")
    print(f"weights: {report['weights']}; preset {report['preset']}; volume slices {report['size']} px square; "
          f"int8 for ours: {report.get('cpu_int8_ours', 'off')}")
    print(head)
    for slices, rows in report["volumes"].items():
        for name, row in rows.items():
            if name == "roofline_float32":
                continue
            if not row or "error" in row:
                print(f"{slices:>6} {name:<46} {'error' if row else 'skipped'}")
                continue
            cells = [row.get("first_s"), row.get("first_slices"), row.get("first_slices_per_s"), row.get("correction_s"),
                     row.get("correction_slices"), row.get("peak_rss_mb"), row.get("throughput_vs_builtin"),
                     row.get("first_speedup_vs_builtin"), row.get("correction_speedup_vs_builtin"),
                     row.get("first_dice"), row.get("correction_dice")]
            text = ["-" if c is None else f"{c:g}" for c in cells]
            print(f"{slices:>6} {name:<46} {text[0]:>8} {text[1]:>4} {text[2]:>6} {text[3]:>7} {text[4]:>4} "
                  f"{text[5]:>6} {text[6]:>6} {text[7]:>7} {text[8]:>6} {text[9]:>6} {text[10]:>6}")
            extra = []
            if row.get("agreement_vs_torch_float32"):
                agreement = row["agreement_vs_torch_float32"]
                extra.append(f"Dice vs PyTorch float32 {agreement['dice']} ({agreement['voxels_differing']} voxels differ)")
            if row.get("encoded_before_click") is not None:
                extra.append(f"{row['encoded_before_click']} slices encoded before the click, "
                             f"{row.get('first_encoded')} in the request")
            if name.endswith("+second_user"):
                extra.append(f"{row.get('first_encoded')} slices encoded in the second user's request")
            if row.get("model_load_s") is not None:
                stages = row.get("cpu_runtime_stages") or {}
                runs = ", ".join(f"{k}: {v}" for k, v in stages.items()) if stages else row.get("cpu_runtime")
                extra.append(f"model load + warm-up {row['model_load_s']} s ({runs})")
            if extra:
                print(f"{'':>6} {'':<46} " + "; ".join(extra))
