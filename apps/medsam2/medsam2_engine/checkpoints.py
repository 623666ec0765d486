"""SAM 2 checkpoints: official presets, where a file is found, download, and loading.

A checkpoint is the official SAM 2 format, ``{"model": state_dict}``. Each preset names
the sam2 package's model config, the overrides that give its resolution, and the URL it
is published at. The model is built from the config with hydra and our predictor class,
then the state dict is loaded strictly so a file that does not fit the config is refused
with the keys that differ.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import hole_filling
from .atomic_files import atomic_write

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"
# "random" weights are drawn from this seed, so an untrained server is the same network after a
# restart and a problem seen with it can be reproduced (reported in /info as ``random_seed``)
RANDOM_WEIGHTS_SEED = 0
UNTRAINED_ORIGIN = "untrained_origin"  # checkpoint key: weights descend from random initialisation
CHECKPOINT_ENV = "MEDSAM2_CHECKPOINT"
FINETUNED_NAME = "finetuned.pt"
PREDICTOR_TARGET = "medsam2_engine.predictor.VolumePredictor"

_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_SAM21_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_MEDSAM2_URL = "https://huggingface.co/wanglab/MedSAM2/resolve/main/"


class CheckpointError(RuntimeError):
    """The checkpoint is missing, unreadable or does not fit the model config."""


@dataclass(frozen=True)
class ModelPreset:
    name: str
    config: str  # a path inside the sam2 package, or an absolute path to a yaml file
    filename: str
    url: str
    image_size: int
    overrides: dict = field(default_factory=dict)
    protocol: str = ""  # the protocol its weights were validated with ("": protocols.default_protocol's rule)


def _preset(name, config, filename, base_url, image_size=1024, overrides=None, protocol="") -> ModelPreset:
    return ModelPreset(name, config, filename, base_url + filename, image_size, dict(overrides or {}), protocol)


_AT_512 = {
    "model.image_size": 512,
    "model.memory_attention.layer.self_attention.feat_sizes": [32, 32],
    "model.memory_attention.layer.cross_attention.feat_sizes": [32, 32],
}

# MedSAM2's echocardiography fine-tune, as its video script (medsam2_infer_video.py) builds it:
# sam2's video predictor without post-processing (no stability fallback to multimask, no
# binarised click masks, no hole filling) and with non-overlapping objects
_US_HEART_VIDEO = {
    **_AT_512,
    "model.sam_mask_decoder_extra_args": None,
    "model.binarize_mask_from_pts_for_mem_enc": False,
    "model.fill_hole_area": 0,
    "model.non_overlap_masks": True,
}

PRESETS = {
    p.name: p
    for p in [
        _preset("medsam2", "configs/sam2.1/sam2.1_hiera_t.yaml", "MedSAM2_latest.pt", _MEDSAM2_URL, 512, _AT_512),
        _preset("medsam2_us_heart", "configs/sam2.1/sam2.1_hiera_t.yaml", "MedSAM2_US_Heart.pt", _MEDSAM2_URL, 512,
                _US_HEART_VIDEO, protocol="medsam2_video"),
        _preset("sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", _SAM21_URL),
        _preset("sam2.1_hiera_small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", _SAM21_URL),
        _preset(
            "sam2.1_hiera_base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", _SAM21_URL
        ),
        _preset("sam2.1_hiera_large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", _SAM21_URL),
        _preset("sam2_hiera_tiny", "configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt", _SAM2_URL),
        _preset("sam2_hiera_small", "configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt", _SAM2_URL),
        _preset("sam2_hiera_base_plus", "configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt", _SAM2_URL),
        _preset("sam2_hiera_large", "configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt", _SAM2_URL),
    ]
}
DEFAULT_PRESET = "medsam2"

# sam2's own video-predictor settings (build_sam2_video_predictor with post-processing on).
VIDEO_PREDICTOR_OVERRIDES = {
    "model.sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    },
    "model.binarize_mask_from_pts_for_mem_enc": True,
    # small holes filled on every device: see hole_filling.py (sam2's CUDA kernel, or the CPU one)
    "model.fill_hole_area": 8,
    # a slice clicked after propagation becomes a conditioning frame (an anchor). Only prompts
    # added to an already propagated state see this; the medsam2 protocol never adds any.
    "model.add_all_frames_to_correct_as_cond": True,
}
MEDSAM2_INPUT_SIZE = 512  # MedSAM2's released weights were trained and validated at 512 px


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise CheckpointError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_for_config_file(path: str | os.PathLike) -> ModelPreset:
    """A preset for a model config yaml of one's own (its checkpoint has no official URL)."""
    from omegaconf import OmegaConf

    path = Path(path).resolve()
    if not path.is_file():
        raise CheckpointError(f"model config {path} not found")
    size = OmegaConf.select(OmegaConf.load(path), "model.image_size", default=1024)
    return ModelPreset(path.stem, str(path), f"{path.stem}.pt", "", int(size))


def config_path(config: str) -> Path:
    path = Path(config)
    if path.is_absolute():
        return path
    import sam2

    return Path(sam2.__file__).parent / config


def load_model_config(preset: ModelPreset, extra_overrides: dict | None = None):
    """The preset's model config as an OmegaConf node, with our predictor as the target."""
    from omegaconf import OmegaConf

    path = config_path(preset.config)
    if not path.exists():
        raise CheckpointError(f"model config {path} not found (preset {preset.name})")
    cfg = OmegaConf.load(path)
    overrides = {**VIDEO_PREDICTOR_OVERRIDES, **preset.overrides, **(extra_overrides or {})}
    hole_filling.install()
    overrides["model._target_"] = PREDICTOR_TARGET
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def read_state_dict(path: str) -> dict:
    """Read ``{"model": state_dict}`` and check it is one; errors name the file."""
    return read_checkpoint(path)["model"]


