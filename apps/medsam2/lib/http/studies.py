"""Studies and images: MONAI Label's datastore image routes, the app's versions (ids checked, files
never from outside the studies folder, uploads decoded whole within limits by the datastore, no
answer with a server path); and the one rule for "is this a study of the datastore".

``GET /datastore/image``: a study a client downloads is about to be segmented (3D Slicer's module
fetches it before the first click), so its slices are queued for encoding ahead.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from monailabel.endpoints import datastore as datastore_routes
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from ..options import OptionError, identifier, json_object
from .access import ADMIN, ANNOTATOR, USER
from .errors import as_http

logger = logging.getLogger(__name__)
OUTPUTS = ("stats", "all", "train")


def known_image(image: str, datastore=None, field: str = "image") -> str:
    """``image`` if it names a study of the datastore, else a 404 naming it: a folder's study resolves
    to its file inside the studies folder (a link out is refused); a PACS's is a series UID, fetched
    when first used (a series the PACS lacks is a 404 then)."""
    datastore = datastore if datastore is not None else app_instance().datastore()
    identifier(image, field)
    if hasattr(datastore, "check_image_id"):
        datastore.check_image_id(image)
    elif not datastore.get_image_uri(image):
        raise OptionError(field, f"no study {image!r} in this datastore", status=404)
    return image


def listing(output: Optional[str] = None, user: User = Depends(RBAC(USER))):
    """MONAI Label's ``GET /datastore/``; ``output=train`` names files relative to the studies folder."""
    output = output or "stats"
    if output not in OUTPUTS:
        raise HTTPException(status_code=400, detail=f"output: one of {', '.join(OUTPUTS)}")
    datastore = app_instance().datastore()
    if output == "all":
        return datastore.json()
    if output == "stats":
        return datastore.status()
    root = os.path.realpath(datastore._datastore_path)
    return [{key: os.path.relpath(path, root) for key, path in entry.items()} for entry in datastore.datalist()]


def add_image(
    background_tasks: BackgroundTasks,
    image: Optional[str] = None,
    params: str = Form("{}"),
    file: UploadFile = File(...),
    user: User = Depends(RBAC(ANNOTATOR)),
):
    checked = as_http(lambda: json.dumps(json_object(params, "params")))
    return as_http(lambda: datastore_routes.add_image(background_tasks, image, checked, file, user.username),
                    background_tasks)


def remove_image(id: str, user: User = Depends(RBAC(ADMIN))):
    return as_http(lambda: datastore_routes.remove_image(known_image(id, field="id"), user.username))


def download_image(
    image: str,
    check_only: bool = False,
    check_sum: Optional[str] = None,
    user: User = Depends(RBAC(USER)),
):
    identifier_checked = as_http(lambda: identifier(image, "image"))
    response = as_http(lambda: datastore_routes.download_image(identifier_checked, check_only, check_sum))
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


def image_info(image: str, user: User = Depends(RBAC(USER))):
    return as_http(lambda: app_instance().datastore().get_image_info(known_image(image)))


def update_image_info(image: str, info: str = Form("{}"),
                      user: User = Depends(RBAC(ANNOTATOR))):
    def run():
        checked = json.dumps(json_object(info, "info"))
        return datastore_routes.update_image_info(identifier(image, "image"), checked, user.username)

    return as_http(run)
