"""The one mapping of the app's errors to what a client is told: a status and words.

Only errors that describe the request (or the server's state: the model not ready, memory
busy) are the client's; anything else is a bug here and stays a 500, its traceback in the log.
Every route (``lib/http/errors.py``) and every task (``lib/infers/base.py``) maps through this.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException, MONAILabelException

from medsam2_engine.checkpoints import CheckpointError
from medsam2_engine.model_source import ModelNotReady
from medsam2_engine.one_prompt import OnePromptError
from medsam2_engine.prompts import PromptError
from medsam2_engine.sessions import MemoryBusy
from medsam2_engine.volume_io import ImageReadError
from medsam2_engine.windowing import WindowError

from .options import OptionError

logger = logging.getLogger(__name__)

REQUEST_ERRORS = (PromptError, WindowError, ImageReadError, OnePromptError)  # 400, in the error's own words
NOT_READY = (ModelNotReady, CheckpointError)  # 503: the weights cannot serve yet


def client_answer(err: BaseException) -> HTTPException | None:
    """The answer a client gets for ``err``; None: not the client's (a bug: 500)."""
    if isinstance(err, HTTPException):
        return err
    if isinstance(err, OptionError):
        return HTTPException(status_code=err.status, detail=str(err))
    if isinstance(err, (ImageNotFoundException, LabelNotFoundException)):
        return HTTPException(status_code=404, detail=err.msg)
    if isinstance(err, MONAILabelException):
        return HTTPException(status_code=400, detail=err.msg)
    if isinstance(err, REQUEST_ERRORS):
        return HTTPException(status_code=400, detail=str(err))
    if isinstance(err, NOT_READY):
        return HTTPException(status_code=503, detail=f"model not ready: {err}")
    if isinstance(err, MemoryBusy):
        return HTTPException(status_code=503, detail=str(err))
    return None


def answered(call, what: str = "request"):
    """``call()``, its client errors raised as their HTTP answers (logged as the client's)."""
    try:
        return call()
    except Exception as err:
        answer = client_answer(err)
        if answer is None or answer is err:
            raise
        (logger.error if answer.status_code >= 500 else logger.warning)("%s: %s", what, answer.detail)
        raise answer from err
