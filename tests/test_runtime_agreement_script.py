"""scripts/runtime_agreement.py's verdict: the default float32 runtime is held to the bound,
int8 is only reported, and a runtime that did not attach is never a pass."""

from __future__ import annotations

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import runtime_agreement  # noqa: E402


def _rows(openvino: list, int8: list) -> list:
    return [{"case": f"c{n}", "structure": "s", "openvino": {"dice": a}, "openvino_int8": {"dice": b}}
            for n, (a, b) in enumerate(zip(openvino, int8))]


def test_the_default_runtime_below_the_bound_fails_and_int8_only_reports():
    runtimes = ["openvino", "openvino_int8"]
    passing = runtime_agreement.summarise(_rows([1.0, 0.9995, 0.9999], [0.998, 0.97, 1.0]), runtimes, 0.999)
    assert passing["openvino"] == {"measured": 3, "min": 0.9995, "median": 0.9999, "below_bound": []}
    assert passing["openvino_int8"]["below_bound"] == ["c0 / s: 0.998", "c1 / s: 0.97"]
    assert runtime_agreement.exit_code(passing, {}) == 0

    failing = runtime_agreement.summarise(_rows([1.0, 0.9989], [1.0, 1.0]), runtimes, 0.999)
    assert failing["openvino"]["below_bound"] == ["c1 / s: 0.9989"]
    assert runtime_agreement.exit_code(failing, {}) == 1


def test_nothing_measured_or_a_runtime_missing_is_not_a_pass():
    runtimes = ["openvino", "openvino_int8"]
    summary = runtime_agreement.summarise(_rows([1.0], [1.0]), runtimes, 0.999)
    assert runtime_agreement.exit_code(summary, {"openvino_int8": "torch (openvino_int8 unavailable: ...)"}) == 2
    assert runtime_agreement.exit_code(runtime_agreement.summarise([], runtimes, 0.999), {}) == 2
    only_int8 = runtime_agreement.summarise(_rows([1.0], [1.0]), ["openvino_int8"], 0.999)
    assert runtime_agreement.exit_code(only_int8, {}) == 2
