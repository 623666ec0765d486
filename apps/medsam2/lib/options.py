"""Strict readers for every option the app takes: ``--conf`` strings, request fields, train
and scoring parameters. Each one either returns the typed value or raises ``OptionError``
naming the field; there is no lenient fallback (``"ture"`` is an error, not false).

Request values come from JSON, so they arrive typed: a coordinate must be a JSON number
(never a boolean or a numeric string). Scalar options (flags, counts) also accept the
text forms a client's settings table or ``--conf`` produces (``"true"``, ``"3"``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

MAX_POINTS = 500  # clicks per request, all labels together (Slicer resends every click)
MAX_COORDINATE = 1_000_000  # far beyond any image axis; keeps huge integers out of float()
MAX_TEXT = 256
MAX_VOXELS = 2048 * 2048 * 2048 // 8  # 1 G voxels: larger images are refused before any model work

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_INTEGER_TEXT = re.compile(r"^[+-]?\d{1,12}$")
_NUMBER_TEXT = re.compile(r"^[+-]?(\d{1,12}(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")
# datastore ids: file stems and DICOM UIDs; no separators, no "..", nothing hidden
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

_LABEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
# request fields a label name must not shadow (per-label points are sent under the label's name)
REQUEST_FIELDS = ("image", "model", "label", "foreground", "background", "roi", "client_id", "reset_state", "window",
                  "modality", "slice", "session", "description", "device", "save_label", "label_tag", "output")

RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".png")
RESULT_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")


class OptionError(ValueError):
    """An option or request field has the wrong type or value; the message names the field."""

    def __init__(self, field: str, message: str, status: int = 400):
        self.field = field
        self.status = status
        super().__init__(f"{field}: {message}")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def flag(value, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise OptionError(field, f"expected true or false, got {_show(value)}")


def integer(value, field: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool):
        raise OptionError(field, f"expected a whole number, got {_show(value)}")
    if isinstance(value, str) and _INTEGER_TEXT.match(value.strip()):
        value = int(value.strip())
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e12:
        value = int(value)
    if not isinstance(value, int):
        raise OptionError(field, f"expected a whole number, got {_show(value)}")
    _check_range(value, field, low, high)
    return value


def number(value, field: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, str) and _NUMBER_TEXT.match(value.strip()):
        value = float(value.strip())
    return _json_number(value, field, low, high)


def _json_number(value, field: str, low=None, high=None) -> float:
    """A JSON number only: no booleans, no text, finite, and small enough for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(field, f"expected a number, got {_show(value)}")
    if isinstance(value, int) and abs(value) > MAX_COORDINATE:
        raise OptionError(field, f"{len(str(abs(value)))}-digit number is out of range")
    value = float(value)
    if not math.isfinite(value):
        raise OptionError(field, f"expected a finite number, got {_show(value)}")
    _check_range(value, field, low, high)
    return value


def _check_range(value, field, low, high):
    if low is not None and value < low:
        raise OptionError(field, f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise OptionError(field, f"must be at most {high}, got {value}")


def choice(value, field: str, choices) -> str:
    """One of ``choices`` (case-insensitive); returns the spelling in ``choices``."""
    if isinstance(value, str):
        for option in choices:
            if value.strip().lower() == option.lower():
                return option
    raise OptionError(field, f"must be one of {', '.join(choices)}, got {_show(value)}")


def text(value, field: str, max_length: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OptionError(field, f"expected a non-empty text, got {_show(value)}")
    if len(value) > max_length:
        raise OptionError(field, f"longer than {max_length} characters")
    return value


def identifier(value, field: str) -> str:
    """A datastore id (image, label, tag): letters, digits, ``._-``; never a path."""
    if not isinstance(value, str) or not value:
        raise OptionError(field, f"expected an id, got {_show(value)}")
    if not _ID.match(value) or ".." in value:
        raise OptionError(field, f"{_show(value)} is not a valid id (letters, digits, '.', '_', '-'; no paths)")
    return value


def label_name(value, field: str) -> str:
    """A structure name clients show and send points under: plain text, never a request field."""
    if not isinstance(value, str) or not _LABEL_NAME.match(value):
        raise OptionError(field, f"{_show(value)} is not a valid label name (letters, digits, space, '_', '.', '-')")
    if value.lower() in REQUEST_FIELDS or value.startswith("result_") or value.startswith("_"):
        raise OptionError(field, f"{value!r} is a request field name; choose another label name")
    return value


def json_object(value, field: str) -> dict:
    """A JSON object given as text (a form field) or already parsed."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as err:
            raise OptionError(field, f"not valid JSON ({err.msg} at position {err.pos})") from err
    if not isinstance(value, dict):
        raise OptionError(field, f"expected a JSON object, got {type(value).__name__}")
    return value


def point_list(value, field: str, max_points: int = MAX_POINTS) -> list:
    """``[[i, j, k], ...]`` (or one bare point) as float lists; bounds against the image come later."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise OptionError(field, f"expected a list of points [[i, j, k], ...], got {_show(value)}")
    if value and not isinstance(value[0], list):
        value = [value]  # one point sent without the outer list
    if len(value) > max_points:
        raise OptionError(field, f"{len(value)} points; at most {max_points} per request", status=413)
    points = []
    for n, point in enumerate(value):
        if not isinstance(point, list) or len(point) not in (2, 3):
            raise OptionError(f"{field}[{n}]", f"expected [i, j, k] (or [i, j] on a 2D image), got {_show(point)}")
        points.append([_json_number(v, f"{field}[{n}]", -MAX_COORDINATE, MAX_COORDINATE) for v in point])
    return points


def box(value, field: str) -> list:
    """Slicer's ``[i0, i1, j0, j1, k0, k1]`` (or nested pairs, or 4 values on a 2D image), all finite numbers."""
    flat = value
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        if not all(len(v) == 2 for v in value):
            raise OptionError(field, f"expected [[i0, i1], [j0, j1], [k0, k1]], got {_show(value)}")
        flat = [x for pair in value for x in pair]
    if not isinstance(flat, list) or len(flat) not in (4, 6):
        raise OptionError(field, f"expected [i0, i1, j0, j1, k0, k1] in voxel indices, got {_show(value)}")
    return [_json_number(v, field, -MAX_COORDINATE, MAX_COORDINATE) for v in flat]


def image_size(shape, field: str = "image") -> None:
    voxels = math.prod(int(s) for s in shape)
    if voxels > MAX_VOXELS:
        raise OptionError(field, f"{list(shape)} has {voxels} voxels; at most {MAX_VOXELS} are served", status=413)


@dataclass(frozen=True)
class ResultFormat:
    extension: str | None  # None: the image's own format
    dtype: str
    compress: bool


def result_format(request: dict) -> ResultFormat:
    extension = request.get("result_extension")
    if extension in (None, ""):
        extension = None
    else:
        extension = choice(extension, "result_extension", RESULT_EXTENSIONS)
    dtype = request.get("result_dtype")
    dtype = "uint8" if dtype in (None, "") else choice(dtype, "result_dtype", RESULT_DTYPES)
    return ResultFormat(extension, dtype, flag(request.get("result_compress", False), "result_compress"))
