"""nginx (Debian's ``nginx``) in front of app replicas, with the app's own configuration
(``apps/medsam2/deploy/nginx.conf.template``), as a child process on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import ROOT, free_port, stop_process_group, wait_until_answering

NGINX_BINARY = shutil.which("nginx") or "/usr/sbin/nginx"

needs_nginx = pytest.mark.skipif(
    not os.access(NGINX_BINARY, os.X_OK),
    reason="nginx is not installed (Debian package nginx: run `bash setup.sh --tests` as root)",
)

sys.path.insert(0, str(ROOT / "apps" / "medsam2" / "deploy"))
from render_nginx import write as write_config  # noqa: E402


class RunningNginx:
    def __init__(self, folder: Path, replicas: list, trainer: str | None = None, fail_timeout_s: int = 10,
                 timeout: float = 20.0, max_fails: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        user = "root" if os.geteuid() == 0 else None  # workers must reach the test's own folder
        self.config = write_config(folder, f"127.0.0.1:{self.port}", replicas, trainer, user=user,
                                   fail_timeout_s=fail_timeout_s, max_fails=max_fails)
        self.folder = Path(folder)
        self._log = open(self.folder / "logs" / "stdout.log", "w")
        self.process = subprocess.Popen([NGINX_BINARY, "-p", str(folder), "-c", str(self.config),
                                         "-g", "daemon off;"], stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_until_answering(self, self.url + "/info/", timeout, "nginx", poll_s=0.2)

    def log(self) -> str:
        text = ""
        for name in ("stdout.log", "error.log"):
            path = self.folder / "logs" / name
            if path.exists():
                text += path.read_text(errors="replace")[-3000:]
        return text

    def stop(self) -> None:
        stop_process_group(self.process, grace_s=5)
        self._log.close()
