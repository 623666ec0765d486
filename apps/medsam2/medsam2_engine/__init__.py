"""MedSAM-2 engine: SAM 2 over volumes and 2D images, with no MONAI Label dependency.

The request flow and where each idea lives: docs/architecture.md. The public names below are
re-exported here (imported on first use, so ``import medsam2_engine.phantoms`` stays light):
callers import them from the package, and modules can move without breaking them.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "VolumeSegmenter": "volume_segmenter", "EngineSettings": "volume_segmenter",
    "SegmentOptions": "volume_segmenter", "VolumeResult": "volume_segmenter", "LabelResult": "volume_segmenter",
    "ImageSegmenter": "image_segmenter", "ImageResult": "image_segmenter",
    "OnePromptSegmenter": "one_prompt", "OnePromptResult": "one_prompt", "OnePromptImageResult": "one_prompt",
    "ModelSource": "model_source", "EncodeAhead": "encode_ahead",
    "StudyMemory": "study_memory", "FeatureCache": "feature_cache", "FeatureStore": "feature_cache",
    "SessionLimits": "sessions",
    "LabelPrompts": "prompts", "Click": "prompts", "Box": "prompts", "PromptError": "prompts",
    "EarlyStop": "propagation", "CorrectionStop": "propagation", "CropRegionSettings": "crop_region",
    "ExactStopReport": "exact_stop", "Volume": "volume_io", "load_image": "volume_io",
    "Window": "windowing", "model_window": "windowing", "PROTOCOLS": "protocols",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'medsam2_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value
