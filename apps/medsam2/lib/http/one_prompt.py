"""One-prompt runs over HTTP (``/medsam2/one_prompt/...``): for the page, Slicer and scripts.

- ``POST /medsam2/one_prompt/runs`` ``{"support", "label", "targets": [ids] | "unlabelled",
  "label_value"?}``: starts a run (off the request; one running per user, else 409);
- ``POST /medsam2/one_prompt/follow-up`` ``{"image", "label", "follow_up"?}``: a run onto the
  same patient's next study (lib/patients.py), or the later one named;
- ``GET /medsam2/one_prompt/follow-ups?image=``: the patient's later studies (ids and dates);
- ``GET /medsam2/one_prompt/runs`` (this user's), ``GET .../runs/{id}`` (progress, time left,
  the targets least sure first), ``DELETE .../runs/{id}`` (cancel: stops at the next slice);
- ``GET .../runs/{id}/mask?image=``: a result as the page shows it (a one-channel NIfTI stack);
- ``POST .../runs/{id}/reject?image=``: drop a result.

Accepting is saving: ``PUT /datastore/label`` (annotator) with ``params.one_prompt_run`` set to
the run's id saves the label (the result, or the person's correction of it) and records in the
label's info that one-prompt made it from which study, and how many voxels the person changed
(``OnePromptRuns.accepting`` and ``.record``, called by lib/http/labels.py's save).
"""

from __future__ import annotations

from typing import Optional

from fastapi import Body, Depends, Query
from fastapi.responses import Response
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from ..options import OptionError, identifier, integer
from ..one_prompt_runs import run_owner
from .access import USER, user_name
from .errors import as_http
from .studies import known_image

UNLABELLED = "unlabelled"


def _runs():
    runs = getattr(app_instance(), "one_prompt_runs", None)
    if runs is None:
        raise OptionError("one_prompt", "this server does not run one-prompt segmentation", status=404)
    return runs


def _owner(user: User) -> str:
    return run_owner(user_name(user))


def _structure(body) -> tuple:
    """(support study, structure name, label_value) of a start request, checked."""
    if not isinstance(body, dict):
        raise OptionError("body", "a JSON object")
    datastore = app_instance().datastore()
    support = known_image(body.get("support") or body.get("image"), datastore, "support")
    labels = list(app_instance().settings.labels)
    label = body.get("label") or labels[0]
    if label not in labels:
        raise OptionError("label", f"no structure {label!r}; this server's structures are {labels}")
    if "final" not in (datastore.get_labels_by_image_id(support) or {}):
        raise OptionError("support", f"{support} has no saved final label to use as the prompt", status=409)
    value = body.get("label_value")
    return support, label, None if value in (None, "") else integer(value, "label_value", low=1)


def start_run(body: dict = Body(..., description='{"support", "label", "targets": [ids] or "unlabelled"}'),
              user: User = Depends(RBAC(USER))):
    def start():
        support, label, value = _structure(body)
        datastore = app_instance().datastore()
        targets = body.get("targets")
        if targets == UNLABELLED:  # every study without a final label; those of another kind are skipped, saying so
            labelled = set(datastore.get_labeled_images())
            targets = sorted(i for i in datastore.list_images() if i not in labelled and i != support)
        elif isinstance(targets, list) and all(isinstance(t, str) for t in targets):
            targets = [known_image(t, datastore, "targets") for t in targets]
        else:
            raise OptionError("targets", f'a list of study ids, or "{UNLABELLED}"')
        if len(targets) > 500:
            raise OptionError("targets", "at most 500 studies in one run")
        return _runs().start(_owner(user), "review", support, label, value, targets).json()

    return as_http(start)


def follow_ups(image: str = Query(..., description="image id of the datastore"), user: User = Depends(RBAC(USER))):
    def read():
        from ..patients import later_studies

        datastore = app_instance().datastore()
        known_image(image, datastore)
        this, later = later_studies(datastore, image)
        return {"image": image, "date": this.date if this else None, "grouped": this is not None,
                "later": [{"image": t.image, "date": t.date} for t in later]}

    return as_http(read)


def start_follow_up(body: dict = Body(..., description='{"image", "label", "follow_up"?}'),
                    user: User = Depends(RBAC(USER))):
    def start():
        from ..patients import later_studies

        support, label, value = _structure(body)
        this, later = later_studies(app_instance().datastore(), support)
        if this is None:
            raise OptionError("image", f"{support}: which patient it belongs to is not known (see docs/viewer.md, "
                                       "follow-ups)", status=409)
        wanted: Optional[str] = body.get("follow_up")
        chosen = [t for t in later if wanted in (None, "", t.image)]
        if not chosen:
            raise OptionError("follow_up", f"{wanted or 'a later study'}: not a later study of this patient",
                              status=409 if not wanted else 404)
        return _runs().start(_owner(user), "follow-up", support, label, value, [chosen[0].image]).json()

    return as_http(start)


def list_runs(user: User = Depends(RBAC(USER))):
    return as_http(lambda: {"runs": [r.json() for r in _runs().runs(_owner(user))]})


def get_run(run_id: str, user: User = Depends(RBAC(USER))):
    return as_http(lambda: _runs().get(_owner(user), identifier(run_id, "run")).json())


def cancel_run(run_id: str, user: User = Depends(RBAC(USER))):
    return as_http(lambda: _runs().cancel(_owner(user), identifier(run_id, "run")).json())


def run_mask(run_id: str, image: str = Query(...), user: User = Depends(RBAC(USER))):
    data = as_http(lambda: _runs().mask(_owner(user), identifier(run_id, "run"), identifier(image, "image")))
    return Response(content=data, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})


def reject_result(run_id: str, image: str = Query(...), user: User = Depends(RBAC(USER))):
    return as_http(lambda: _runs().reject(_owner(user), identifier(run_id, "run"), identifier(image, "image")).json())
