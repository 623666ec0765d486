"""The app's versions of MONAI Label 0.8.5 routes that are unsafe for a shared server.

MONAI Label declares ``POST /infer/{model}`` and the datastore uploads ``async def`` but
does the work inline, so one inference holds the event loop and every other request
(``/info`` too) waits for it. Here the same paths are registered again as plain ``def``
endpoints, which FastAPI runs in its worker threads, with the checks the originals lack:

- ``/infer``: the model must exist (404), ``params`` must be a JSON object, the image must
  be a datastore id (never a path on the server); the authenticated user, the client's
  address and the image id go into the request for per-user sessions (``infers.request``).
- ``PUT /datastore/image`` and ``/datastore/label``, the deletes and the info updates: ids,
  tags, JSON and files are checked (here and by ``lib.datastore_local``); refusals become 4xx
  naming the field.
- ``GET /datastore/image``: as MONAI Label's (off the event loop: a DICOMweb series is
  fetched there), and a study a client downloads is about to be segmented (3D Slicer's
  module fetches it before the first click), so its slices are queued for encoding ahead
  (``encode_ahead``) into the image's shared feature cache, which any session finds.
- ``/logs``: with authentication off, only a client on this machine may read the log
  (it holds every request's parameters); with it on, MONAI Label's admin role applies.
- Request bodies above the upload cap are refused with 413 while they arrive.

Only the installed package's own route functions are reused; the package is not edited.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import tempfile
import threading
from typing import Callable, Optional

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, Request, UploadFile
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.endpoints import datastore as datastore_routes
from monailabel.endpoints import infer as infer_routes
from monailabel.endpoints import logs as logs_routes
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.utils.app import app_instance

from .infers.request import ADDRESS_FIELD, IMAGE_ID_FIELD, LABEL_UPLOAD_FIELD, USER_FIELD
from .one_prompt_runs import run_owner
from .options import OptionError, identifier, json_object

logger = logging.getLogger(__name__)

API = settings.MONAI_LABEL_API_STR
# request fields only the server sets: a client cannot pick the image file or another user's session
SERVER_FIELDS = {"image", "model", "session", "description", USER_FIELD, ADDRESS_FIELD, IMAGE_ID_FIELD,
                 LABEL_UPLOAD_FIELD}
LABEL_UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".bin")


_SAVE_LOCKS: dict = {}


def _as_http(call: Callable, background_tasks: Optional[BackgroundTasks] = None):
    """``call()`` with the app's errors as HTTP answers. On any error the request's clean-up tasks
    (MONAI Label's temporary copies of uploads) run now: FastAPI runs them only after a success."""
    try:
        return call()
    except OptionError as err:
        _clean_up(background_tasks)
        raise HTTPException(status_code=err.status, detail=str(err)) from err
    except (ImageNotFoundException, LabelNotFoundException) as err:
        _clean_up(background_tasks)
        raise HTTPException(status_code=404, detail=err.msg) from err
    except MONAILabelException as err:
        _clean_up(background_tasks)
        raise HTTPException(status_code=400, detail=err.msg) from err
    except BaseException:
        _clean_up(background_tasks)
        raise


def _clean_up(background_tasks: Optional[BackgroundTasks]) -> None:
    if background_tasks is None:
        return
    for task in list(background_tasks.tasks):
        try:
            task.func(*task.args, **task.kwargs)
        except Exception as err:  # noqa: BLE001 - removing a temporary file
            logger.warning("clean-up after a refused request failed: %s", err)
    background_tasks.tasks.clear()


def _user_name(user: User) -> Optional[str]:
    return user.username if settings.MONAI_LABEL_AUTH_ENABLE else None


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
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    instance = app_instance()
    uri, checked = _as_http(lambda: checked_request(instance, model, image, params, http, user, output,
                                                    bool(file or session_id)))
    if label is not None:  # kept in the app's own field: MONAI Label would write its path over "label"
        checked = _as_http(lambda: with_label_upload(checked, label, uri, background_tasks))
    return _as_http(lambda: infer_routes.run_inference(background_tasks, model, uri, session_id, checked,
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
        identifier(image, "image")
        if isinstance(datastore, LocalDatastore) and not hasattr(datastore, "check_image_id"):
            if not datastore.get_image_uri(image):  # one lookup (links out refused), not a listing
                raise OptionError("image", f"image not found: {image}", status=404)
        else:
            datastore.check_image_id(image)  # a PACS: a series UID (the list is cached; it may be new)
        # MONAI Label reads an id that names a file of the server's working folder (README.md) as
        # that file: it is handed the datastore's own file instead
        uri = datastore.get_image_uri(image)
        request[IMAGE_ID_FIELD] = image
    request[USER_FIELD] = _user_name(user)
    request[ADDRESS_FIELD] = http.client.host if http.client else None
    return uri, json.dumps(request)


def add_image(
    background_tasks: BackgroundTasks,
    image: Optional[str] = None,
    params: str = Form("{}"),
    file: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    checked = _as_http(lambda: json.dumps(json_object(params, "params")))
    return _as_http(lambda: datastore_routes.add_image(background_tasks, image, checked, file, user.username),
                    background_tasks)


def save_label(
    background_tasks: BackgroundTasks,
    image: str,
    params: str = Form("{}"),
    tag: str = DefaultLabelTag.FINAL.value,
    label: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    def check() -> str:
        identifier(image, "image")
        identifier(tag or DefaultLabelTag.FINAL.value, "tag")
        return json.dumps(json_object(params, "params"))

    checked = _as_http(check)
    tag = tag or DefaultLabelTag.FINAL.value

    def save() -> dict:
        datastore = app_instance().datastore()
        request = json.loads(checked)
        runs = getattr(app_instance(), "one_prompt_runs", None)  # lib/one_prompt_runs.py: accepting is saving
        if "one_prompt" in request:  # the server's record of an accepted one-prompt result, never a client's
            raise OptionError("params.one_prompt", "set by the server when a one-prompt result is accepted; "
                                                   "send one_prompt_run instead")
        if runs is None and "one_prompt_run" in request:
            raise OptionError("params.one_prompt_run", "this server runs no one-prompt segmentation")
        with _SAVE_LOCKS.setdefault((image, tag), threading.Lock()):  # check and save as one step
            accepting = runs.accepting(request, image, tag, run_owner(_user_name(user))) if runs else None
            current = (datastore.get_label_info(image, tag) or {}).get("version") \
                if datastore.get_label_by_image_id(image, tag) else None
            if "replaces" in request and request["replaces"] != current:
                raise OptionError("params.replaces", f"the {tag} label of {image} changed since you read it "
                                                     f"(version {request['replaces']}, now {current}); nothing "
                                                     "was saved: read the current one, or send its version to "
                                                     "replace it", status=409)
            answer = datastore_routes.save_label(background_tasks, image, json.dumps(request), tag, label,
                                                 user.username)
            if accepting is not None:
                answer["one_prompt"] = runs.record(accepting, datastore, image, list(app_instance().settings.labels))
            info = datastore.get_label_info(image, tag) or {}
        # what was stored, for the client to compare with what it shows (structures, overlaps)
        answer["saved"] = {key: info[key] for key in ("version", "ts", "label_values", "structures", "overlaps", "overlap_rule",
                                                      "seg_segments") if key in info}
        if current is not None:
            answer["replaced"] = {"version": current, "restore": f"GET /medsam2/labels/history?image={image}&tag={tag}"}
        return answer

    return _as_http(save, background_tasks)


def remove_image(id: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    return _as_http(lambda: datastore_routes.remove_image(identifier(id, "id"), user.username))


def remove_label(id: str, tag: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    return _as_http(lambda: datastore_routes.remove_label(identifier(id, "id"), identifier(tag, "tag"),
                                                          user.username))


def update_image_info(image: str, info: str = Form("{}"),
                      user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
    def run():
        checked = json.dumps(json_object(info, "info"))
        return datastore_routes.update_image_info(identifier(image, "image"), checked, user.username)

    return _as_http(run)


def update_label_info(label: str, tag: str, info: str = Form("{}"),
                      user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
    def run():
        checked = json.dumps(json_object(info, "info"))
        return datastore_routes.update_label_info(identifier(label, "label"), identifier(tag, "tag"), checked,
                                                  user.username)

    return _as_http(run)


def download_image(
    image: str,
    check_only: bool = False,
    check_sum: Optional[str] = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    identifier_checked = _as_http(lambda: identifier(image, "image"))
    response = _as_http(lambda: datastore_routes.download_image(identifier_checked, check_only, check_sum))
    encode_image_ahead(app_instance(), image)
    return response


def encode_image_ahead(instance, image: str) -> None:
    """Queue a study that is about to be segmented for encoding, for whichever session opens it."""
    try:
        uri = instance.datastore().get_image_uri(image)
        if uri and os.path.isfile(uri):
            instance.prefetch_study(uri)
    except Exception as err:  # noqa: BLE001 - the download itself succeeded; a click encodes what is missing
        logger.warning("image %s: not queued for encoding ahead: %s", image, err)


def no_whole_slide(model: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    # MONAI Label's WSI routes hand any existing file path to the task; this app has no WSI model
    raise HTTPException(status_code=404, detail=f"model: this app has no whole-slide models; use "
                                                f"POST /infer/{model}?image=<id>")


def logs(
    http: Request,
    lines: Optional[int] = 300,
    html: Optional[bool] = True,
    text: Optional[bool] = False,
    refresh: Optional[int] = 0,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    if not settings.MONAI_LABEL_AUTH_ENABLE and not _is_loopback(http):
        raise HTTPException(status_code=403, detail="logs: readable only from this machine unless "
                                                    "authentication is on (then by the admin role)")
    return logs_routes.get_logs(os.path.join(settings.MONAI_LABEL_APP_DIR, "logs", "app.log"), lines, html, text,
                                refresh)


def _is_loopback(http: Request) -> bool:
    try:
        return bool(http.client) and ipaddress.ip_address(http.client.host).is_loopback
    except ValueError:
        return False


def install(fastapi_app, max_body_bytes: int) -> None:
    """The inventory's routes (lib/route_inventory.py) and a cap on request bodies."""
    from .route_inventory import install as install_inventory

    install_inventory(fastapi_app)
    if fastapi_app.middleware_stack is not None and not isinstance(fastapi_app.middleware_stack, BodyLimit):
        fastapi_app.middleware_stack = BodyLimit(fastapi_app.middleware_stack, max_body_bytes)
    logger.info("request bodies capped at %d bytes", max_body_bytes)


class BodyLimit:
    """ASGI wrapper: 413 for a body over ``limit`` bytes, by its Content-Length or as it streams."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(send, self.limit)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(status_code=413, detail=f"request body over {self.limit} bytes")
            return message

        return await self.app(scope, limited_receive, send)


async def _too_large(send, limit: int):
    body = json.dumps({"detail": f"request body over {limit} bytes (--conf upload_max_mb)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
