"""A small SAM 2 preset: SAM 2.1 hiera-tiny with narrower, shallower layers and 128 px input.

A volume propagates in about a second on two CPU cores, so the tests and the fine-tune
benchmark use it. Untrained unless fine-tuned; never a model to measure accuracy with.
"""

from __future__ import annotations

import dataclasses

from medsam2_engine.checkpoints import get_preset

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
