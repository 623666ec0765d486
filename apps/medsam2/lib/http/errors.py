"""Every route's errors as HTTP answers: ``lib/errors.py``'s one mapping, and the clean-up of a refused
request's temporary files."""

from __future__ import annotations

import logging
from typing import Callable, Optional

from fastapi import BackgroundTasks

from ..errors import client_answer

logger = logging.getLogger(__name__)


def as_http(call: Callable, background_tasks: Optional[BackgroundTasks] = None):
    """``call()`` with the app's errors as HTTP answers. On any error the request's clean-up tasks
    (MONAI Label's temporary copies of uploads) run now: FastAPI runs them only after a success."""
    try:
        return call()
    except BaseException as err:
        clean_up(background_tasks)
        answer = client_answer(err) if isinstance(err, Exception) else None
        if answer is None or answer is err:
            raise
        raise answer from err


def clean_up(background_tasks: Optional[BackgroundTasks]) -> None:
    if background_tasks is None:
        return
    for task in list(background_tasks.tasks):
        try:
            task.func(*task.args, **task.kwargs)
        except Exception as err:  # noqa: BLE001 - removing a temporary file
            logger.warning("clean-up after a refused request failed: %s", err)
    background_tasks.tasks.clear()