def untrained_origin(path: str) -> bool:
    """Do ``path``'s weights descend from random initialisation (a fine-tune of ``random``)?"""
    return path == RANDOM_WEIGHTS or bool(read_checkpoint(path).get(UNTRAINED_ORIGIN))


def read_checkpoint(path: str) -> dict:
    """The whole ``{"model": state_dict, ...}`` payload (with what the file records besides)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is not a readable torch file (corrupt or truncated?): {err}") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} is not in the SAM 2 format {{'model': state_dict}}")
    return payload


def check_input_size(preset: ModelPreset, path: str, payload: dict) -> None:
    """Refuse a checkpoint made for another input size than the preset runs at.

    The size comes from the file (``image_size``, recorded by :func:`save_checkpoint`), or
    for MedSAM2's released files (same keys as SAM 2.1 tiny) from the file name.
    """
    recorded = payload.get("image_size")
    source = "recorded in the file"
    if recorded is None and Path(path).name.lower().startswith("medsam2"):
        recorded, source = MEDSAM2_INPUT_SIZE, "MedSAM2 files are trained at 512 px"
    if recorded is not None and int(recorded) != int(preset.image_size):
        raise CheckpointError(
            f"checkpoint {path} is for {int(recorded)} px inputs ({source}) but model {preset.name} runs at "
            f"{preset.image_size} px: the weights would see a scale they were not trained for; use a preset "
            f"of {int(recorded)} px (e.g. --conf model medsam2 for MedSAM2 files)"
        )


def check_fits(model: torch.nn.Module, state_dict: dict, path: str, config: str) -> None:
    """Raise a CheckpointError naming the keys or shapes that differ from the model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong_shape:
            k = wrong_shape[0]
            details.append(
                f"{len(wrong_shape)} keys of another shape (e.g. {k}: file {tuple(state_dict[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise CheckpointError(f"checkpoint {path} does not fit model config {config}: " + "; ".join(details))


@dataclass(frozen=True)
class CheckpointFacts:
    """What a checkpoint says of its weights besides the weights, read with them and kept beside
    the model they were loaded into (``model_source.LoadedModel.facts``)."""

    untrained_origin: bool = False  # random weights, or a fine-tune descending from them (UNTRAINED_ORIGIN)
    finetune: dict | None = None  # a fine-tune's record ({"number", "published_ts", "epoch", "metric", ...})

    @classmethod
    def of(cls, checkpoint: str, payload: dict | None) -> "CheckpointFacts":
        if checkpoint == RANDOM_WEIGHTS or payload is None:
            return cls(untrained_origin=checkpoint == RANDOM_WEIGHTS)
        return cls(bool(payload.get(UNTRAINED_ORIGIN)), payload.get("finetune"))


def build_model(preset: ModelPreset, checkpoint: str, device: str = "cpu", extra_overrides: dict | None = None,
                seed: int = RANDOM_WEIGHTS_SEED):
    """Instantiate the predictor for ``preset`` and load ``checkpoint`` (a path or ``"random"``):
    :func:`load_model`'s model, for a caller that needs nothing else of the file."""
    return load_model(preset, checkpoint, device, extra_overrides, seed)[0]


def load_model(preset: ModelPreset, checkpoint: str, device: str = "cpu", extra_overrides: dict | None = None,
               seed: int = RANDOM_WEIGHTS_SEED) -> tuple:
    """``(model, CheckpointFacts)``: the predictor for ``preset`` with ``checkpoint`` loaded (a path
    or ``"random"``), and what the file says besides its weights.

    Initial (``"random"``) weights are drawn from ``seed``, without touching the caller's
    random state.

    A file that does not fit the config is reported key by key before torch sees it.
    """
    from hydra.utils import instantiate

    cfg = load_model_config(preset, extra_overrides)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's random state
        torch.manual_seed(seed)
        model = instantiate(cfg.model, _recursive_=True)
    payload = None
    if checkpoint == RANDOM_WEIGHTS:
        logger.warning(
            "MedSAM-2 is running with UNTRAINED RANDOM WEIGHTS (checkpoint=random): masks prove the "
            "plumbing only and say nothing about accuracy"
        )
    else:
        payload = read_checkpoint(checkpoint)
        state_dict = payload["model"]
        check_fits(model, state_dict, checkpoint, preset.config)
        check_input_size(preset, checkpoint, payload)  # same keys, another scale (MedSAM2 under a 1024 preset)
        model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval(), CheckpointFacts.of(checkpoint, payload)


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, extra: dict | None = None) -> str:
    """Write ``{"model": state_dict}`` atomically (temporary file, then rename)."""
    payload = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "image_size": int(getattr(model, "image_size", 0)) or None, **(extra or {})}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def download(preset: ModelPreset, model_dir: str | os.PathLike, timeout: float = 20.0) -> str:
    """Fetch the preset's official file into ``model_dir``; a partial download never lands."""
    target = Path(model_dir) / preset.filename
    if not preset.url:
        raise CheckpointError(f"model {preset.name} has no official download; place its checkpoint at {target}")
    logger.info("downloading %s from %s to %s", preset.name, preset.url, target)

    def fetch(tmp: str) -> None:
        with urllib.request.urlopen(preset.url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, next_report = 0, 0.1
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    logger.info("download %s: %d%% of %.0f MB", preset.filename, 100 * done // total, total / 1e6)
                    next_report += 0.1

    try:
        return atomic_write(target, fetch)
    except OSError as err:
        raise CheckpointError(
            f"could not download {preset.url} ({err}); place the file at {target} or pass --conf checkpoint PATH"
        ) from err
