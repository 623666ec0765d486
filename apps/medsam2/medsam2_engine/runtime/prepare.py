"""New weights' CPU runtime compiled into the on-disk cache by a child process at the lowest CPU
priority, so that clinicians' clicks on the old weights keep the cores meanwhile.

Compiling is the expensive part of new weights (tracing the network, converting and compiling
its graphs: seconds to minutes). Done in the server's own process it competes with the clicks
being answered (measured: a click 3x slower while a compile ran in a thread beside it, on 2
cores). A child process at nice 19 only takes what the clicks leave; it writes the graphs to
the runtime cache (``graph.GraphCache``, keyed by the exact weights), and the server then loads
them from there in about a second. Used by ``ModelSource`` when it prepares weights in the
background; if the child fails, the server compiles in-process as before (and logs why).

    python -m medsam2_engine.runtime.prepare SPEC_JSON
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

logger = logging.getLogger(__name__)

NICE = 19


def compile_in_child(preset, checkpoint: str, runtime: str, cache_dir, extra_overrides: dict | None = None,
                     cpu_int8: bool = False, timeout_s: float = 1800.0) -> bool:
    """Fill ``cache_dir`` with ``checkpoint``'s compiled runtime from a child process at nice 19.
    Returns whether it succeeded (the caller then loads from the cache)."""
    spec = {"preset": dataclasses.asdict(preset), "checkpoint": checkpoint, "runtime": runtime,
            "cache_dir": str(cache_dir), "extra_overrides": extra_overrides or {}, "cpu_int8": bool(cpu_int8)}
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
           "TQDM_DISABLE": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "medsam2_engine.runtime.prepare", json.dumps(spec)],
                              env=env, capture_output=True, text=True, timeout=timeout_s,
                              preexec_fn=lambda: os.nice(NICE))
    except (OSError, subprocess.SubprocessError) as err:
        logger.warning("compiling the new weights in a child process failed (%s): compiling here", err)
        return False
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        logger.warning("compiling the new weights in a child process failed (exit %s: %s): compiling here",
                       done.returncode, " | ".join(tail))
        return False
    return True


def main(argv=None) -> int:
    from ..checkpoints import ModelPreset, build_model
    from ..precision import quantize_int8
    from . import attach_cpu_runtime

    spec = json.loads((argv or sys.argv[1:])[0])
    preset = ModelPreset(**spec["preset"])
    model = build_model(preset, spec["checkpoint"], "cpu", spec["extra_overrides"])
    if spec["cpu_int8"]:
        quantize_int8(model)
    attached = attach_cpu_runtime(model, spec["runtime"], [model.image_size], cache_dir=spec["cache_dir"])
    print(json.dumps({"runtime": attached, "misses": model.serving.graph_cache.misses}))
    return 0 if attached == spec["runtime"] else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the graphs are on disk: no final collection of torch's and OpenVINO's objects
