"""The report: one JSON with every number and setting, and the pictures a person looks at.

- ``report.json``: settings, per-record results, summaries per method and protocol;
- ``dice_vs_clicks.png``: mean Dice (with the spread across structures) after each
  correction click, per method;
- ``overlays/<case>__<structure>.png``: the worst and the best slice of this engine's box
  result, with the reference and every method's box result drawn as contours.

Every figure is titled with the weights it came from; untrained weights are named as such.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from .metrics import summary
from .protocol import per_slice_dice

COLOURS = ["tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:cyan", "tab:olive"]


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def summarise(records: list) -> dict:
    """``{method: {protocol: {"dice": summary, "nsd": summary}}}`` over structures (final step)."""
    final: dict = {}
    for r in records:
        key = (r["method"], r["protocol"], r["case"], r["structure"])
        if key not in final or r["step"] >= final[key]["step"]:
            final[key] = r
    grouped: dict = defaultdict(lambda: defaultdict(lambda: {"dice": [], "nsd": [], "seconds": []}))
    for (method, protocol, _, _), r in sorted(final.items()):
        for metric in ("dice", "nsd", "seconds"):
            grouped[method][protocol][metric].append(r[metric])
    return {m: {p: {k: summary(v) for k, v in d.items()} for p, d in ps.items()} for m, ps in grouped.items()}


def curves(records: list) -> dict:
    """``{method: [summary of Dice at step 0, 1, ...]}`` for the correction protocol."""
    by_step: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["protocol"] == "correction":
            by_step[r["method"]][r["step"]].append(r["dice"])
    return {m: [summary(steps[s]) | {"clicks": s} for s in sorted(steps)] for m, steps in by_step.items()}


def write_json(out: Path, payload: dict) -> Path:
    path = out / "report.json"

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.floating, np.integer)):
            return clean(value.item())
        return value

    path.write_text(json.dumps(clean(payload), indent=1))
    return path


def plot_curves(out: Path, curve_data: dict, weights_label: str) -> Path | None:
    learned = {m: c for m, c in curve_data.items() if len(c) > 1}
    if not learned:
        return None
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6, 4))
    for colour, (method, points) in zip(COLOURS, sorted(learned.items())):
        x = [p["clicks"] for p in points if p["n"]]
        mean = np.array([p["mean"] for p in points if p["n"]])
        std = np.array([p["std"] for p in points if p["n"]])
        ax.plot(x, mean, marker="o", color=colour, label=f"{method} (n={points[0]['n']})")
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15)
    for method, points in sorted(curve_data.items()):
        if len(points) == 1 and points[0]["n"]:
            ax.axhline(points[0]["mean"], linestyle="--", linewidth=1, color="grey")
            ax.annotate(method, (0, points[0]["mean"]), fontsize=7, color="grey")
    ax.set_xlabel("correction clicks after the box")
    ax.set_ylabel("Dice (mean ± sd over structures)")
    ax.set_ylim(0, 1)
    ax.set_title(textwrap.fill(f"Dice against clicks — {weights_label}", 80), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out / "dice_vs_clicks.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def worst_and_best_slices(prediction: np.ndarray, reference: np.ndarray) -> list:
    values = per_slice_dice(prediction, reference)
    valid = np.nonzero(np.isfinite(values))[0]
    if valid.size == 0:
        return []
    worst = int(valid[np.argmin(values[valid])])
    best = int(valid[np.argmax(values[valid])])
    return [(worst, float(values[worst]), "worst"), (best, float(values[best]), "best")]


def plot_overlay(out: Path, case, structure, masks: dict, reference_method: str, weights_label: str) -> Path | None:
    """Worst and best slice (by ``reference_method``'s per-slice Dice) with every method's contour."""
    from .frames_for_report import display_plane

    if reference_method not in masks:
        return None
    picks = worst_and_best_slices(masks[reference_method], structure.mask)
    if not picks:
        return None
    plt = _matplotlib()
    fig, axes = plt.subplots(1, len(picks), figsize=(5 * len(picks), 5.4))
    axes = np.atleast_1d(axes)
    for ax, (k, value, which) in zip(axes, picks):
        ax.imshow(display_plane(case, k), cmap="gray", interpolation="nearest")
        plane = (lambda m: m if m.ndim == 2 else m[:, :, k])
        ax.contour(plane(structure.mask).T.astype(float), levels=[0.5], colors="lime", linewidths=1.5)
        handles = [plt.Line2D([], [], color="lime", label="reference")]
        for colour, (method, mask) in zip(COLOURS, sorted(masks.items())):
            if plane(mask).any():
                ax.contour(plane(mask).T.astype(float), levels=[0.5], colors=colour, linewidths=1)
            handles.append(plt.Line2D([], [], color=colour, label=method))
        ax.set_title(f"{which} slice k={k}: {reference_method} Dice {value:.3f}", fontsize=9)
        ax.axis("off")
    axes[0].legend(handles=handles, fontsize=7, loc="lower left")
    fig.suptitle(textwrap.fill(f"{case.name} / {structure.name} (box protocol) — {weights_label}", 100), fontsize=9)
    fig.tight_layout()
    target = out / "overlays" / f"{case.name}__{structure.name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=90)
    plt.close(fig)
    return target
