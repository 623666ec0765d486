"""Where the clinician sits: the app's page in headless Chromium, timed step by step.

    PYTHONPATH=apps/medsam2:. python scripts/benchmark_page.py --checkpoint phantom.pt \\
        --baseline aab4f0b --out reports/page_benchmark.json

A 512 x 512 x 220 CT-like phantom (a lesion over about 24 slices, a distractor elsewhere) in
a studies folder; the real server on loopback; Debian's Chromium driven by Playwright. In one
run, for the page of ``--baseline`` (a commit, checked out in a git worktree) and then for
this checkout's page, each with its own fresh server:

1. pick the study: until its first slice is on screen, and until the whole study is drawn
   and the page takes prompts;
2. a box on the lesion's largest slice: mouse-up to the prompted slice's mask on screen and
   to the final 3D mask on screen (right after opening: encode-ahead has had no time);
3. a correction click 4 slices away: mouse-up to the final mask;
4. the page reloaded, the study opened and left open ``--dwell`` s, the same box again.

Times are the page's own (``performance.now()``, after the frame that shows it) where the
page records them, and always the wall time from the mouse event until the page's status
leaves "busy" (``wall_ms``), which both pages have. The server's own seconds come from the
result JSON. The CPU is named with its bf16/AMX units; Chromium draws with SwiftShader
(software WebGL) here, the slowest case. ``--checkpoint``: phantom-trained weights
(``scripts/phantom_checkpoint.py``) prove timing and plumbing, never accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from benchmark_replicas import cpu_name  # noqa: E402
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.server import RunningServer  # noqa: E402

BUSY = "document.getElementById('status').dataset.state === 'busy'"
IDLE = "document.getElementById('status').dataset.state !== 'busy'"


def make_study(folder: Path, slices: int, size: int, span: int) -> np.ndarray:
    """The phantom CT (int16 HU) with a lesion and a distractor; returns the lesion's mask."""
    import nibabel as nib

    from medsam2_engine.phantoms import ellipsoid, spindle_lesion

    array, lesion = spindle_lesion(slices, size, span / slices, seed=0)
    distractor = ellipsoid((0.62 * size, 0.38 * size, 0.2 * slices), (0.05 * size, 0.05 * size, 8), array.shape)
    array[distractor] = 150.0
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.round(array).astype(np.int16), np.diag([0.7, 0.7, 1.5, 1.0])), folder / "ct220.nii.gz")
    return lesion


