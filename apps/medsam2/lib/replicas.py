"""Several replicas of the app behind a proxy (docs/deployment.md): who answered, who trains.

- Every answer names the replica that made it (``X-MedSAM2-Replica`` header; ``/info``
  ``medsam2.replica``; each infer result's ``replica``).
- A request that carries more than one prompt but finds no session on this replica was
  likely a continuation for its client (the replica that held the session stopped, or the
  session expired): with ``--conf replica_name`` set, the result says so. Clients resend every prompt of
  a label with each click, so the mask is the one the old session would have given.
- Only the replica started with ``--conf trainer true`` fine-tunes; the others refuse
  ``POST /train/...`` naming it (the sample nginx configuration sends ``/train/`` there).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

HEADER = b"x-medsam2-replica"


@dataclass(frozen=True)
class ReplicaSettings:
    name: str = ""  # this replica's name ("" : the machine's host name)
    trainer: bool = True  # this replica runs fine-tunes (one per model folder)
    trainer_name: str = ""  # the trainer's name, for refusals on the other replicas

    @property
    def display_name(self) -> str:
        return self.name or socket.gethostname()

    def status(self) -> dict:
        return {"name": self.display_name, "trainer": self.trainer,
                "trainer_name": self.display_name if self.trainer else (self.trainer_name or None)}

    def training_refusal(self) -> str | None:
        """Why this replica does not start a fine-tune, or None when it is the trainer."""
        if self.trainer:
            return None
        where = f"replica {self.trainer_name!r}" if self.trainer_name else "the replica started with --conf trainer true"
        return (f"train: replica {self.display_name!r} does not fine-tune; send the request to {where} "
                "(the sample nginx configuration routes /train/ there). The weights it publishes are "
                "served here from the next click")


def prompt_count(request: dict) -> int:
    count = 0
    for key in ("foreground", "background"):
        points = request.get(key)
        count += len(points) if isinstance(points, list) else 0
    if request.get("roi"):
        count += 1
    return count


def annotate_result(result_json: dict, request: dict, replica: ReplicaSettings) -> dict:
    """The replica's name in a result, and a warning when its session restarted mid-label."""
    if not isinstance(result_json, dict):
        return result_json
    result_json["replica"] = replica.display_name
    session = result_json.get("session")
    started = session.get("started") if isinstance(session, dict) else None
    prompts = prompt_count(request)
    # only where replicas are named (deployed as several): a lone server's first request may carry
    # several prompts too (OHIF sends every point placed before Run), so the note says "if"
    if replica.name and started == "new" and prompts > 1 and not request.get("reset_state"):
        note = (f"new session on replica {replica.display_name}: it held none for this study; if you had "
                f"clicked before, the replica that held your session stopped (or the session expired): the "
                f"mask was computed again from the {prompts} prompts of this request, nothing was lost")
        session["restarted_on_replica"] = note
        result_json["warning"] = f"{result_json['warning']} | {note}" if result_json.get("warning") else note
    return result_json


class ReplicaHeader:
    """ASGI wrapper: every HTTP answer says which replica made it."""

    def __init__(self, app, name: str):
        self.app = app
        self.value = name.encode("latin-1", "replace")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named_send(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (HEADER, self.value)]}
            return await send(message)

        return await self.app(scope, receive, named_send)
