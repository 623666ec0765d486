"""Sessions: 3D Slicer uploads a volume the datastore does not hold. Ids checked, no archives
unpacked, files taken by their base name, only a readable image kept, images served only from
the session store."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import List

from fastapi import Depends, File, HTTPException, UploadFile
from fastapi.responses import FileResponse
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from ..options import OptionError, identifier
from .access import USER
from .errors import as_http


# --- sessions (3D Slicer uploads a volume the datastore does not hold) ----------------------
def _sessions():
    sessions = app_instance().sessions()
    if sessions is None:
        raise HTTPException(status_code=406, detail="sessions are not enabled on this server")
    return sessions


def _session_image(session_id: str):
    as_http(lambda: identifier(session_id, "session_id"))
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
        return as_http(lambda: _keep_uploaded(files, received, expiry))
    finally:
        shutil.rmtree(received, ignore_errors=True)


def _keep_uploaded(files: List[UploadFile], received: str, expiry: int) -> dict:
    for n, upload in enumerate(files):
        name = os.path.basename(upload.filename or "") or f"file{n}"
        identifier(name.split(".")[0] or f"file{n}", "files")
        with open(os.path.join(received, name), "wb") as out:
            shutil.copyfileobj(upload.file, out)
    source = received if len(files) > 1 else os.path.join(received, os.listdir(received)[0])
    from medsam2_engine.volume_io import ImageReadError, load_image

    try:
        load_image(source)
    except ImageReadError as err:  # said with the client's file names, never the server's folder
        said = str(err).replace(received + os.sep, "").replace(received, "the uploaded files")
        raise OptionError("files", f"not a readable image: {said}", status=422) from err
    session_id, info = _sessions().add_session(source, expiry, False)
    return {"session_id": session_id, "session_info": {k: v for k, v in info.to_json().items()
                                                       if k not in ("path", "image")}}


def remove_session(session_id: str, user: User = Depends(RBAC(USER))):
    info, _ = _session_image(session_id)
    _sessions().remove_session(session_id)
    return {k: v for k, v in info.to_json().items() if k not in ("path", "image")}