def baseline_app(commit: str, into: Path) -> Path:
    """apps/medsam2 of ``commit`` in a git worktree. A page that drew with NiiVue (package-lock.json:
    up to b835ccf) gets its npm packages linked from this checkout if it has them, else installed."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), commit], check=True,
                   capture_output=True)
    viewer = into / "apps" / "medsam2" / "viewer"
    if (viewer / "package-lock.json").is_file():
        modules = ROOT / "apps" / "medsam2" / "viewer" / "node_modules"
        if modules.is_dir():
            (viewer / "node_modules").symlink_to(modules)
        else:
            subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=viewer, check=True)
    return into / "apps" / "medsam2"


def wait_idle(page, timeout_ms: int = 600_000) -> None:
    page.wait_for_function(IDLE, timeout=timeout_ms, polling=20)
    if page.get_attribute("#status", "data-state") == "error":
        raise RuntimeError(f"the page reports an error: {page.inner_text('#status')}")


def page_position(page, voxel) -> list:
    return page.evaluate("v => window.medsam2Viewer.pagePosition(v)", [int(v) for v in voxel])


def open_study(page, url: str) -> dict:
    page.goto(url + "/medsam2/viewer/")
    page.evaluate("window.medsam2Viewer.ready")
    started = time.perf_counter()
    page.click("#studies li[data-image='ct220']")
    page.wait_for_function(BUSY, timeout=60_000, polling=5)
    wait_idle(page)
    wall = round((time.perf_counter() - started) * 1000)
    opening = page.evaluate("window.medsam2Viewer.state.opening || window.medsam2Viewer.state.opened || null")
    return {"wall_ms": wall, "page": opening}


def last_timing(page) -> dict:
    return page.evaluate("window.medsam2Viewer.state.timings.slice(-1)[0] || null")


def draw_box(page, lesion: np.ndarray, k: int, drag_s: float = 0.0) -> dict:
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    page.check("input[name=tool][value=box]")
    rows, cols = np.nonzero(lesion[:, :, k])
    a = page_position(page, [rows.min() - 3, cols.min() - 3, k])
    b = page_position(page, [rows.max() + 3, cols.max() + 3, k])
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    time.sleep(drag_s)  # a clinician's drag takes a moment; 0: the worst case
    page.mouse.move(*b)
    started = time.perf_counter()
    page.mouse.up()
    page.wait_for_function(BUSY, timeout=60_000, polling=5)
    wait_idle(page)
    return {"wall_ms": round((time.perf_counter() - started) * 1000), "page": last_timing(page)}


def click_inside(page, lesion: np.ndarray, k: int) -> dict:
    page.evaluate("k => window.medsam2Viewer.goToSlice(k)", k)
    page.check("input[name=tool][value=point]")
    ii, jj = np.nonzero(lesion[:, :, k])
    x, y = page_position(page, [round(ii.mean()), round(jj.mean()), k])
    page.mouse.move(x, y)
    page.mouse.down()
    started = time.perf_counter()
    page.mouse.up()
    page.wait_for_function(BUSY, timeout=60_000, polling=5)
    wait_idle(page)
    return {"wall_ms": round((time.perf_counter() - started) * 1000), "page": last_timing(page)}


def run_page(name: str, app_dir: Path, studies: Path, lesion: np.ndarray, args, workdir: Path) -> dict:
    from playwright.sync_api import sync_playwright

    conf = {"preset": args.preset, "labels": "lesion,organ", "cpu_runtime": args.cpu_runtime}
    if args.checkpoint:
        conf["checkpoint"] = args.checkpoint
    (workdir / name).mkdir(parents=True, exist_ok=True)
    server = RunningServer(studies, conf, workdir / name / "server.log", timeout=600, app_dir=app_dir)
    k = int(np.argmax(lesion.sum(axis=(0, 1))))
    out = {}
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(workdir / name / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1280, "height": 900})
            page = context.pages[0] if context.pages else context.new_page()
            out["open"] = open_study(page, server.url)
            out["box_right_after_opening"] = draw_box(page, lesion, k, args.drag_ms / 1000)
            page.screenshot(path=str(workdir / f"{name}-box.png"))
            out["correction"] = click_inside(page, lesion, k + 4)
            page.screenshot(path=str(workdir / f"{name}-correction.png"))
            page.reload()
            out["reopen"] = open_study(page, server.url)
            time.sleep(args.dwell)
            out["box_after_dwell"] = draw_box(page, lesion, k, args.drag_ms / 1000)
            out["dwell_s"] = args.dwell
            context.close()
    finally:
        server.stop()
    print(name, json.dumps(out))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="", help="phantom-trained weights (none: random weights)")
    parser.add_argument("--preset", default="medsam2")
    parser.add_argument("--cpu-runtime", default="auto", help="the app's default (the test server's is openvino)")
    parser.add_argument("--baseline", default="", help="a commit whose page is timed first, in the same run")
    parser.add_argument("--slices", type=int, default=220)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--span", type=int, default=24)
    parser.add_argument("--dwell", type=float, default=20.0, help="seconds the study stays open before the last box")
    parser.add_argument("--drag-ms", type=float, default=0.0,
                        help="how long each box is dragged before mouse-up (0: instantly, the worst case)")
    parser.add_argument("--out", default="reports/page_benchmark.json")
    args = parser.parse_args(argv)

    from medsam2_engine.precision import cpu_bf16_units

    workdir = Path(tempfile.mkdtemp(prefix="medsam2-page-bench-"))
    lesion = make_study(workdir / "studies", args.slices, args.size, args.span)
    report = {"cpu": cpu_name(), "cpu_bf16_units": cpu_bf16_units(), "cores": os.cpu_count(),
              "weights": args.checkpoint or "random (timing only)", "preset": args.preset,
              "cpu_runtime": args.cpu_runtime, "box_drag_ms": args.drag_ms,
              "study": f"{args.size} x {args.size} x {args.slices} CT-like phantom, lesion on "
                       f"{int(lesion.any(axis=(0, 1)).sum())} slices, a distractor",
              "browser": "Debian Chromium headless, software WebGL (SwiftShader)", "pages": {}}
    pages = []
    if args.baseline:
        pages.append((f"baseline {args.baseline}", baseline_app(args.baseline, workdir / "baseline")))
    pages.append(("this checkout", ROOT / "apps" / "medsam2"))
    try:
        for name, app_dir in pages:
            report["pages"][name] = run_page(name.split()[0], app_dir, workdir / "studies", lesion, args, workdir)
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(workdir / "baseline")],
                           capture_output=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"screenshots in {workdir}; report in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
