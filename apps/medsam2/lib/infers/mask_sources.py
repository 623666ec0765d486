"""Masks a request may name, for a mask prompt ("start from a mask") or a lock.

- ``{"from": "structure", "name": "organ"}``: another structure of the request's session (its
  last mask), else of the study's saved final label;
- ``{"from": "final", "name": "organ"}``: that structure of the study's saved final label;
- ``{"from": "upload", "value": 2}``: the label file uploaded with the request (MONAI Label's
  ``label`` file of ``/infer``, as Slicer sends one), voxels of that value (default: any
  non-zero), on the image's own grid.

``"slices": [k, ...]`` picks the slices the mask is given on (default: every slice it has).
``"locked": ["organ", ...]`` names structures whose voxels the segmented label never takes.
Every failure names the field: a missing structure, a label on another grid, an empty slice.
"""

from __future__ import annotations

import os

import numpy as np

from medsam2_engine.drawn_prompts import mask_prompts
from medsam2_engine.prompts import PromptError

SOURCES = ("structure", "final", "upload")


class MaskSources:
    def __init__(self, session, datastore, image_id: str | None, upload: str | None, labels: list):
        self.session = session
        self.datastore = datastore
        self.image_id = image_id
        self.upload = upload if isinstance(upload, str) and upload else None
        self.labels = list(labels)
        self._final = None

    @property
    def shape(self) -> tuple:
        return tuple(self.session.volume.array.shape)

    def mask_prompt(self, spec, field: str = "mask_prompt") -> list:
        """MaskPrompts from ``spec`` (see the module's docstring)."""
        if not isinstance(spec, dict) or spec.get("from") not in SOURCES:
            raise PromptError(f'{field}: expected {{"from": one of {", ".join(SOURCES)}, ...}}, got {str(spec)[:80]}')
        source = spec["from"]
        if source == "upload":
            mask = self._uploaded(spec.get("value"), field)
        else:
            name = spec.get("name")
            if not isinstance(name, str) or not name:
                raise PromptError(f'{field}.name: the structure to start from, e.g. "organ"')
            mask = self._final_structure(name, field) if source == "final" else self.structure(name, field)
        return mask_prompts(mask, spec.get("slices"), field)

    def locked(self, names, field: str = "locked") -> np.ndarray | None:
        """The union of the named structures' voxels (None: nothing locked)."""
        if names in (None, []):
            return None
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise PromptError(f'{field}: expected a list of structure names, e.g. ["organ"], got {str(names)[:80]}')
        union = np.zeros(self.shape, dtype=bool)
        for name in names:
            union |= self.structure(name, field)
        return union

    def structure(self, name: str, field: str) -> np.ndarray:
        track = self.session.tracks.get(name)
        if track is not None and track.mask is not None and track.mask.any():
            return track.mask
        return self._final_structure(name, field, also="in this session or ")

    def _final_structure(self, name: str, field: str, also: str = "") -> np.ndarray:
        structures = self._final_structures(field)
        if name not in structures:
            raise PromptError(f"{field}: no structure {name!r} {also}in the study's saved final label")
        return structures[name]

    def _final_structures(self, field: str) -> dict:
        if self._final is None:
            from ..datastores.saved_structures import saved_label_structures

            path = None
            if self.datastore is not None and self.image_id:
                try:
                    path = self.datastore.get_label_uri(self.image_id, "final")
                except Exception:  # noqa: BLE001 - MONAI Label raises when there is none
                    path = None
            if not path or not os.path.isfile(path):
                self._final = {}
                return self._final
            info = self.datastore.get_label_info(self.image_id, "final") or {}
            stack, affine, entries = saved_label_structures(path, info, self.labels)
            self._check_grid(stack.shape[:3], affine, field, "the saved final label")
            self._final = {e["name"]: stack[..., n] > 0 for n, e in enumerate(entries)}
        return self._final

    def _uploaded(self, value, field: str) -> np.ndarray:
        if self.upload is None or not os.path.isfile(self.upload):
            raise PromptError(f"{field}: no label file was uploaded with the request (the `label` file of /infer)")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise PromptError(f"{field}.value: expected a label value >= 1, got {value!r}")
        from medsam2_engine.volume_io import ImageReadError, load_image

        try:
            label = load_image(self.upload)
        except ImageReadError as err:  # the message names the server's temporary file: not the caller's
            raise PromptError(f"{field}: the uploaded label file cannot be read as an image "
                              "(send NIfTI or NRRD on the study's grid)") from err
        self._check_grid(label.array.shape, label.affine, field, "the uploaded label")
        array = np.round(label.array)
        return array > 0 if value is None else array == value

    def _check_grid(self, shape, affine, field: str, what: str) -> None:
        if tuple(shape) != self.shape:
            raise PromptError(f"{field}: {what} is {list(shape)} voxels; the image is {list(self.shape)}")
        if not np.allclose(np.asarray(affine)[:3], self.session.volume.affine[:3], atol=1e-3):
            raise PromptError(f"{field}: {what} lies on another grid than the image (its affine differs)")
