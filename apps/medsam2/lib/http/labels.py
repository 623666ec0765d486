"""Labels: MONAI Label's datastore label routes, the app's versions (ids and tags checked, a label
decoded whole and on its image's grid before anything is written, a stale ``replaces`` refused,
every replaced version kept), a label's history and its restore; and accepting a one-prompt
result, which is saving it (``params.one_prompt_run``, lib/one_prompt_runs.py).
"""

from __future__ import annotations

import json
import os
import threading

from fastapi import BackgroundTasks, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse
from monailabel.endpoints import datastore as datastore_routes
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.utils.app import app_instance

from ..datastores.records import check_replaces
from ..one_prompt_runs import run_owner
from ..options import OptionError, identifier, json_object
from .access import ADMIN, ANNOTATOR, USER, user_name
from .errors import as_http
from .studies import known_image

_SAVE_LOCKS: dict = {}


def known_label(image: str, tag: str) -> str:
    known_image(image)
    if not app_instance().datastore().get_label_by_image_id(image, identifier(tag, "tag")):
        raise OptionError("tag", f"image {image} has no {tag!r} label", status=404)
    return image


def save_label(
    background_tasks: BackgroundTasks,
    image: str,
    params: str = Form("{}"),
    tag: str = DefaultLabelTag.FINAL.value,
    label: UploadFile = File(...),
    user: User = Depends(RBAC(ANNOTATOR)),
):
    def check() -> str:
        identifier(image, "image")
        identifier(tag or DefaultLabelTag.FINAL.value, "tag")
        return json.dumps(json_object(params, "params"))

    checked = as_http(check)
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
            accepting = runs.accepting(request, image, tag, run_owner(user_name(user))) if runs else None
            current = (datastore.get_label_info(image, tag) or {}).get("version") \
                if datastore.get_label_by_image_id(image, tag) else None
            check_replaces(request, current, tag, image)
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

    return as_http(save, background_tasks)


def remove_label(id: str, tag: str, user: User = Depends(RBAC(ADMIN))):
    return as_http(lambda: datastore_routes.remove_label(known_image(id, field="id"), identifier(tag, "tag"),
                                                          user.username))


def label_info(label: str, tag: str, user: User = Depends(RBAC(USER))):
    return as_http(lambda: app_instance().datastore().get_label_info(known_label(label, tag), tag))


def download_label(label: str, tag: str, user: User = Depends(RBAC(USER))):
    def run():
        path = app_instance().datastore().get_label_uri(known_label(label, tag), tag)
        if not path or not os.path.isfile(path):
            raise OptionError("label", f"the {tag} label of {label} is not on disk", status=404)
        return FileResponse(path, filename=os.path.basename(path))

    return as_http(run)


def update_label_info(label: str, tag: str, info: str = Form("{}"),
                      user: User = Depends(RBAC(ANNOTATOR))):
    def run():
        checked = json.dumps(json_object(info, "info"))
        return datastore_routes.update_label_info(identifier(label, "label"), identifier(tag, "tag"), checked,
                                                  user.username)

    return as_http(run)


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
        known_image(image)
        entries = datastore.label_history(image, identifier(tag, "tag"))
        return {"image": image, "tag": tag, "entries": [os.path.basename(e) for e in entries]}

    return as_http(run)


def restore_label(background_tasks: BackgroundTasks, image: str, entry: str, tag: str = "final",
                  user: User = Depends(RBAC(ANNOTATOR))):
    """Save a history entry as the label again (the label it replaces goes into the history)."""
    def run():
        datastore = _history_store()
        known_image(image)
        entries = {os.path.basename(e): e for e in datastore.label_history(image, identifier(tag, "tag"))}
        if entry not in entries:
            raise OptionError("entry", f"no history entry {entry!r} for the {tag} label of {image}; "
                                       f"see GET /medsam2/labels/history", status=404)
        with open(entries[entry], "rb") as source:
            upload = UploadFile(file=source, filename=entry)
            return save_label(background_tasks, image, "{}", tag, upload, user)

    return as_http(run)
