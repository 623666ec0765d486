"""CPU precision choices: bf16 only where the CPU has bf16 units; int8 linear layers on request."""

from __future__ import annotations

import pytest
import torch

from medsam2_engine import precision


def test_bf16_units_are_read_from_cpuinfo(tmp_path, monkeypatch):
    with_amx = tmp_path / "amx"
    with_amx.write_text("processor: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n")
    without = tmp_path / "plain"
    without.write_text("processor: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert precision.cpu_bf16_units(str(with_amx)) == ("amx_bf16",)
    assert precision.cpu_bf16_units(str(without)) == ()
    assert precision.cpu_bf16_units(str(tmp_path / "missing")) == ()

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ())
    assert not precision.use_cpu_bf16("auto") and precision.use_cpu_bf16("on")
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ("amx_bf16",))
    assert precision.use_cpu_bf16("auto") and not precision.use_cpu_bf16("off")
    with pytest.raises(ValueError, match="cpu_bf16 must be one of"):
        precision.use_cpu_bf16("fast")


def test_int8_graphs_allow_for_saturation_where_the_cpu_has_no_int8_dot_units(tmp_path, monkeypatch):
    """An AVX2-only CPU sums int8 products in 16 bits: its int8 graphs get NNCF's overflow fix on every
    layer, and a graph cached for a VNNI CPU is never read for it (the fix is in the key)."""
    pytest.importorskip("openvino", reason="openvino is not installed")
    from medsam2_engine.runtime import graph

    vnni = tmp_path / "vnni"
    vnni.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t\t: fpu avx avx2 fma\n")
    assert precision.cpu_int8_dot_units(str(vnni)) == ("avx512_vnni",)
    assert precision.cpu_int8_dot_units(str(avx2)) == ()

    keys, module = {}, torch.nn.Linear(2, 2)
    for name, units in (("vnni", ("avx512_vnni",)), ("avx2", ())):
        monkeypatch.setattr(graph, "cpu_int8_dot_units", lambda units=units: units)
        keys[name] = graph.cache_key(module, "image_encoder", "openvino_int8", 512, *graph.int8_key(True))
        assert graph.int8_key(False) == ()  # float32 and bf16 graphs keep their keys
    assert graph.int8_overflow_fix() == "enable"  # the last patched: AVX2 only
    assert keys["vnni"] != keys["avx2"]


def test_int8_model_keeps_the_masks_of_the_float32_model(fine_tuned, small_model_files):
    from medsam2_engine.checkpoints import preset_for_config_file
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.propagation import EarlyStop
    from medsam2_engine.mask_measures import box_on_largest_slice, dice
    from medsam2_engine.prompts import LabelPrompts
    from medsam2_engine.volume_io import Volume
    from tests.support.trained_small_model import AFFINE, phantom

    float32, _ = fine_tuned
    checkpoint = float32.models.get().checkpoint
    int8_source = ModelSource(preset_for_config_file(small_model_files[0]), float32.models.model_dir,
                              checkpoint=checkpoint, device="cpu", cpu_int8=True)
    model = int8_source.get().model
    quantized = [n for n, m in model.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert any(n.startswith("image_encoder.") for n in quantized)
    assert any(n.startswith("memory_attention.") for n in quantized)
    assert not any(n.startswith("sam_mask_decoder.") for n in quantized)  # once per prompt: left float32
    assert int8_source.status()["cpu_int8"] is True

    int8 = VolumeSegmenter(int8_source, EngineSettings(early_stop=EarlyStop(enabled=False)))
    array, truth = phantom(60)
    volume = Volume(array, AFFINE, "unseen")
    prompts = {"x": LabelPrompts(boxes=[box_on_largest_slice(truth)])}
    masks = [seg.run(volume, prompts, session_key=("int8", name)).labels["x"].mask
             for name, seg in (("float32", float32), ("int8", int8))]
    assert dice(masks[0], truth) > 0.9
    assert dice(masks[1], masks[0]) > 0.95, "int8 changed the mask beyond rounding"
