"""The app's versions of MONAI Label's task, session and pass-through routes (see route_inventory.py).

Each checks its names against what the app has (an unknown name is a 404 that starts
nothing), runs off the event loop (plain ``def``: FastAPI runs it in its thread pool), and
never answers the server's own paths.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from typing import List, Optional

import requests
from fastapi import Depends, File, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, Response
from monailabel.config import settings
from monailabel.endpoints import activelearning as activelearning_routes
from monailabel.endpoints import batch_infer as batch_routes
from monailabel.endpoints import scoring as scoring_routes
from monailabel.endpoints import train as train_routes
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.interfaces.utils.app import app_instance, clear_cache
from monailabel.utils.async_tasks.task import AsyncTask

from .options import OptionError, identifier

logger = logging.getLogger(__name__)

USER, ANNOTATOR, ADMIN = (settings.MONAI_LABEL_AUTH_ROLE_USER, settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
                          settings.MONAI_LABEL_AUTH_ROLE_ADMIN)
_START = threading.Lock()  # a task is checked and started under one lock: two requests never both start one


def _known(kind: str, name: str, names) -> str:
    if name not in names:
        raise HTTPException(status_code=404, detail=f"{kind}: no {kind} {name!r}; this app has {sorted(names)}")
    return name


def _start(task: str, call):
    with _START:
        running, _ = AsyncTask.status(task, check_if_running=True)
        if running:
            raise HTTPException(status_code=409, detail=f"{task}: one is already running; wait for it or stop it "
                                                        f"(DELETE /{task}/)")
        return call()


def train_model(model: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
                enqueue: Optional[bool] = False, user: User = Depends(RBAC(ADMIN))):
    _known("trainer", model, app_instance().info().get("trainers", {}))
    refusal = app_instance().settings.replica.training_refusal()
    if refusal:  # one trainer per model folder (docs/deployment.md)
        raise HTTPException(status_code=409, detail=refusal)
    if not app_instance().datastore().get_labeled_images():
        raise HTTPException(status_code=409, detail="train: no final labels yet; save at least one study's label "
                                                    "first")
    # never queued behind a running fine-tune: one at a time, and the caller is told
    return _start("train", lambda: train_routes.run_model(model, params, run_sync, enqueue=False))


def score(method: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
          user: User = Depends(RBAC(ANNOTATOR))):
    _known("scoring method", method, app_instance().info().get("scoring", {}))
    return _start("scoring", lambda: scoring_routes.run_method(method, params, run_sync))


def batch_infer(model: str, images: BatchInferImageType = BatchInferImageType.IMAGES_ALL,
                params: Optional[dict] = None, run_sync: Optional[bool] = False, user: User = Depends(RBAC(ADMIN))):
    _known("model", model, app_instance().info().get("models", {}))
    return _start("batch_infer", lambda: batch_routes.run(model, images, params, run_sync))


def next_sample(strategy: str, params: Optional[dict] = None, user: User = Depends(RBAC(USER))):
    _known("strategy", strategy, app_instance().info().get("strategies", {}))
    result = activelearning_routes.sample(strategy, params, user.username)
    return {k: v for k, v in (result or {}).items() if k != "path"}  # the id, never the server's path


def reload(http: Request, user: User = Depends(RBAC(ADMIN))):
    """Drop the app and load it again (every session goes): the admin role, or this machine when
    authentication is off."""
    from .routes import _is_loopback

    if not settings.MONAI_LABEL_AUTH_ENABLE and not _is_loopback(http):
        raise HTTPException(status_code=403, detail="reload: only from this machine unless authentication is on "
                                                    "(then by the admin role)")
    clear_cache()
    app_instance()
    return {}


# --- sessions (3D Slicer uploads a volume the datastore does not hold) ----------------------
def _sessions():
    sessions = app_instance().sessions()
    if sessions is None:
        raise HTTPException(status_code=406, detail="sessions are not enabled on this server")
    return sessions


def _session_image(session_id: str):
    try:
        identifier(session_id, "session_id")
    except OptionError as err:
        raise HTTPException(status_code=err.status, detail=str(err)) from err
    info = _sessions().get_session(session_id)
    if not info:
        raise HTTPException(status_code=404, detail=f"session_id: no session {session_id!r}")
    store = os.path.realpath(_sessions().store_path)
    image = os.path.realpath(info.image)
    if not image.startswith(store + os.sep):
        raise HTTPException(status_code=403, detail="session_id: its image lies outside the session store; refused")
    return info, image


def get_session(session_id: str, update_ts: bool = False, image: bool = False, user: User = Depends(RBAC(USER))):
    info, path = _session_image(session_id)
    if image:
        if not os.path.isfile(path):
            raise HTTPException(status_code=404, detail="session_id: the session holds a folder, not one image")
        return FileResponse(path, filename=os.path.basename(path))
    return {k: v for k, v in info.to_json().items() if k not in ("path", "image")}


def create_session(uncompress: bool = False, expiry: int = 0, files: List[UploadFile] = File(...),
                   user: User = Depends(RBAC(USER))):
    if uncompress:
        raise HTTPException(status_code=400, detail="uncompress: archives are not unpacked on this server; send "
                                                    "the image file (or the DICOM files) themselves")
    if not 0 <= expiry <= 7 * 24 * 3600:
        raise HTTPException(status_code=400, detail="expiry: seconds from 0 to 604800")
    received = tempfile.mkdtemp(prefix="medsam2-session-")
    try:
        for n, upload in enumerate(files):
            name = os.path.basename(upload.filename or "") or f"file{n}"
            identifier(name.split(".")[0] or f"file{n}", "files")
            with open(os.path.join(received, name), "wb") as out:
                shutil.copyfileobj(upload.file, out)
        source = received if len(files) > 1 else os.path.join(received, os.listdir(received)[0])
        from medsam2_engine.volume_io import ImageReadError, load_image

        try:
            load_image(source)
        except ImageReadError as err:
            raise OptionError("files", f"not a readable image: {err}", status=422) from err
        session_id, info = _sessions().add_session(source, expiry, False)
    except OptionError as err:
        raise HTTPException(status_code=err.status, detail=str(err)) from err
    finally:
        shutil.rmtree(received, ignore_errors=True)
    return {"session_id": session_id, "session_info": {k: v for k, v in info.to_json().items()
                                                       if k not in ("path", "image")}}


def remove_session(session_id: str, user: User = Depends(RBAC(USER))):
    info, _ = _session_image(session_id)
    _sessions().remove_session(session_id)
    return {k: v for k, v in info.to_json().items() if k not in ("path", "image")}


# --- OHIF's files and its DICOMweb proxy ---------------------------------------------------
def ohif_file(path: str, user: User = Depends(RBAC(USER))):
    import monailabel.endpoints.ohif as ohif

    root = os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(ohif.__file__)), "static", "ohif"))
    wanted = os.path.realpath(os.path.join(root, path)) if path else ""
    file = wanted if wanted.startswith(root + os.sep) and os.path.isfile(wanted) else os.path.join(root, "index.html")
    if not os.path.isfile(file):
        raise HTTPException(status_code=404, detail="OHIF is not installed with this MONAI Label")
    return FileResponse(file)


def dicom_proxy(path: str, http: Request, user: User = Depends(RBAC(USER))):
    """GET passed to the PACS (QIDO and WADO for OHIF); nothing is written to the PACS this way."""
    studies = settings.MONAI_LABEL_STUDIES or ""
    if not studies.startswith(("http://", "https://")):
        raise HTTPException(status_code=404, detail="proxy: this server's datastore is a folder, not a PACS")
    if ".." in path.split("/"):
        raise HTTPException(status_code=400, detail="path: no '..' segments")
    for prefix in ("wado/", "qido/"):
        path = path[len(prefix):] if path.startswith(prefix) else path
    auth = ((settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
            if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD else None)
    accept = http.headers.get("accept")
    try:
        answer = requests.get(f"{studies.rstrip('/')}/{path}", params=dict(http.query_params), auth=auth,
                              headers={"Accept": accept} if accept else {}, timeout=120)
    except requests.RequestException as err:
        raise HTTPException(status_code=502, detail=f"proxy: the PACS did not answer ({type(err).__name__})") from err
    kept = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type",)}
    return Response(content=answer.content, status_code=answer.status_code, headers=kept)
