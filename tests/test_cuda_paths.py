"""The CUDA code paths' logic, runnable on CPU: device choice, bf16 autocast scoped per call,
features kept where the encoder made them and counted in the budget, the benchmark's CUDA run.
The last test needs a GPU and says so when there is none."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_device_choice(monkeypatch):
    from medsam2_engine.model_source import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu" and pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="cuda:1"):
        pick_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda" and pick_device("cuda:1") == "cuda:1"


def test_cuda_serves_pytorch_with_bf16_autocast_never_the_cpu_runtime(monkeypatch, small_model_files):
    from medsam2_engine.checkpoints import preset_for_config_file
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.precision import autocast_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config, checkpoint = small_model_files
    source = ModelSource(preset_for_config_file(config), config.parent, checkpoint=str(checkpoint), device="cuda",
                         cpu_runtime="openvino", cpu_int8=True)
    assert (source.device, source.cpu_runtime, source.cpu_int8) == ("cuda", "torch", False)
    import medsam2_engine.precision as precision

    made = []
    monkeypatch.setattr(precision.torch, "autocast",
                        lambda device, dtype: made.append((device, dtype)) or contextlib.nullcontext())
    with autocast_for("cuda:0"):  # made without a GPU here
        assert made == [("cuda", torch.bfloat16)]
    monkeypatch.undo()
    assert isinstance(autocast_for("cpu"), contextlib.nullcontext)


class _Scopes:
    """Stands in for precision.autocast_for: records the device of each scope and whether one is open."""

    def __init__(self):
        self.devices, self.open, self.encoder_calls_outside = [], 0, 0

    def __call__(self, device, cpu_bf16="off"):
        @contextlib.contextmanager
        def scope():
            self.devices.append(str(device))
            self.open += 1
            try:
                yield
            finally:
                self.open -= 1
        return scope()

    def encoder_hook(self, *_):
        if not self.open:
            self.encoder_calls_outside += 1


def test_autocast_is_scoped_to_each_call_and_covers_every_encoder_run(monkeypatch, small_source, phantom):
    import medsam2_engine.encode_ahead as encode_ahead_module
    import medsam2_engine.volume_segmenter as engine_module
    from medsam2_engine.encode_ahead import EncodeAhead
    from medsam2_engine.volume_segmenter import VolumeSegmenter
    from medsam2_engine.prompts import Box, LabelPrompts

    scopes = _Scopes()
    monkeypatch.setattr(engine_module, "autocast_for", scopes)
    monkeypatch.setattr(encode_ahead_module, "autocast_for", scopes)
    model = small_source.get().model  # loaded on CPU first
    monkeypatch.setattr(small_source, "device", "cuda")  # what the scopes are asked for; the model stays on CPU
    handle = model.image_encoder.register_forward_pre_hook(scopes.encoder_hook)
    try:
        segmenter = VolumeSegmenter(small_source)
        job = EncodeAhead(segmenter).request(("u", "cuda"), phantom)
        assert job.finished.wait(60) and job.encoded == phantom.array.shape[2]
        segmenter.run(phantom, {"l": LabelPrompts(boxes=[Box(10, 8, 26, 20, 6)])}, session_key=("u", "cuda"))
        segmenter.run(phantom, {"l": LabelPrompts(boxes=[Box(10, 8, 26, 20, 6)])}, session_key=("u", "other"))
    finally:
        handle.remove()
    assert scopes.encoder_calls_outside == 0  # every encoder run is inside a bf16 scope
    assert scopes.open == 0  # and every scope closed when its call returned
    assert set(scopes.devices) == {"cuda"}
    assert len(scopes.devices) == job.encoded + 2  # one per encode-ahead slice, one per request: never global
    assert not torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("cpu")


def test_features_stay_on_their_device_and_count_in_the_budget():
    from medsam2_engine.feature_cache import FeatureCache

    def features(dtype):  # a 32 px and a 16 px level, on a device no host copy could come from
        return {"backbone_fpn": [torch.empty(1, 8, 32, 32, dtype=dtype, device="meta"),
                                 torch.empty(1, 8, 16, 16, dtype=dtype, device="meta")],
                "vision_pos_enc": [torch.empty(1, 8, 32, 32, device="meta"), torch.empty(1, 8, 16, 16, device="meta")]}

    per_frame_bf16 = (8 * 32 * 32 + 8 * 16 * 16) * 2
    cache = FeatureCache(max_bytes=3 * per_frame_bf16)
    for frame in range(4):
        cache.put(frame, features(torch.bfloat16))  # what the encoder gives under bf16 autocast
    assert cache.bytes == 3 * per_frame_bf16 and len(cache) == 3 and 0 not in cache  # oldest evicted
    got = cache.get(3)
    assert all(t.device.type == "meta" and t.dtype == torch.bfloat16 for t in got["backbone_fpn"])
    cache.put(9, features(torch.float32))  # float32 features weigh twice as much
    assert cache.bytes <= 3 * per_frame_bf16 and len(cache) == 2


def test_the_benchmark_runs_every_pipeline_on_the_requested_device(monkeypatch, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark_speed

    commands = []

    def fake_run(cmd, capture_output, text):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout='{"runs": []}\n', stderr="")

    monkeypatch.setattr(benchmark_speed.subprocess, "run", fake_run)
    args = benchmark_speed.argparse.Namespace(
        size=64, preset="medsam2", checkpoint="x.pt", repeats=1, fraction=0.5, workdir=str(tmp_path), cpu_int8="off",
        full_correction_max_slices=8, device="cuda:0", ahead_pause=10.0, only_reference=True)
    for mode in ("builtin", "ours", "video", "ahead"):
        benchmark_speed.run_child(args, mode, 40)
    for cmd in commands:
        assert cmd[cmd.index("--device") + 1] == "cuda:0"
        assert cmd[cmd.index("--cpu-runtime") + 1] == "torch"  # OpenVINO is a CPU runtime only


@needs_cuda
def test_segmenting_on_cuda_matches_cpu(small_model_files, phantom):
    from medsam2_engine.checkpoints import preset_for_config_file
    from medsam2_engine.volume_segmenter import VolumeSegmenter
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.prompts import Box, LabelPrompts

    config, checkpoint = small_model_files
    prompts = {"l": LabelPrompts(boxes=[Box(10, 8, 26, 20, 6)])}
    masks = {}
    for device in ("cpu", "cuda"):
        source = ModelSource(preset_for_config_file(config), config.parent, checkpoint=str(checkpoint), device=device)
        segmenter = VolumeSegmenter(source)
        with segmenter.open(("u", device), phantom) as session:
            result = segmenter.segment(session, prompts)
            cached = session.feature_cache.get(session.frames.key(6))
        masks[device] = result.labels["l"].mask
        assert cached["backbone_fpn"][0].device.type == device  # features kept where they were made
    inter = np.logical_and(masks["cpu"], masks["cuda"]).sum()
    assert 2 * inter / max(1, masks["cpu"].sum() + masks["cuda"].sum()) >= 0.95  # bf16 against float32
