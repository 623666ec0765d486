"""Finding and loading support studies (labelled studies) in a MONAI Label datastore."""

from __future__ import annotations

import logging
import os

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from medsam2_engine.one_prompt import OnePromptError, Support
from medsam2_engine.volume_io import ImageReadError, load_image

from ..options import integer

logger = logging.getLogger(__name__)


def image_id_for(datastore: Datastore, uri: str) -> str | None:
    """The datastore id of the image at ``uri`` (MONAI Label hands tasks the path, not the id)."""
    wanted = os.path.realpath(uri)
    for image_id in datastore.list_images():
        try:
            if os.path.realpath(datastore.get_image_uri(image_id)) == wanted:
                return image_id
        except Exception:  # a remote datastore may fail on one entry; skip it
            continue
    return None


def has_label(datastore: Datastore, image_id: str, tag: str) -> bool:
    return bool(image_id) and tag in (datastore.get_labels_by_image_id(image_id) or {})


def candidate_ids(datastore: Datastore, target_id: str | None, requested, tag: str, limit: int) -> list:
    """Support study ids: those ``requested`` (an id or a list), else every study labelled with ``tag``."""
    if requested not in (None, "", []):
        ids = [requested] if isinstance(requested, str) else list(requested)
        ids = [i.strip() for part in ids for i in str(part).split(",") if i.strip()]
        missing = [i for i in ids if not has_label(datastore, i, tag)]
        if missing:
            raise OnePromptError(f"support: no {tag!r} label for {missing} in the datastore")
        ids = [i for i in ids if i != target_id]
    else:
        ids = sorted(i for i in datastore.list_images() if i != target_id and has_label(datastore, i, tag))
    if not ids:
        raise OnePromptError(
            f"no support study: no other study has a {tag!r} label; label one study (save it as final) first"
        )
    if len(ids) > limit:
        logger.info("%d support candidates; considering the first %d (max_candidates)", len(ids), limit)
    return ids[:limit]


def _named_values(info: dict) -> dict:
    """label name -> value, from the label's info as MONAI Label clients store it."""
    names = dict(info.get("label_names") or {})
    for entry in info.get("label_info") or []:
        if isinstance(entry, dict) and "name" in entry and "idx" in entry:
            names[entry["name"]] = entry["idx"]
    return {str(k): int(v) for k, v in names.items()}


def structure_value(array: np.ndarray, info: dict, label_name: str | None, label_value, app_labels=()) -> int:
    """Which value of a support label map is the structure asked for: ``label_value`` when given, else
    the value the label's info names ``label_name``, else the value of ``label_name``'s place in the
    app's labels (as the page names a saved label's values: ``saved_label_structures``), else the
    one value of a binary map."""
    if label_value not in (None, ""):
        return integer(label_value, "label_value", low=1)
    named = _named_values(info)
    if label_name in named:
        return named[label_name]
    values = sorted(int(v) for v in np.unique(array) if v != 0)
    app_labels = list(app_labels)
    if label_name in app_labels and app_labels.index(label_name) + 1 in values and len(values) > 1:
        return app_labels.index(label_name) + 1
    if len(values) <= 1:
        return values[0] if values else 1
    raise ValueError(
        f"the label map has values {values} and does not name {label_name!r}; say which one with label_value"
    )


def load_supports(datastore: Datastore, ids: list, tag: str, label_name: str | None, label_value,
                  app_labels=()) -> tuple:
    """(supports, name -> why not loaded). Each support's mask is its label map == the structure's value."""
    supports, rejected = [], {}
    for image_id in ids:
        try:
            volume = load_image(datastore.get_image_uri(image_id))
            label = load_image(datastore.get_label_uri(image_id, tag))
            info = datastore.get_label_info(image_id, tag) or {}
            value = structure_value(label.array, info, label_name, label_value, app_labels)
        except (ImageReadError, ValueError) as err:
            rejected[image_id] = str(err)
            continue
        mask = label.array == value
        if label.array.ndim == 3 and label.array.shape[:2] == volume.array.shape[:2] and volume.is_rgb:
            mask = mask[..., 0]
        supports.append(Support(image_id, volume, mask))
    return supports, rejected


DEFAULT_SUPPORT_TAG = DefaultLabelTag.FINAL.value
