"""What converting a network for OpenVINO costs, traced once (the app's ``convert_graph``) or as
``openvino.convert_model`` traces it (torch.jit's ``check_trace`` on), in one run, alternating.

    .venv/bin/python scripts/benchmark_conversion.py [--model sam2.1_hiera_tiny] [--repeats 2]

Random weights (timing only). For each way: the seconds per conversion of the image encoder,
and whether the two compiled graphs give the same outputs bit for bit on a random slice.
The CPU is named in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "medsam2"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from medsam2_engine.checkpoints import RANDOM_WEIGHTS, build_model, get_preset  # noqa: E402
from medsam2_engine.precision import cpu_bf16_units, cpu_int8_dot_units  # noqa: E402
from medsam2_engine.runtime.graph import convert_graph  # noqa: E402
from medsam2_engine.runtime.image_encoder import _ForwardImage  # noqa: E402
from benchmark_replicas import cpu_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import openvino as ov

    model = build_model(get_preset(args.model), RANDOM_WEIGHTS, "cpu")
    size = model.image_size
    module, example = _ForwardImage(model).eval(), torch.zeros(1, 3, size, size)
    ways = {"traced once (convert_graph)": lambda: convert_graph(ov, module, example),
            "openvino.convert_model (check_trace)": lambda: ov.convert_model(module, example_input=example)}
    seconds: dict = {name: [] for name in ways}
    graphs: dict = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, convert in ways.items():
                started = time.perf_counter()
                graphs[name] = convert()
                seconds[name].append(round(time.perf_counter() - started, 2))
    image = {0: np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}
    outputs = [ov.Core().compile_model(g, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(image) for g in graphs.values()]
    same = all(np.array_equal(a, b) for a, b in zip(outputs[0].values(), outputs[1].values()))
    ours, theirs = (min(s) for s in seconds.values())
    print(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "bf16_units": list(cpu_bf16_units()),
                      "int8_dot_units": list(cpu_int8_dot_units()), "model": args.model, "image_size": size,
                      "seconds": seconds, "ratio_best": round(theirs / ours, 2), "outputs_bit_identical": same},
                     indent=1))


if __name__ == "__main__":
    main()
