"""The app's own annotation page, served by the app on its own port at ``/medsam2/viewer/``.

The page (``apps/medsam2/viewer/page``) is plain HTML and ES modules, nothing to build or
install; it talks to MONAI Label's own endpoints (``/info``, ``PUT /datastore/label``) and
to the routes added here: the datastore's studies, a study's volume and final label, the
slice the page shows (for encode-ahead) and the streamed segmentation (segment_stream.py).
What the volume route sends is lib/shown_volumes.py's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask
from fastapi.staticfiles import StaticFiles

from medsam2_engine.label_structures import stack_bytes

from ..datastores.saved_structures import saved_label_structures
from ..infers.request import ADDRESS_FIELD, IMAGE_ID_FIELD, USER_FIELD, session_key_for
from ..shown_volumes import ShownVolumes
from .access import user_name
from .errors import as_http
from .segment_stream import build_route as build_segment_route
from .studies import known_image

logger = logging.getLogger(__name__)

PREFIX = "/medsam2/viewer"
VIEWER_DIR = Path(__file__).resolve().parents[2] / "viewer"
PAGE_DIR = VIEWER_DIR / "page"


def study_list(datastore) -> list:
    """Every image of the datastore, what it is (PACS series), whether it has a final label."""
    descriptions = _series_descriptions(datastore)
    try:  # one call: on a PACS, its list of labelled series now (whichever replica saved them)
        labelled = set(datastore.get_labeled_images())
    except Exception:  # noqa: BLE001 - a datastore that cannot say: the list still shows the studies
        logger.warning("the study list cannot say which studies have a final label", exc_info=True)
        labelled = set()
    return [{"image": image_id, "description": descriptions.get(image_id, ""), "final": image_id in labelled}
            for image_id in sorted(datastore.list_images())]


def _series_descriptions(datastore) -> dict:
    """Series UID -> "modality, date, description", in one QIDO query (DICOMweb only).

    A series UID means nothing to a clinician; the PACS knows what the series is. Patient
    identifiers are never returned by the app (the clinician's PACS viewer shows them).
    """
    client = getattr(datastore, "_client", None)  # MONAI Label's DICOMwebClient of the datastore
    if client is None:
        return {}
    # ultrasound and angiography: each loop or still is a study, named by its instance
    instances = datastore.instances.descriptions() if hasattr(datastore, "instances") else {}
    fields = {"Modality": "00080060", "StudyDate": "00080020", "SeriesDescription": "0008103E",
              "SeriesInstanceUID": "0020000E"}
    try:
        entries = client.search_for_series(fields=list(fields))
    except Exception as err:  # the list is still usable with bare UIDs
        logger.warning("could not read series descriptions from the PACS: %s", err)
        return {}

    def value(entry, name):
        values = entry.get(fields[name], {}).get("Value") or [""]
        return str(values[0])

    return {**{value(e, "SeriesInstanceUID"): ", ".join(v for v in (value(e, "Modality"), value(e, "StudyDate"),
                                                                       value(e, "SeriesDescription")) if v)
               for e in entries}, **instances}


def _prefetch(app, http, image: str, client_id: str, user, uri: str, focus: int | None = None,
              open_only: bool = False):
    """The study is about to be segmented: a call that queues its slices for encoding in the
    session its clicks will use (``open_only``: opens that session only). The request is
    checked now (a bad ``client_id`` is a 400)."""
    request = {USER_FIELD: user_name(user), "client_id": client_id or None, IMAGE_ID_FIELD: image,
               ADDRESS_FIELD: http.client.host if http.client else None}
    as_http(lambda: session_key_for(request))
    return lambda: app.prefetch_study(uri, request, focus, open_only=open_only)


def build_router(app_instance, user_dependency) -> APIRouter:
    """Routes for the page; ``app_instance()`` returns the running MONAI Label app."""
    router = APIRouter(prefix=PREFIX, tags=["Viewer"])

    @router.get("/auth", summary="Whether the page must log in (MONAI Label's authentication is on)")
    def auth_enabled():
        # answered without a token: the page asks before it has one, and MONAI Label 0.8.5 has
        # no such route of its own when authentication is off (a 404 on every page load)
        from monailabel.config import settings

        return {"enabled": bool(settings.MONAI_LABEL_AUTH_ENABLE)}

    @router.post("/focus", summary="The slice the page shows: encode-ahead works outward from it")
    def focus(http: Request, image: str = Query(..., description="image id of the datastore"),
              slice: int = Query(..., ge=0, le=100_000, description="the slice index shown (the volume's k)"),
              client_id: str = Query("", description="the viewer tab's session"),
              user=Depends(user_dependency)):
        datastore = app_instance().datastore()
        as_http(lambda: known_image(image, datastore))
        _prefetch(app_instance(), http, image, client_id, user, datastore.get_image_uri(image), focus=slice)()
        return {"slice": slice}

    @router.get("/studies", summary="Studies of the datastore, for the viewer page")
    def studies(user=Depends(user_dependency)):
        return {"studies": study_list(app_instance().datastore())}

    shown = ShownVolumes()

    @router.get("/volume", summary="A study's volume as NIfTI on the app's voxel grid (or its first slice alone)")
    def volume(http: Request, image: str = Query(..., description="image id of the datastore"),
               client_id: str = Query("", description="the viewer tab's session: its slices are encoded ahead"),
               part: str = Query("all", pattern="^(all|slice)$",
                                 description="all: the study; slice: one slice alone, to show first (NIfTI studies)"),
               slice: Optional[int] = Query(None, ge=0, le=100_000,
                                            description="part=slice: which (default the middle one)"),
               user=Depends(user_dependency)):
        datastore = app_instance().datastore()
        as_http(lambda: known_image(image, datastore))
        uri = datastore.get_image_uri(image)
        if part == "slice":
            # while the whole study travels, the session its first click will use is opened
            opening = BackgroundTask(_prefetch(app_instance(), http, image, client_id, user, uri, open_only=True))
            sent = shown.one_slice(uri, slice)
            if sent is None:
                return Response(status_code=204, headers={"Cache-Control": "no-store"}, background=opening)
            return Response(content=sent.body, media_type="application/octet-stream", headers=sent.headers(image),
                            background=opening)
        # encoding ahead starts once the study is sent: on the same cores it would slow the
        # sending, and prompts wait for the whole study
        ahead = BackgroundTask(_prefetch(app_instance(), http, image, client_id, user, uri))
        sent = shown.whole(uri)
        if sent.stored:
            return FileResponse(sent.stored, media_type="application/octet-stream", headers=sent.headers(image),
                                background=ahead)
        return Response(content=sent.body, media_type="application/octet-stream", headers=sent.headers(image),
                        background=ahead)

    @router.get("/label", summary="A study's final label, each structure whole, for the page to show and edit")
    def final_label(image: str = Query(..., description="image id of the datastore"),
                    user=Depends(user_dependency)):
        datastore = app_instance().datastore()
        as_http(lambda: known_image(image, datastore))
        try:
            path = datastore.get_label_uri(image, "final")
        except HTTPException:
            raise
        except Exception:
            path = ""
        if not path or not os.path.isfile(path):
            raise HTTPException(status_code=404, detail=f"image: {image} has no final label")
        info = datastore.get_label_info(image, "final") or {}
        stack, affine, entries = saved_label_structures(path, info, list(app_instance().settings.labels))
        return Response(
            content=stack_bytes(stack, affine, [e["idx"] for e in entries]),
            media_type="application/octet-stream",
            headers={"X-Label-Info": json.dumps(entries), "X-Label-Version": str(info.get("version") or ""),
                     "Cache-Control": "no-store"},
        )

    build_segment_route(router, app_instance, user_dependency)

    return router


def mount_viewer(server) -> None:
    """Add the page and its routes to MONAI Label's FastAPI ``server`` (once; lib/http/inventory.py calls it)."""
    from monailabel.endpoints.user.auth import RBAC
    from monailabel.interfaces.utils.app import app_instance

    from .access import USER

    if any(getattr(route, "path", "") == PREFIX + "/studies" for route in server.routes):
        return
    server.include_router(build_router(app_instance, RBAC(USER)))
    server.mount(PREFIX, StaticFiles(directory=PAGE_DIR, html=True), name="medsam2_viewer")
    logger.info("viewer page at %s/", PREFIX)
