"""The nginx configuration of several replicas (apps/medsam2/deploy), run by real nginx in front of
stand-in replicas: a click in flight on a replica that dies is answered by another; a label save
is never sent twice; the study-to-replica split depends on replica names, not on ports."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.support.nginx import RunningNginx, needs_nginx

pytestmark = needs_nginx


class StandIn:
    """A replica stand-in: answers with its name, or (``dying``) reads a request and closes the
    connection without an answer, as a replica killed mid-request does. Counts what reached it."""

    def __init__(self, name: str):
        self.name, self.dying, self.received = name, False, []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path.startswith("/info/"):
                    return self._answer()
                stand_in.received.append((self.command, self.path.split("?")[0]))
                if stand_in.dying:
                    self.close_connection = True
                    self.connection.shutdown(2)  # no status line: nginx sees the upstream fail
                    return
                self._answer()

            def _answer(self):
                body = stand_in.name.encode()
                self.send_response(200)
                self.send_header("X-MedSAM2-Replica", stand_in.name)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_ins():
    made = [StandIn("r1"), StandIn("r2")]
    yield made
    for stand_in in made:
        stand_in.stop()


def _proxy(tmp_path, stand_ins, folder="nginx", order=None):
    order = order or stand_ins
    # max_fails=0: nginx never marks the dying replica down, so every request meets it first
    return RunningNginx(tmp_path / folder, [f"{s.name}={s.address}" for s in order], max_fails=0)


def _study_on(url: str, name: str) -> str:
    for n in range(200):
        study = f"study-{n}"
        if requests.get(f"{url}/datastore/image/info", params={"image": study}, timeout=10).text == name:
            return study
    raise AssertionError(f"no study of 200 went to {name}")


def test_a_click_in_flight_on_a_dying_replica_is_answered_by_another(tmp_path, stand_ins):
    first, second = stand_ins
    nginx = _proxy(tmp_path, stand_ins)
    try:
        study = _study_on(nginx.url, "r1")
        first.dying = True
        answer = requests.post(f"{nginx.url}/infer/medsam2_3d", params={"image": study}, files={"params": "{}"},
                               timeout=30)
    finally:
        nginx.stop()
    assert answer.status_code == 200 and answer.text == "r2"
    assert ("POST", "/infer/medsam2_3d") in first.received and ("POST", "/infer/medsam2_3d") in second.received


@pytest.mark.parametrize("method, path", [("PUT", "/datastore/label"), ("DELETE", "/datastore/label"),
                                          ("PUT", "/datastore/image"), ("POST", "/medsam2/labels/restore")])
def test_a_write_is_never_sent_to_a_second_replica(tmp_path, stand_ins, method, path):
    first, second = stand_ins
    nginx = _proxy(tmp_path, stand_ins)
    try:
        study = _study_on(nginx.url, "r1")
        first.dying = True
        answer = requests.request(method, f"{nginx.url}{path}", params={"image": study, "tag": "final"},
                                  files={"label": ("l.nii.gz", b"x" * 1000)}, timeout=30)
    finally:
        nginx.stop()
    assert answer.status_code == 502  # the client learns the save's fate is unknown; nothing saved twice
    assert first.received.count((method, path)) == 1 and (method, path) not in second.received


def test_the_split_depends_on_replica_names_not_ports(tmp_path, stand_ins):
    """The same names on swapped addresses: every study goes to the replica of the same name."""
    first, second = stand_ins
    nginx = _proxy(tmp_path, stand_ins)
    studies = [f"study-{n}" for n in range(24)]
    try:
        placed = {s: requests.get(f"{nginx.url}/datastore/image/info", params={"image": s}, timeout=10).text
                  for s in studies}
    finally:
        nginx.stop()
    first.name, second.name = second.name, first.name  # r1 now listens where r2 did, and back
    nginx = _proxy(tmp_path, [second, first], folder="nginx-swapped")
    try:
        again = {s: requests.get(f"{nginx.url}/datastore/image/info", params={"image": s}, timeout=10).text
                 for s in studies}
    finally:
        nginx.stop()
    assert set(placed.values()) == {"r1", "r2"}  # both get studies
    assert again == placed
