"""Reading a MONAI Label infer request into the engine's prompts, one place for all tasks.

Fields (as the Slicer module and OHIF send them):

- ``foreground`` / ``background``: ``[[i, j, k], ...]`` voxel indices, for ``label``;
- ``<label name>``: ``[[i, j, k], ...]`` positive points for that label (DeepEdit style),
  with ``background`` as negatives for every label in the request;
- ``roi``: a box, Slicer's ``[i0, i1, j0, j1, k0, k1]`` in voxel indices, prompted on its
  central slice;
- ``label``, ``client_id``, ``reset_state``, ``window``, ``modality``, ``slice`` (2D task).
"""

from __future__ import annotations

from dataclasses import dataclass

from medsam2_engine.prompts import LabelPrompts, PromptError, parse_box, parse_points

RESERVED = {"foreground", "background", "roi", "label"}


@dataclass
class ParsedRequest:
    prompts: dict  # label -> LabelPrompts
    session_key: tuple
    reset_labels: set
    window: object
    modality: str | None


def session_key_for(request: dict) -> tuple:
    """Sessions are per (client, image); OHIF sends no client id, so its users share one."""
    return (str(request.get("client_id") or request.get("user") or "anonymous"), str(request.get("image")))


def truthy(value) -> bool:
    """A request flag: JSON true or the strings clients send for it."""
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def positive_int(value, field_name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{field_name}: expected a whole number, got {value!r}") from err
    if number < 1:
        raise ValueError(f"{field_name}: must be at least 1, got {number}")
    return number


def parse_request(request: dict, shape, labels: list) -> ParsedRequest:
    """Prompts per label, checked against the image ``shape`` (voxel order) and known labels."""
    if request.get("label") in (None, "") and not any(name in request for name in labels):
        label = labels[0]
    else:
        label = request.get("label")
    if label is not None and label != "" and label not in labels:
        raise PromptError(f"label: unknown label {label!r}; this app's labels are {labels} (set with --conf labels)")

    background = parse_points(request.get("background"), shape, "background", positive=False)
    prompts: dict = {}
    if request.get("foreground") or request.get("roi") or (label and not any(n in request for n in labels)):
        target = prompts.setdefault(label, LabelPrompts())
        target.clicks += parse_points(request.get("foreground"), shape, "foreground", positive=True)
        if request.get("roi"):
            target.boxes.append(parse_box(request["roi"], shape, "roi"))
    for name in labels:
        if name in request and request[name]:
            target = prompts.setdefault(name, LabelPrompts())
            target.clicks += parse_points(request[name], shape, name, positive=True)
    for target in prompts.values():
        target.clicks += background
    prompts = {name: p for name, p in prompts.items() if not p.is_empty()}
    if not prompts:
        raise PromptError(
            "no prompt: send foreground points [[i, j, k], ...] (with label), a roi [i0, i1, j0, j1, k0, k1], "
            "or per-label point lists"
        )
    for name, target in prompts.items():
        if not any(c.positive for c in target.clicks) and not target.boxes:
            raise PromptError(f"label {name!r}: only background points; add a foreground point or a roi")

    reset = set(prompts) if truthy(request.get("reset_state", False)) else set()
    window = request.get("window")
    if isinstance(window, str) and window.strip().lower() in ("", "auto"):
        window = None
    modality = request.get("modality")
    if isinstance(modality, str) and modality.strip().lower() in ("", "auto"):
        modality = None
    return ParsedRequest(prompts, session_key_for(request), reset, window, modality)
