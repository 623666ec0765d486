"""The learning curve of a model folder as an SVG: held-out Dice of each published fine-tune against
the number of labelled studies, beside the classical baselines on the same held-out studies.

    python -m medsam2_eval.learning_curve --model-dir apps/medsam2/model --out learning_curve.svg

It reads only the app's own record (``finetune_history.json``, written by the fine-tune task).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HISTORY_NAME = "finetune_history.json"  # lib/trainers/history.py writes it
SERIES = (("SAM 2 fine-tunes (held-out Dice)", "#1f77b4", lambda e: e.get("val_dice")),
          ("fill the box", "#d62728", lambda e: (e.get("baselines") or {}).get("fill_box")),
          ("Otsu in the box", "#2ca02c", lambda e: (e.get("baselines") or {}).get("otsu_box")))


def curve_svg(history: list, width: int = 480, height: int = 300) -> str:
    pad = 44
    points = [e for e in history if isinstance(e.get("labelled_studies"), int)]
    max_x = max([e["labelled_studies"] for e in points] + [1])

    def x(n):
        return pad + n / max_x * (width - pad - 12)

    def y(d):
        return height - pad - d * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
             f'<line x1="{pad}" y1="{y(0)}" x2="{width - 8}" y2="{y(0)}" stroke="black"/>',
             f'<line x1="{pad}" y1="{y(0)}" x2="{pad}" y2="{y(1)}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="12">labelled studies</text>',
             f'<text x="12" y="{y(0.5)}" font-size="12" transform="rotate(-90 12 {y(0.5)})">held-out Dice</text>']
    for tick in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{pad - 6}" y="{y(tick) + 4}" text-anchor="end" font-size="11">{tick:.1f}</text>')
    for n, (name, colour, value) in enumerate(SERIES):
        pts = [(x(e["labelled_studies"]), y(value(e))) for e in points if isinstance(value(e), (int, float))]
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{colour}" points="'
                         + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="4" fill="{colour}"/>' for a, b in pts]
        parts.append(f'<text x="{pad + 8}" y="{20 + 15 * n}" fill="{colour}" font-size="12">{name}</text>')
    if not points:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no fine-tune published yet</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="the app's model folder (--conf model_dir)")
    parser.add_argument("--out", default="learning_curve.svg")
    args = parser.parse_args(argv)
    path = Path(args.model_dir) / HISTORY_NAME
    history = json.loads(path.read_text()) if path.is_file() else []
    Path(args.out).write_text(curve_svg(history))
    print(f"{len(history)} fine-tune(s) from {path} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
