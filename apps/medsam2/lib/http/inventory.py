"""Every route the server exposes, once: who may call it, what it checks, which code answers it;
and :func:`install`, which makes the server answer exactly these (the app's router).

The server is MONAI Label plus this app. At start-up :func:`install` mounts the page
(``viewer.py``), puts the app's versions
of MONAI Label's routes in front and then removes every route that is not listed here, with
the originals the app replaces. So a MONAI Label upgrade that adds a route cannot open a
hole: the route is removed (and named in the log) until someone lists it here. The
exposed routes are logged in one line (``EXPOSED_ROUTES``), which the tests compare with
this list.

Roles: ``public`` (no token), ``user``, ``annotator``, ``admin`` (MONAI Label's realm roles
``monailabel-user``, ``-annotator``, ``-admin``); ``login`` routes exist only with
authentication on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable, Optional

from fastapi import HTTPException

from monailabel.config import settings

from . import inference, labels, loop, ohif, one_prompt, sessions, studies, tasks
from .viewer import mount_viewer

logger = logging.getLogger(__name__)

API = settings.MONAI_LABEL_API_STR
EXPOSED_ROUTES = "exposed routes:"


@dataclass(frozen=True)
class Route:
    method: str  # GET, PUT, POST, DELETE, HEAD, or MOUNT for a static folder
    path: str
    role: str
    rules: str  # what it checks and limits, in a few words
    endpoint: Optional[Callable] = None  # the app's version; None: MONAI Label's own, kept as it is


def _r(method, path, role, rules, endpoint=None):
    return Route(method, API + path if path.startswith("/") and not path.startswith("/medsam2") else path, role,
                 rules, endpoint)


INVENTORY = [
    # documentation and static files
    _r("GET", "/", "public", "API documentation page"),
    _r("GET", "/openapi.json", "public", "API schema"),
    _r("GET", "/docs", "public", "API documentation"),
    _r("GET", "/favicon.ico", "public", "icon"),
    _r("MOUNT", "/static", "public", "MONAI Label's static files"),
    _r("POST", "/reload", "admin", "drops every session and reloads the app", tasks.reload),
    # log-in (authentication on)
    _r("GET", "/auth/", "login", "is authentication on"),
    _r("POST", "/auth/token", "login", "password grant against the realm"),
    _r("GET", "/auth/token/valid", "login", "token check"),
    # information
    _r("GET", "/info/", "user", "the app, its models and labels"),
    _r("GET", "/logs/", "admin", "only from this machine when authentication is off", tasks.logs),
    # inference
    _r("POST", "/infer/{model}", "user", "known model; strict params; image id of the datastore; never saves a "
                                         "label", inference.infer),
    _r("POST", "/infer/wsi/{model}", "user", "refused: no whole-slide models", inference.no_whole_slide),
    _r("POST", "/infer/wsi_v2/{model}", "user", "refused: no whole-slide models", inference.no_whole_slide),
    _r("GET", "/batch/infer", "user", "status of the batch task"),
    _r("POST", "/batch/infer/{model}", "admin", "known model; one at a time; writes 'original' labels only",
       tasks.batch_infer),
    _r("DELETE", "/batch/infer", "admin", "stops the batch task"),
    # training, scoring, active learning
    _r("GET", "/train/", "user", "fine-tune status"),
    _r("POST", "/train/{model}", "admin", "known trainer; one at a time (409), never queued; only on the trainer "
                                         "replica (elsewhere 409 naming it)",
       tasks.train_model),
    _r("DELETE", "/train/", "admin", "stops the fine-tune"),
    _r("GET", "/scoring/", "user", "scoring status"),
    _r("POST", "/scoring/{method}", "annotator", "known method; one at a time; off the event loop",
       tasks.score),
    _r("DELETE", "/scoring/", "annotator", "stops scoring"),
    _r("POST", "/activelearning/{strategy}", "user", "known strategy; answers the id, no path",
       tasks.next_sample),
    # datastore
    _r("GET", "/datastore/", "user", "stats, all, or train (paths relative to the studies folder)",
       studies.listing),
    _r("PUT", "/datastore/", "annotator", "as PUT /datastore/image", studies.add_image),
    _r("PUT", "/datastore/image", "annotator", "checked id and type; size and decoded-size caps; never replaces",
       studies.add_image),
    _r("DELETE", "/datastore/", "admin", "as DELETE /datastore/image", studies.remove_image),
    _r("DELETE", "/datastore/image", "admin", "known id; nothing outside the studies folder", studies.remove_image),
    _r("HEAD", "/datastore/image", "user", "known id; links out refused"),
    _r("GET", "/datastore/image", "user", "known id; links out refused", studies.download_image),
    _r("GET", "/datastore/image/info", "user", "known id; no paths", studies.image_info),
    _r("PUT", "/datastore/image/info", "annotator", "known id; JSON object", studies.update_image_info),
    _r("PUT", "/datastore/label", "annotator", "decoded whole within caps, finite whole values, on the image's "
                                               "grid; 409 on a stale version; history kept; one_prompt_run: accepts "
                                               "that run's result (this user's, waiting for review)",
       labels.save_label),
    _r("DELETE", "/datastore/label", "admin", "known id and tag; history kept; links out refused",
       labels.remove_label),
    _r("HEAD", "/datastore/label", "user", "known id and tag"),
    _r("GET", "/datastore/label", "user", "known id and tag; links out refused", labels.download_label),
    _r("GET", "/datastore/label/info", "user", "known id and tag; no paths", labels.label_info),
    _r("PUT", "/datastore/label/info", "annotator", "known id and tag; JSON object", labels.update_label_info),
    _r("GET", "/medsam2/labels/history", "user", "a label's replaced versions", labels.label_history),
    _r("POST", "/medsam2/labels/restore", "annotator", "saves a history entry again, through PUT "
                                                       "/datastore/label's checks", labels.restore_label),
    # sessions (3D Slicer's upload of a volume the datastore lacks)
    _r("GET", "/session/{session_id}", "user", "known id; image only from the session store",
       sessions.get_session),
    _r("PUT", "/session/", "user", "no archives; files by base name; a readable image", sessions.create_session),
    _r("DELETE", "/session/{session_id}", "user", "known id", sessions.remove_session),
    # OHIF and its DICOMweb proxy
    _r("GET", "/ohif/{path:path}", "user", "files of MONAI Label's OHIF only", ohif.ohif_file),
    _r("GET", "/proxy/dicom/{path:path}", "user", "GET to the PACS only (a PACS datastore); no '..'",
       ohif.dicom_proxy),
    # the app's page
    _r("GET", "/medsam2/viewer/auth", "public", "is authentication on"),
    _r("GET", "/medsam2/viewer/studies", "user", "the datastore's studies, no patient identifiers"),
    _r("GET", "/medsam2/viewer/volume", "user", "known id; a volume, or one slice of it (part=slice, slice 0-100000)"),
    _r("POST", "/medsam2/viewer/segment", "user", "as POST /infer/medsam2_3d (same checks, session, limits); the "
                                                  "answer streamed as server-sent events, closing it cancels"),
    _r("POST", "/medsam2/viewer/focus", "user", "known id; slice 0-100000; encode-ahead order only"),
    _r("GET", "/medsam2/viewer/label", "user", "known id; the final label as structures"),
    _r("MOUNT", "/medsam2/viewer", "public", "the page's files"),
    _r("GET", "/medsam2/loop", "user", "labelling progress, fine-tune progress, served weights, learning curve, "
                                       "this user's permissions", loop.loop),
    # one-prompt runs (lib/http/one_prompt.py): accepting a result is PUT /datastore/label
    _r("POST", "/medsam2/one_prompt/runs", "user", "known studies, the prompt one with a final label; at most 500 "
                                                   "targets; one running per user (409); off the request",
       one_prompt.start_run),
    _r("GET", "/medsam2/one_prompt/runs", "user", "this user's runs only", one_prompt.list_runs),
    _r("GET", "/medsam2/one_prompt/runs/{run_id}", "user", "this user's run only (another's is a 404)",
       one_prompt.get_run),
    _r("DELETE", "/medsam2/one_prompt/runs/{run_id}", "user", "this user's run; stops at the next slice",
       one_prompt.cancel_run),
    _r("GET", "/medsam2/one_prompt/runs/{run_id}/mask", "user", "this user's run; a result waiting for review",
       one_prompt.run_mask),
    _r("POST", "/medsam2/one_prompt/runs/{run_id}/reject", "user", "this user's run; a result waiting for "
                                                                   "review; nothing saved", one_prompt.reject_result),
    _r("GET", "/medsam2/one_prompt/follow-ups", "user", "known id; later studies' ids and dates, never the "
                                                        "patient", one_prompt.follow_ups),
    _r("POST", "/medsam2/one_prompt/follow-up", "user", "known study with a final label; a later study of its "
                                                        "patient; as a run", one_prompt.start_follow_up),
    _r("GET", "/medsam2/events", "user", "the loop's answer pushed as server-sent events when it changes; one "
                                         "shared snapshot a second whatever the number of tabs", loop.events),
]
BY_KEY = {(r.method, r.path): r for r in INVENTORY}


def markdown_table() -> str:
    """The inventory as docs/security.md shows it (tests/test_docs.py checks the two agree)."""
    rows = ["| method | path | role | rules |", "|---|---|---|---|"]
    rows += [f"| {r.method} | `{r.path}` | {r.role} | {r.rules} |" for r in INVENTORY]
    return "\n".join(rows) + "\n"


def _methods(route) -> list:
    methods = getattr(route, "methods", None)
    if methods:
        return sorted(m for m in methods if m != "HEAD" or methods == {"HEAD"})
    return ["MOUNT"]


def live_routes(fastapi_app) -> list:
    """(method, full path, route, the list holding it, its router) of every route the server answers."""
    out = []

    def walk(router, prefix: str) -> None:
        for route in list(router.routes):
            if type(route).__name__ == "_IncludedRouter":  # FastAPI keeps included routers nested
                walk(route.original_router, prefix + (route.include_context.prefix or ""))
                continue
            for method in _methods(route):
                out.append((method, prefix + route.path, route, router))

    walk(fastapi_app.router, "")
    return out


def _allowed(method: str, path: str, route) -> bool:
    entry = BY_KEY.get((method, path))
    if entry is None:
        return False
    return entry.endpoint is None or getattr(route, "endpoint", None) is entry.endpoint


def install(fastapi_app, max_body_bytes: int) -> list:
    """The page, the app's versions in front, then everything not in the inventory removed, and a cap
    on request bodies; returns what is exposed."""
    mount_viewer(fastapi_app)
    present = {(m, p, getattr(r, "endpoint", None)) for m, p, r, _ in live_routes(fastapi_app)}
    for entry in INVENTORY:
        if entry.endpoint is not None and (entry.method, entry.path, entry.endpoint) not in present:
            fastapi_app.router.add_api_route(entry.path, entry.endpoint, methods=[entry.method])  # once: reloads too
    removed = []
    for method, path, route, router in live_routes(fastapi_app):
        if not _allowed(method, path, route) and route in router.routes:
            router.routes.remove(route)
            if hasattr(router, "_mark_routes_changed"):
                router._mark_routes_changed()
            removed.append(f"{method} {path}")
    exposed = sorted({f"{m} {p}" for m, p, _, _ in live_routes(fastapi_app)})
    logger.info("routes removed (not in lib/http/inventory.py, or replaced by the app's): %s", removed)
    logger.info("%s %s", EXPOSED_ROUTES, json.dumps(exposed))
    if fastapi_app.middleware_stack is not None and not isinstance(fastapi_app.middleware_stack, BodyLimit):
        fastapi_app.middleware_stack = BodyLimit(fastapi_app.middleware_stack, max_body_bytes)
    logger.info("request bodies capped at %d bytes", max_body_bytes)
    return exposed


class BodyLimit:
    """ASGI wrapper: 413 for a body over ``limit`` bytes, by its Content-Length or as it streams."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(send, self.limit)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(status_code=413, detail=f"request body over {self.limit} bytes")
            return message

        return await self.app(scope, limited_receive, send)


async def _too_large(send, limit: int):
    body = json.dumps({"detail": f"request body over {limit} bytes (--conf upload_max_mb)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
