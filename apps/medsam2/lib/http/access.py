"""Who is asking: the user's name for per-user sessions and runs, the roles, and whether the
caller is on this machine (what some routes allow only there when authentication is off)."""

from __future__ import annotations

import ipaddress
from typing import Optional

from fastapi import Request
from monailabel.config import settings
from monailabel.endpoints.user.auth import User

USER, ANNOTATOR, ADMIN = (settings.MONAI_LABEL_AUTH_ROLE_USER, settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
                          settings.MONAI_LABEL_AUTH_ROLE_ADMIN)


def user_name(user: User) -> Optional[str]:
    return user.username if settings.MONAI_LABEL_AUTH_ENABLE else None


def is_loopback(http: Request) -> bool:
    try:
        return bool(http.client) and ipaddress.ip_address(http.client.host).is_loopback
    except ValueError:
        return False
