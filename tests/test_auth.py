"""MONAI Label's Keycloak/OIDC auth switched on, against a local fake realm on loopback.

The fake realm answers what MONAI Label 0.8.5 asks a Keycloak realm for (its
``public_key``); tokens are RS256 JWTs signed with the matching private key, with roles
under ``realm_access.roles`` as Keycloak puts them.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import ROOT
from tests.support.server import RunningServer

USER, ANNOTATOR, ADMIN = "monailabel-user", "monailabel-annotator", "monailabel-admin"


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def realm():
    key = _key()
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"realm": "test", "public_key": base64.b64encode(der).decode()}).encode()

    class Realm(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200 if self.path.rstrip("/") == "/realms/test" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/realms/test", key
    httpd.shutdown()


def token(key, username, roles, expires_in=600):
    claims = {"preferred_username": username, "realm_access": {"roles": roles}, "exp": int(time.time()) + expires_in}
    return jwt.encode(claims, key, algorithm="RS256")


def bearer(value):
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def server(realm, small_model_files, tmp_path_factory):
    uri, key = realm
    studies = tmp_path_factory.mktemp("auth_studies")
    subprocess.run([sys.executable, str(ROOT / "sample-data" / "make_sample_data.py"), str(studies)], check=True)
    config, checkpoint = small_model_files
    running = RunningServer(studies, {"model_config": config, "checkpoint": checkpoint, "labels": "liver"},
                            tmp_path_factory.mktemp("auth_logs") / "server.log",
                            env={"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": uri},
                            headers=bearer(token(key, "probe", [USER])))
    running.studies = studies
    yield running
    running.stop()


def infer(server, headers, params):
    return requests.post(f"{server.url}/infer/medsam2_3d", params={"image": "ct_phantom_0", "output": "json"},
                         data={"params": json.dumps(params)}, headers=headers, timeout=120)


def test_requests_without_a_valid_token_are_refused(server, realm):
    _, key = realm
    label = (server.studies / "labels" / "final" / "ct_phantom_0.nii.gz").read_bytes()
    forged = token(_key(), "mallory", [ADMIN])  # signed by another key
    expired = token(key, "alice", [USER], expires_in=-60)
    for headers in ({}, bearer("not-a-jwt"), bearer(forged), bearer(expired)):
        assert requests.get(f"{server.url}/info/", headers=headers, timeout=10).status_code == 401
        assert infer(server, headers, {"foreground": [[34, 36, 20]]}).status_code == 401
        saved = requests.put(f"{server.url}/datastore/label", params={"image": "ct_phantom_0"},
                             files={"label": ("l.nii.gz", label)}, headers=headers, timeout=10)
        assert saved.status_code == 401
        assert requests.get(f"{server.url}/logs/", headers=headers, timeout=10).status_code == 401
        assert requests.get(f"{server.url}/datastore/image", params={"image": "ct_phantom_0"}, headers=headers,
                            timeout=10).status_code == 401


def test_roles_decide_what_a_valid_user_may_do(server, realm):
    _, key = realm
    reader = bearer(token(key, "bob", [USER]))
    assert requests.get(f"{server.url}/info/", headers=reader, timeout=10).status_code == 200
    label = (server.studies / "labels" / "final" / "ct_phantom_0.nii.gz").read_bytes()
    saved = requests.put(f"{server.url}/datastore/label", params={"image": "ct_phantom_0"},
                         files={"label": ("l.nii.gz", label)}, headers=reader, timeout=30)
    assert saved.status_code == 403  # saving labels needs the annotator role
    assert requests.get(f"{server.url}/logs/", headers=reader, timeout=10).status_code == 403  # admin only
    annotator = bearer(token(key, "alice", [USER, ANNOTATOR]))
    saved = requests.put(f"{server.url}/datastore/label", params={"image": "ct_phantom_0"},
                         files={"label": ("l.nii.gz", label)}, headers=annotator, timeout=30)
    assert saved.status_code == 200, saved.text
    admin = bearer(token(key, "root", [ADMIN]))
    assert requests.get(f"{server.url}/logs/", params={"text": "true"}, headers=admin, timeout=10).status_code == 200


def test_sessions_are_per_authenticated_user(server, realm):
    _, key = realm
    alice, bob = bearer(token(key, "alice", [USER])), bearer(token(key, "bob", [USER]))
    # neither sends a client_id (as OHIF); the same client_id would not merge them either
    first = infer(server, alice, {"foreground": [[34, 36, 20]], "client_id": "shared"})
    second = infer(server, bob, {"foreground": [[30, 30, 20]], "client_id": "shared"})
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json()["session"]["key"] == ["user:alice", "ct_phantom_0"]
    assert second.json()["session"]["key"] == ["user:bob", "ct_phantom_0"]
    assert second.json()["session"]["started"] == "new"  # bob did not continue alice's session


def test_every_inventory_route_asks_for_its_role(server, realm):
    """Each route of lib/http/inventory.py refuses a caller without a token (401) and, where it
    needs more than the user role, a user-role token (403): MONAI Label's own routes included
    (POST /reload took none)."""
    from lib.http.inventory import INVENTORY

    _, key = realm
    reader = bearer(token(key, "bob", [USER]))
    checked = 0
    for route in INVENTORY:
        if route.method == "MOUNT" or route.role in ("public", "login"):
            continue
        path = route.path.replace("{model}", "medsam2_3d").replace("{strategy}", "random") \
            .replace("{method}", "medsam2_uncertainty").replace("{session_id}", "nope").replace("{path:path}", "x")
        with requests.request(route.method, server.url + path, timeout=30, stream=True) as no_token:
            assert no_token.status_code == 401, (route.method, path, no_token.status_code)
        if route.role in ("annotator", "admin"):
            as_user = requests.request(route.method, server.url + path, headers=reader, timeout=30)
            assert as_user.status_code == 403, (route.method, path, as_user.status_code, as_user.text[:200])
        checked += 1
    assert checked >= 35
    # an annotator's infer still cannot write a label
    annotator = bearer(token(key, "alice", [USER, ANNOTATOR]))
    refused = infer(server, annotator, {"foreground": [[34, 36, 20]], "save_label": True, "label_tag": "final"})
    assert refused.status_code == 400 and "save_label" in refused.text
