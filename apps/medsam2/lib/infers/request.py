"""Reading a MONAI Label infer request into the engine's prompts, one place for all tasks.

Fields (as the Slicer module and OHIF send them):

- ``foreground`` / ``background``: ``[[i, j, k], ...]`` voxel indices, for ``label``;
- ``<label name>``: ``[[i, j, k], ...]`` positive points for that label (DeepEdit style),
  with ``background`` as negatives for every label in the request;
- ``roi``: a box, Slicer's ``[i0, i1, j0, j1, k0, k1]`` in voxel indices, prompted on its
  central slice;
- ``label``, ``client_id``, ``reset_state``, ``window``, ``modality``, ``slice`` (2D task).

Every field is checked with ``lib.options`` (strict types, bounds); a bad one raises
``OptionError``/``PromptError`` naming it, which the task answers with HTTP 400.

Sessions: whose prompts a request continues is decided by ``session_key_for``: the
authenticated user when MONAI Label's auth is on, else the request's ``client_id``, else
the client's network address; together with the datastore's image id (the series UID for
DICOMweb), never a file path. The infer route (``lib/http/inference.py``) puts the user, the address
and the image id into the request under ``_user``, ``_client_address`` and ``_image_id``,
and drops any such field a client sends itself.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from medsam2_engine.drawn_prompts import parse_lassos, parse_slice_masks, parse_strokes
from medsam2_engine.prompts import LabelPrompts, PromptError, parse_box, parse_points

from ..options import MAX_POINTS, OptionError, box, choice, flag, image_size, integer, point_list, text

RESERVED = {"foreground", "background", "roi", "label"}
MODALITIES = ("auto", "CT", "MR", "other")
MAX_COUNT = 10_000  # ceiling of the request's whole-number options (patience, supports, ...)

# the trusted fields the infer route sets; a client's own copies are dropped there
USER_FIELD, ADDRESS_FIELD, IMAGE_ID_FIELD = "_user", "_client_address", "_image_id"
# the label file uploaded with /infer, saved by the app's route (MONAI Label would put its path
# in "label", where the structure's name is)
LABEL_UPLOAD_FIELD = "_label_upload"


def uploaded_label(request: dict) -> str | None:
    """The path of the label file uploaded with the request (None: none was)."""
    path = request.get(LABEL_UPLOAD_FIELD)
    return path if isinstance(path, str) and path else None


@dataclass(frozen=True)
class RequestHead:
    """What a request says before its image is open: read once, checked strictly."""

    session_key: tuple
    window: object
    modality: str | None
    reset: bool  # reset_state: forget the prompted labels' earlier prompts
    label: str | None  # the label foreground points and the roi belong to (None: per-label lists only)


@dataclasses.dataclass
class ParsedPrompts:
    prompts: dict  # label -> LabelPrompts
    reset_labels: set
    warnings: list = dataclasses.field(default_factory=list)  # what of the request was not used, and why


def read_head(request: dict, labels: list) -> RequestHead:
    """The session key, window, modality, reset and label of a request (prompts come after the image)."""
    return RequestHead(session_key_for(request), window_option(request), modality_option(request),
                       request_flag(request, "reset_state", False), _label(request, labels))


def session_key_for(request: dict) -> tuple:
    """(who, image id): the user if authenticated, else client_id, else the client's address."""
    if request.get(USER_FIELD):
        who = f"user:{request[USER_FIELD]}"
    elif request.get("client_id") not in (None, ""):
        who = f"client:{text(request['client_id'], 'client_id')}"
    elif request.get(ADDRESS_FIELD):
        who = f"address:{request[ADDRESS_FIELD]}"
    else:
        who = "anonymous"
    image = request.get(IMAGE_ID_FIELD)
    if not image:
        # called without the route (batch runs, tests): the file's name stands in for the id
        image = _stem(str(request.get("image")))
    return (who, str(image))


def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    for ext in (".nii.gz", ".nii", ".nrrd", ".png", ".jpg"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def request_flag(request: dict, name: str, default: bool) -> bool:
    return flag(request.get(name, default), name)


def positive_int(value, field_name: str) -> int:
    return integer(value, field_name, low=1, high=MAX_COUNT)


def early_stop_option(request: dict, default):
    """``early_stop``, ``early_stop_patience`` and ``exact_stop`` over the app's ``EarlyStop`` setting."""
    return dataclasses.replace(
        default,
        enabled=request_flag(request, "early_stop", default.enabled),
        exact_stop=request_flag(request, "exact_stop", default.exact_stop),
        patience=positive_int(request.get("early_stop_patience", default.patience), "early_stop_patience"),
    )


def modality_option(request: dict):
    """``modality``; None for automatic (absent, empty or "auto")."""
    value = request.get("modality")
    if value in (None, ""):
        return None
    value = choice(value, "modality", MODALITIES)
    return None if value == "auto" else value


def window_option(request: dict):
    """``window``: a preset name or ``[low, high]``; None for automatic (absent, empty or "auto")."""
    window = request.get("window")
    if window is None or (isinstance(window, str) and window.strip().lower() in ("", "auto")):
        return None
    if isinstance(window, str):
        return text(window, "window", 64)
    if isinstance(window, list) and len(window) == 2:
        return box([window[0], window[1], 0, 0], "window")[:2]  # two finite numbers
    raise OptionError("window", f"expected a preset name or [low, high], got {window!r}")


def _label(request: dict, labels: list):
    label = request.get("label")
    if label in (None, ""):
        return None
    if not isinstance(label, str):
        raise OptionError("label", f"expected a label name, got {label!r}")
    if label not in labels:
        raise OptionError("label", f"unknown label {label!r}; this app's labels are {labels} (set with --conf labels)")
    return label


def _looks_like_points(value) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(p, (list, tuple)) and len(p) == 3
                    and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p) for p in value))


