"""Segmentation methods behind one interface, so every protocol treats them alike.

A method receives the *whole* interaction so far on every call: the box (or None) and all
clicks, as a user's client would send them. ``begin`` starts a new interaction on a case
(new prompts; encoded slices may be reused where the method can).
"""

from __future__ import annotations

import time


from medsam2_engine.volume_segmenter import EngineSettings, SegmentOptions, VolumeSegmenter
from medsam2_engine.image_segmenter import ImageSegmenter
from medsam2_engine.prompts import LabelPrompts
from medsam2_engine.propagation import CorrectionStop, EarlyStop
from medsam2_engine.crop_region import CropRegionSettings
from .baselines import copy_slice_baseline, otsu_box_baseline


class Method:
    name = "method"
    learned = True
    needs_box = False  # only meaningful with a box prompt
    supports_2d = True
    supports_3d = True
    own_click_budget = False  # True: the harness gives it ``--builtin-clicks`` corrections, not ``--clicks``

    def begin(self, case, structure, protocol: str) -> None:
        self._case, self._structure, self._protocol = case, structure, protocol

    def segment(self, box, clicks) -> tuple:
        """``(bool mask on the case's grid, info dict with at least "seconds")``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class EngineMethod(Method):
    """This app's engine under one protocol and set of options (crop region, early and correction stop)."""

    def __init__(self, models, early_stop: EarlyStop, name: str = "medsam2_engine", protocol: str | None = None,
                 correction_stop: CorrectionStop | None = None, crop_region: CropRegionSettings | None = None):
        self.name = name
        self.early_stop = early_stop
        self.correction_stop = correction_stop or CorrectionStop()
        self.crop_region = crop_region or CropRegionSettings()
        settings = EngineSettings(protocol=protocol, early_stop=early_stop, correction_stop=self.correction_stop,
                                  crop_region=self.crop_region)
        self.volumes = VolumeSegmenter(models, settings)
        self.images = ImageSegmenter(models, memory=self.volumes.memory)

    def segment(self, box, clicks) -> tuple:
        case = self._case
        prompts = LabelPrompts(clicks=list(clicks), boxes=[box] if box is not None else [])
        started = time.perf_counter()
        if not case.volume.is_3d:
            result = self.images.run(case.volume, prompts, session_key=(case.name,), window=case.window)
            window = result.window.to_json() if result.window is not None else {"source": "RGB 0-255"}
            return result.mask, {"seconds": time.perf_counter() - started, "embedding_reused": result.embedding_reused,
                                 "input_window": window}
        label = f"{self._structure.name}|{self._protocol}"
        options = SegmentOptions(self.early_stop, self.correction_stop, self.crop_region)
        result = self.volumes.run(case.volume, {label: prompts}, session_key=(case.name,), window=case.window,
                                  modality=case.volume.declared_modality, options=options)
        out = result.labels[label]
        info = {
            "seconds": time.perf_counter() - started,
            "slices_encoded": result.session.slices_encoded,
            "slices_propagated": sum(p.slices for p in out.passes),
            "stopped_early": [p.direction for p in out.passes if p.stopped_early],
            "input_window": result.window.to_json(),
            "engine_protocol": result.run.protocol,
        }
        return out.mask, info

    def close(self) -> None:
        self.volumes.memory.clear()
        self.images.memory.clear()


class CopySliceMethod(Method):
    name = "copy_reference_slice"
    learned = False

    def segment(self, box, clicks) -> tuple:
        started = time.perf_counter()
        k = box.k if box is not None else clicks[0].k
        mask = copy_slice_baseline(self._structure.mask, k)
        return mask, {"seconds": time.perf_counter() - started, "uses_reference": True}


class OtsuBoxMethod(Method):
    name = "otsu_in_box"
    learned = False
    needs_box = True

    def segment(self, box, clicks) -> tuple:
        started = time.perf_counter()
        image = self._case.volume.array
        image = image.mean(axis=-1) if self._case.volume.is_rgb else image
        mask = otsu_box_baseline(image, box)
        return mask, {"seconds": time.perf_counter() - started}
