"""MedSAM2's CUDA numeric choices (cuda_numerics.py), their logic checked on the CPU; a GPU run
(scripts/gpu_check.sh) checks them where they apply."""

from __future__ import annotations

import contextlib

import pytest
import torch

from medsam2_engine import cuda_numerics


def _encoder(small_source):
    return small_source.get().model.sam_prompt_encoder


def test_in_place_point_embeddings_keep_bf16_where_upstream_promotes(small_source):
    encoder = _encoder(small_source)
    points = torch.tensor([[[10.0, 20.0], [40.0, 5.0], [7.0, 7.0]]])
    labels = torch.tensor([[1, 0, 2]])
    with torch.no_grad():
        upstream = encoder._embed_points(points, labels, pad=True)
        ours = cuda_numerics.reference_point_embedding(encoder, points, labels, pad=True)
        assert torch.allclose(upstream, ours, atol=1e-6)  # float32: the same embedding
        with torch.autocast("cpu", dtype=torch.bfloat16):
            up_bf16 = encoder._embed_points(points, labels, pad=True)
            ref_bf16 = cuda_numerics.reference_point_embedding(encoder, points, labels, pad=True)
    assert ref_bf16.dtype == torch.bfloat16  # the reference's: kept in bf16 by the in-place adds
    assert up_bf16.dtype == torch.float32  # upstream's torch.where promotes with the float32 weights
    assert (ref_bf16.float() - up_bf16).abs().max() < 0.05  # bf16 rounding apart, no more


def test_installed_only_on_cuda_and_only_when_asked(small_source, monkeypatch):
    model = small_source.get().model
    assert not cuda_numerics.install(model, "cpu")
    assert not cuda_numerics.install(model, "cuda", "sam2")
    with pytest.raises(ValueError, match="cuda_numerics"):
        cuda_numerics.install(model, "cuda", "fast")
    assert isinstance(cuda_numerics.attention_context("cuda"), contextlib.nullcontext)  # nothing installed


def test_on_cuda_tf32_flash_and_the_embedding_are_installed(small_model_files, monkeypatch):
    from medsam2_engine.checkpoints import build_model, preset_for_config_file

    config, checkpoint = small_model_files
    model = build_model(preset_for_config_file(config), str(checkpoint), "cpu")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(cuda_numerics, "_flash_only", False)
    assert cuda_numerics.install(model, "cuda:0")  # the model itself stays where it is
    try:
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before)
    assert model.sam_prompt_encoder._embed_points.__func__ is cuda_numerics.reference_point_embedding
    assert not isinstance(cuda_numerics.attention_context("cuda"), contextlib.nullcontext)
    assert isinstance(cuda_numerics.attention_context("cpu"), contextlib.nullcontext)