def unused_point_lists(request: dict, labels: list) -> list:
    """Fields holding ``[[i, j, k], ...]`` under a name that is neither a field nor a label of this app
    (a segment the client has and the app has not): their points are not used, and the result says so."""
    return sorted(name for name, value in request.items()
                  if name not in RESERVED and name not in labels and not str(name).startswith("_")
                  and _looks_like_points(value))


def parse_prompts(request: dict, head: RequestHead, shape, labels: list, sources=None) -> ParsedPrompts:
    """Prompts per label, checked against the open image's ``shape`` (voxel order) and known labels.

    ``sources`` (a :class:`.mask_sources.MaskSources`) resolves ``mask_prompt`` and ``locked``
    for the request's label; without it they are refused."""
    image_size(shape)
    per_label = [name for name in labels if name in request and request[name] not in (None, [])]
    label = head.label
    if label is None and not per_label:
        label = labels[0]

    total = 0
    point_fields = {}
    for name in ["foreground", "background", *per_label]:
        point_fields[name] = point_list(request.get(name), name)
        total += len(point_fields[name])
    if total > MAX_POINTS:
        raise OptionError("foreground", f"{total} points in all; at most {MAX_POINTS} per request", status=413)
    roi = request.get("roi")
    roi = None if roi in (None, []) else box(roi, "roi")

    background = parse_points(point_fields["background"], shape, "background", positive=False)
    stroke_clicks = parse_strokes(request.get("strokes"), shape)
    lassos = parse_lassos(request.get("lasso"), shape)
    if request.get("slice_masks") not in (None, []):
        if len(shape) != 3:
            raise PromptError("slice_masks: painted slices go to the 3D model; a 2D image takes points, a box, strokes")
        lassos += parse_slice_masks(request["slice_masks"], shape)
    if len(stroke_clicks) > MAX_POINTS:
        raise OptionError("strokes", f"{len(stroke_clicks)} points along the strokes; at most {MAX_POINTS}", status=413)
    background += [c for c in stroke_clicks if not c.positive]
    for name in ("mask_prompt", "locked"):
        if request.get(name) not in (None, []) and sources is None:
            raise PromptError(f"{name}: this model does not take it (the 3D model does)")
    if request.get("mask_prompt") not in (None, []):
        lassos += sources.mask_prompt(request["mask_prompt"])
    prompts: dict = {}
    if point_fields["foreground"] or roi is not None or stroke_clicks or lassos or (label and not per_label):
        target = prompts.setdefault(label, LabelPrompts())
        target.clicks += parse_points(point_fields["foreground"], shape, "foreground", positive=True)
        target.clicks += [c for c in stroke_clicks if c.positive]
        target.masks += lassos
        if roi is not None:
            target.boxes.append(parse_box(roi, shape, "roi"))
    for name in per_label:
        target = prompts.setdefault(name, LabelPrompts())
        target.clicks += parse_points(point_fields[name], shape, name, positive=True)
    for target in prompts.values():
        target.clicks += background
    prompts = {name: p for name, p in prompts.items() if not p.is_empty()}
    if not prompts:
        raise PromptError(
            "no prompt: send foreground points [[i, j, k], ...] (with label), a roi [i0, i1, j0, j1, k0, k1], "
            "strokes, a lasso, slice_masks, a mask_prompt, or per-label point lists"
        )
    for name, target in prompts.items():
        if not any(c.positive for c in target.clicks) and not target.boxes and not target.masks:
            raise PromptError(f"label {name!r}: only background points; add a foreground point or a roi")
    if sources is not None and request.get("locked") not in (None, []):
        locked = request["locked"]
        if isinstance(locked, list) and any(name in locked for name in prompts):
            raise PromptError(f"locked: {sorted(n for n in prompts if n in locked)} is being segmented; unlock it first")
        exclude = sources.locked(locked)
        for target in prompts.values():
            target.exclude = exclude

    reset = set(prompts) if head.reset else set()
    warnings = [f"{name}: points for a label this app does not have (its labels: {', '.join(labels)}); not used"
                for name in unused_point_lists(request, labels)]
    return ParsedPrompts(prompts, reset, warnings)
