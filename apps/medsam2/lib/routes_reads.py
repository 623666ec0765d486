"""The app's versions of MONAI Label's datastore reads, and a label's history (list and restore).

Ids and tags are checked, an unknown one is a 404, files are served only from inside the
studies folder (the datastore resolves links), and no answer carries the server's paths.
"""

from __future__ import annotations

import os
from typing import Optional

from fastapi import BackgroundTasks, Depends, HTTPException, UploadFile
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from .options import OptionError, identifier

USER, ANNOTATOR = settings.MONAI_LABEL_AUTH_ROLE_USER, settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR
OUTPUTS = ("stats", "all", "train")


def _http(call):
    try:
        return call()
    except OptionError as err:
        raise HTTPException(status_code=err.status, detail=str(err)) from err


def _known_image(image: str) -> str:
    datastore = app_instance().datastore()
    if identifier(image, "image") not in set(datastore.list_images()):
        raise OptionError("image", f"no image {image!r} in this datastore", status=404)
    return image


def _known_label(image: str, tag: str) -> str:
    _known_image(image)
    if not app_instance().datastore().get_label_by_image_id(image, identifier(tag, "tag")):
        raise OptionError("tag", f"image {image} has no {tag!r} label", status=404)
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


def image_info(image: str, user: User = Depends(RBAC(USER))):
    return _http(lambda: app_instance().datastore().get_image_info(_known_image(image)))


def label_info(label: str, tag: str, user: User = Depends(RBAC(USER))):
    return _http(lambda: app_instance().datastore().get_label_info(_known_label(label, tag), tag))


def download_label(label: str, tag: str, user: User = Depends(RBAC(USER))):
    def run():
        path = app_instance().datastore().get_label_uri(_known_label(label, tag), tag)
        if not path or not os.path.isfile(path):
            raise OptionError("label", f"the {tag} label of {label} is not on disk", status=404)
        return FileResponse(path, filename=os.path.basename(path))

    return _http(run)


# --- a label's history: every replaced or deleted version, and putting one back -------------
def _history_store():
    datastore = app_instance().datastore()
    if not hasattr(datastore, "label_history"):
        raise OptionError("image", "this datastore keeps no label history here (a PACS keeps every saved SEG "
                                   "as its own series)", status=404)
    return datastore


def label_history(image: str, tag: str = "final", user: User = Depends(RBAC(USER))):
    def run():
        datastore = _history_store()
        _known_image(image)
        entries = datastore.label_history(image, identifier(tag, "tag"))
        return {"image": image, "tag": tag, "entries": [os.path.basename(e) for e in entries]}

    return _http(run)


def restore_label(background_tasks: BackgroundTasks, image: str, entry: str, tag: str = "final",
                  user: User = Depends(RBAC(ANNOTATOR))):
    """Save a history entry as the label again (the label it replaces goes into the history)."""
    def run():
        datastore = _history_store()
        _known_image(image)
        entries = {os.path.basename(e): e for e in datastore.label_history(image, identifier(tag, "tag"))}
        if entry not in entries:
            raise OptionError("entry", f"no history entry {entry!r} for the {tag} label of {image}; "
                                       f"see GET /medsam2/labels/history", status=404)
        with open(entries[entry], "rb") as source:
            from .routes import save_label

            upload = UploadFile(file=source, filename=entry)
            return save_label(background_tasks, image, "{}", tag, upload, user)

    return _http(run)
