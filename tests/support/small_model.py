"""The small SAM 2 preset (:mod:`medsam2_eval.small_preset`) as files for tests: its config
yaml and untrained weights in the official checkpoint format. The checkpoint goes through the app's real
loading code, exactly as an official file would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from medsam2_engine.checkpoints import build_model, load_model_config, save_checkpoint
from medsam2_eval.small_preset import small_preset  # tests import it from here too


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
    model = build_model(small_preset(), "random", seed=seed)
    if object_present:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(8.0)
    save_checkpoint(model, path)
    return path
