"""A small SAM 2 configuration for tests: untrained weights in the official checkpoint format.

It is SAM 2.1 hiera-tiny's config with narrower, shallower layers and 128 px input, so a
volume propagates in a second on two CPU cores. The checkpoint goes through the app's real
loading code, exactly as an official file would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import OmegaConf

from medsam2_engine.checkpoints import build_model, get_preset, load_model_config, save_checkpoint

SMALL_OVERRIDES = {
    "model.image_size": 128,
    "model.image_encoder.trunk.embed_dim": 24,
    "model.image_encoder.trunk.num_heads": 1,
    "model.image_encoder.trunk.stages": [1, 1, 2, 1],
    "model.image_encoder.trunk.global_att_blocks": [3],
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size": [4, 4],
    "model.image_encoder.neck.backbone_channel_list": [192, 96, 48, 24],
    "model.memory_attention.num_layers": 1,
    "model.memory_attention.layer.dim_feedforward": 256,
    "model.memory_attention.layer.self_attention.feat_sizes": [8, 8],
    "model.memory_attention.layer.cross_attention.feat_sizes": [8, 8],
}


def small_preset():
    return dataclasses.replace(get_preset("sam2.1_hiera_tiny"), name="test_small", overrides=SMALL_OVERRIDES,
                               image_size=128)


def write_small_config(path: Path) -> Path:
    """The small model's config as a standalone yaml (what ``--conf model_config`` takes)."""
    cfg = load_model_config(small_preset())
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path)
    return path


def write_small_checkpoint(path: Path, seed: int = 0, object_present: bool = True) -> Path:
    """Untrained weights, seeded, saved as ``{"model": state_dict}`` like an official file.

    With ``object_present`` the object-score head's last bias is raised so the untrained
    model reports the object everywhere; otherwise its random score hides most masks and
    tests of corrections or several labels would compare empty masks with empty masks.
    """
    torch.manual_seed(seed)
    model = build_model(small_preset(), "random")
    if object_present:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(8.0)
    save_checkpoint(model, path)
    return path
