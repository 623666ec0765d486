"""Token checking that works: MONAI Label 0.8.5's Keycloak/OIDC support with PyJWT 2.

MONAI Label 0.8.5 (``monailabel/endpoints/user/auth.py``) verifies bearer tokens with
``jwt.decode(token, key, options=...)`` and no ``algorithms``; PyJWT 2 refuses that call
for every token, so with ``MONAI_LABEL_AUTH_ENABLE=true`` nobody can use the server. The
app puts ``user_from_token`` in its place: the same realm public key and claims (its
``MONAI_LABEL_AUTH_*`` settings), with the signature algorithms pinned to RSA/EC ones (never
``none`` or HMAC, which would let a client sign with the public key). Every route's
``RBAC`` dependency looks the function up at call time, so all routes use this one.
"""

from __future__ import annotations

import logging

import jwt
from monailabel.config import settings
from monailabel.endpoints.user import auth as monailabel_auth

logger = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"]


def _claim(payload: dict, path: str):
    value = payload
    for part in path.split("#"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def user_from_token(token: str) -> monailabel_auth.User:
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return monailabel_auth.DEFAULT_USER
    key = monailabel_auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    payload = jwt.decode(token, key, algorithms=ALGORITHMS,
                         options={"verify_signature": True, "verify_aud": False, "verify_exp": True,
                                  "require": ["exp"]})
    username = payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME)
    if not username:
        raise jwt.InvalidTokenError(f"token has no {settings.MONAI_LABEL_AUTH_TOKEN_USERNAME} claim")
    roles = _claim(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES) or []
    return monailabel_auth.User(username=username, email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                                name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME), roles=list(roles))


def install() -> None:
    monailabel_auth.from_token = user_from_token
    if settings.MONAI_LABEL_AUTH_ENABLE:
        logger.info("authentication on: bearer tokens from %s (%s)", settings.MONAI_LABEL_AUTH_REALM_URI,
                    ", ".join(ALGORITHMS))
    else:
        logger.warning("authentication is OFF: anyone who can reach this port can read studies and save labels; "
                       "see the README's deployment section")
