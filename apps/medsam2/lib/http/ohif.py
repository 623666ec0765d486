"""OHIF: MONAI Label's OHIF files (only those), and its DICOMweb proxy (GET to the PACS only)."""

from __future__ import annotations

import os

import requests
from fastapi import Depends, HTTPException, Request
from fastapi.responses import FileResponse, Response
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from .access import USER


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
