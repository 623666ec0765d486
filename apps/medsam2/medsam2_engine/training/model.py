"""The trainable model: sam2's own ``SAM2Train`` built from the served model's config.

``SAM2Train`` shares every parameter name with the video predictor, so a checkpoint goes
both ways unchanged. It also simulates the prompts SAM 2 was trained with: a jittered
box or a click from the reference mask on the first frame (and, at random, more frames),
then correction clicks sampled on the errors of its own previous prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoints import RANDOM_WEIGHTS, ModelPreset, check_fits, load_model_config, read_state_dict

logger = logging.getLogger(__name__)

TRAIN_TARGET = "training.model.sam2.SAM2Train"
# Settings only sam2's video predictor accepts (post-processing at inference).
PREDICTOR_ONLY_KEYS = ("fill_hole_area", "non_overlap_masks", "clear_non_cond_mem_around_input")
MODULES = ("image_encoder", "memory_attention", "memory_encoder", "sam_prompt_encoder", "sam_mask_decoder")


@dataclass
class PromptSimulation:
    """How prompts are drawn from the reference masks (names follow SAM2Train's arguments).

    Defaults follow sam2's own fine-tuning recipe, except that masks are never given as
    prompts (the app only takes boxes and clicks) and fewer correction rounds are run.
    """

    prob_point_or_box: float = 1.0  # else the reference mask itself is the prompt
    prob_box: float = 0.5  # of those: a jittered box, else one click
    frames_to_correct: int = 2  # frames that receive correction clicks (random 1..n)
    init_cond_frames: int = 2  # prompted frames per clip (random 1..n)
    correction_clicks: int = 3  # correction rounds per corrected frame
    prob_click_from_reference: float = 0.1  # a correction click from the mask instead of the error

    def overrides(self, clip_length: int) -> dict:
        if self.correction_clicks < 1:
            raise ValueError(f"correction_clicks must be at least 1 (SAM2Train needs a round), got {self.correction_clicks}")
        init = max(1, min(self.init_cond_frames, clip_length))
        correct = max(init, min(self.frames_to_correct, clip_length))
        return {
            "prob_to_use_pt_input_for_train": self.prob_point_or_box,
            "prob_to_use_box_input_for_train": self.prob_box,
            "num_frames_to_correct_for_train": correct,
            "rand_frames_to_correct_for_train": True,
            "num_init_cond_frames_for_train": init,
            "rand_init_cond_frames_for_train": True,
            "num_correction_pt_per_frame": self.correction_clicks,
            "prob_to_sample_from_gt_for_train": self.prob_click_from_reference,
            "add_all_frames_to_correct_as_cond": True,
        }


def build_train_model(preset: ModelPreset, checkpoint: str, device: str, prompts: PromptSimulation,
                      clip_length: int, extra_overrides: dict | None = None, seed: int = 0,
                      prompt_seed: int | None = None):
    """``SAM2Train`` for ``preset`` with ``checkpoint`` (a path or "random") loaded strictly."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = load_model_config(preset, extra_overrides)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for key in PREDICTOR_ONLY_KEYS:
        model_cfg.pop(key, None)
    model_cfg.update(prompts.overrides(clip_length))
    model_cfg["_target_"] = TRAIN_TARGET
    torch.manual_seed(seed)
    model = instantiate(OmegaConf.create(model_cfg), _recursive_=True)
    # SAM2Train's prompt sampler; seeded per run (and per training process)
    model.rng = np.random.default_rng(seed if prompt_seed is None else prompt_seed)
    if checkpoint != RANDOM_WEIGHTS:
        state_dict = read_state_dict(checkpoint)
        check_fits(model, state_dict, checkpoint, preset.config)
        model.load_state_dict(state_dict, strict=True)
    return model.to(device)


def frozen_modules(freeze: str, pretrained: bool) -> list:
    """Which top-level modules to freeze: "auto" (image encoder if pretrained), "none", or names."""
    freeze = (freeze or "auto").strip().lower()
    if freeze == "auto":
        return ["image_encoder"] if pretrained else []
    if freeze in ("none", ""):
        return []
    names = [name.strip() for name in freeze.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        raise ValueError(f"freeze: unknown module(s) {unknown}; choose from {list(MODULES)}, 'auto' or 'none'")
    return names


def apply_freezing(model: torch.nn.Module, modules: list) -> list:
    """Turn off gradients for ``modules``; returns the parameters left to train."""
    for name in modules:
        for param in getattr(model, name).parameters():
            param.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"freeze={modules} leaves nothing to train")
    total = sum(p.numel() for p in model.parameters())
    logger.info("training %.2fM of %.2fM parameters (frozen: %s)", sum(p.numel() for p in trainable) / 1e6,
                total / 1e6, ", ".join(modules) or "nothing")
    return trainable
