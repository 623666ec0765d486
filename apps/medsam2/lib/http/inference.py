"""Inference: ``POST /infer/{model}``, run off the event loop (MONAI Label's own is ``async`` and holds
it for the whole inference), with the checks the original lacks: the model must exist, ``params``
is a JSON object, the image is a datastore id (never a server path), fields only the server sets
are refused; the user, the client's address and the image id go into the request for per-user
sessions (``lib/infers/request.py``). The whole-slide routes are refused (no such model here).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, Request, UploadFile
from monailabel.datastore.local import LocalDatastore
from monailabel.endpoints import infer as infer_routes
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from ..infers.request import ADDRESS_FIELD, IMAGE_ID_FIELD, LABEL_UPLOAD_FIELD, USER_FIELD
from ..options import OptionError, json_object
from .access import USER, user_name
from .errors import as_http
from .studies import known_image

# request fields only the server sets: a client cannot pick the image file or another user's session
SERVER_FIELDS = {"image", "model", "session", "description", USER_FIELD, ADDRESS_FIELD, IMAGE_ID_FIELD,
                 LABEL_UPLOAD_FIELD}
LABEL_UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".bin")


def infer(
    background_tasks: BackgroundTasks,
    http: Request,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: Optional[infer_routes.ResultType] = None,
    user: User = Depends(RBAC(USER)),
):
    instance = app_instance()
    uri, checked = as_http(lambda: checked_request(instance, model, image, params, http, user, output,
                                                    bool(file or session_id)))
    if label is not None:  # kept in the app's own field: MONAI Label would write its path over "label"
        checked = as_http(lambda: with_label_upload(checked, label, uri, background_tasks))
    return as_http(lambda: infer_routes.run_inference(background_tasks, model, uri, session_id, checked,
                                                       file, None, output), background_tasks)


def with_label_upload(checked: str, label: UploadFile, image_uri: str, background_tasks: BackgroundTasks) -> str:
    """The request JSON with the uploaded label file saved and named in LABEL_UPLOAD_FIELD (deleted
    after the answer). OHIF's binary scribbles (.bin) become an image on the study's grid, as in
    MONAI Label."""
    name = (label.filename or "label.nii.gz").lower()
    suffix = next((s for s in LABEL_UPLOAD_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise OptionError("label", f"the label file must be one of {', '.join(LABEL_UPLOAD_SUFFIXES)}; got {name!r}")
    handle, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(handle, "wb") as out:
        shutil.copyfileobj(label.file, out)
    background_tasks.add_task(_remove, path)
    if suffix == ".bin":
        from monailabel.datastore.utils.convert import binary_to_image

        path = binary_to_image(image_uri, path)
        background_tasks.add_task(_remove, path)
    request = json.loads(checked)
    request[LABEL_UPLOAD_FIELD] = path
    return json.dumps(request)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def checked_request(instance, model: str, image: str, params: str, http: Request, user: User,
                    output=None, has_upload: bool = False) -> tuple:
    """(image uri, request JSON) of an infer request, checked as ``/infer`` checks it (404 for an
    unknown model or image, fields only the server sets refused, the image a datastore id)."""
    if model not in instance.info().get("models", {}):
        raise OptionError("model", f"no model {model!r}; see /info for this app's models", status=404)
    request = json_object(params, "params")
    if request.get("save_label") or "label_tag" in request:
        raise OptionError("params.save_label", "inference never writes a label: save one with PUT "
                                               "/datastore/label (annotator role)")
    bad = sorted(k for k in request if k in SERVER_FIELDS or (isinstance(k, str) and k.startswith("_")))
    if bad:
        raise OptionError(f"params.{bad[0]}", "is set by the server; give the image as the image= query "
                                             "parameter (a datastore id)")
    datastore = instance.datastore()
    if output == infer_routes.ResultType.dicom_seg and isinstance(datastore, LocalDatastore):
        raise OptionError("output", "dicom_seg needs a DICOMweb datastore; use output=image or all")
    uri = image
    if image or not has_upload:
        known_image(image, datastore)
        # MONAI Label reads an id that names a file of the server's working folder (README.md) as
        # that file: it is handed the datastore's own file instead
        uri = datastore.get_image_uri(image)
        request[IMAGE_ID_FIELD] = image
    request[USER_FIELD] = user_name(user)
    request[ADDRESS_FIELD] = http.client.host if http.client else None
    return uri, json.dumps(request)


def no_whole_slide(model: str, user: User = Depends(RBAC(USER))):
    # MONAI Label's WSI routes hand any existing file path to the task; this app has no WSI model
    raise HTTPException(status_code=404, detail=f"model: this app has no whole-slide models; use "
                                                f"POST /infer/{model}?image=<id>")
