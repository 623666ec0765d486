"""Tasks: fine-tuning, scoring, batch inference, the next study, reloading the app, the log.

Each checks its names against what the app has (an unknown name is a 404 that starts nothing),
runs off the event loop (plain ``def``: FastAPI runs it in its thread pool), starts at most one
of its kind (409 while one runs, never queued) and never answers with the server's paths.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from fastapi import Depends, HTTPException, Request
from monailabel.config import settings
from monailabel.endpoints import activelearning as activelearning_routes
from monailabel.endpoints import batch_infer as batch_routes
from monailabel.endpoints import logs as logs_routes
from monailabel.endpoints import scoring as scoring_routes
from monailabel.endpoints import train as train_routes
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.interfaces.utils.app import app_instance, clear_cache
from monailabel.utils.async_tasks.task import AsyncTask

from .access import ADMIN, ANNOTATOR, USER, is_loopback

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
    if not settings.MONAI_LABEL_AUTH_ENABLE and not is_loopback(http):
        raise HTTPException(status_code=403, detail="reload: only from this machine unless authentication is on "
                                                    "(then by the admin role)")
    clear_cache()
    app_instance()
    return {}


def logs(
    http: Request,
    lines: Optional[int] = 300,
    html: Optional[bool] = True,
    text: Optional[bool] = False,
    refresh: Optional[int] = 0,
    user: User = Depends(RBAC(ADMIN)),
):
    if not settings.MONAI_LABEL_AUTH_ENABLE and not is_loopback(http):
        raise HTTPException(status_code=403, detail="logs: readable only from this machine unless "
                                                    "authentication is on (then by the admin role)")
    return logs_routes.get_logs(os.path.join(settings.MONAI_LABEL_APP_DIR, "logs", "app.log"), lines, html, text,
                                refresh)
