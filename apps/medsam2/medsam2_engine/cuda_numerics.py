"""MedSAM2's numeric choices on CUDA, where they differ from upstream sam2's (issue 23).

MedSAM2's vendored sam2 and its scripts, on a GPU: TF32 matrix products on; scaled
dot-product attention forced to Flash; the prompt encoder's point embeddings added in place,
so under bf16 autocast the sparse embeddings stay bf16 (upstream's ``torch.where`` promotes
them to float32, up to 0.012 apart in the residual path). ``cuda_numerics reference`` (the
default) applies all three on CUDA; ``sam2`` keeps upstream's. CPU runs are untouched.
No GPU was reachable where this was written: the pieces are tested for their logic on the
CPU (tests/test_cuda_numerics.py) and ``scripts/gpu_check.sh`` measures them on a GPU.
"""

from __future__ import annotations

import contextlib
import types

import torch

CUDA_NUMERICS = ("reference", "sam2")
_flash_only = False  # set when a model is served on CUDA with the reference's numerics


def reference_point_embedding(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
    """sam2's ``PromptEncoder._embed_points`` with the label embeddings added in place (dtype kept)."""
    points = points + 0.5  # the pixel's centre
    if pad:
        points = torch.cat([points, torch.zeros((points.shape[0], 1, 2), device=points.device)], dim=1)
        labels = torch.cat([labels, -torch.ones((labels.shape[0], 1), device=labels.device)], dim=1)
    embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
    padding = labels == -1
    embedding[padding] = 0.0
    embedding[padding] += self.not_a_point_embed.weight.to(embedding.dtype)
    for value, table in enumerate(self.point_embeddings):
        embedding[labels == value] += table.weight.to(embedding.dtype)
    return embedding


def install(model, device: str, choice: str = "reference") -> bool:
    """Apply the reference's CUDA numerics to ``model``; whether anything changed (only on CUDA)."""
    global _flash_only
    if choice not in CUDA_NUMERICS:
        raise ValueError(f"cuda_numerics must be one of {CUDA_NUMERICS}, got {choice!r}")
    if not str(device).startswith("cuda") or choice != "reference":
        return False
    torch.set_float32_matmul_precision("high")  # TF32 matrix products
    torch.backends.cudnn.allow_tf32 = True
    encoder = model.sam_prompt_encoder
    encoder._embed_points = types.MethodType(reference_point_embedding, encoder)
    _flash_only = True
    return True


def attention_context(device: str):
    """Flash attention only, around a CUDA call, when the reference's numerics are installed."""
    if not (_flash_only and str(device).startswith("cuda")):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
