"""Start a real ``monailabel start_server`` on loopback for tests, and stop it."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.server_fork import zygote_for

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "apps" / "medsam2"
SHARED_RUNTIME_CACHE = Path(tempfile.mkdtemp(prefix="medsam2-test-runtime-cache-"))
atexit.register(shutil.rmtree, SHARED_RUNTIME_CACHE, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_studies(tmp_path_factory) -> Path:
    """A fresh folder of the sample studies (``sample-data/make_sample_data.py``), one per caller."""
    folder = tmp_path_factory.mktemp("studies")
    subprocess.run([sys.executable, str(ROOT / "sample-data" / "make_sample_data.py"), str(folder)], check=True)
    return folder


def stop_process_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM a process started with ``start_new_session`` and its children; SIGKILL after ``grace_s``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_answering(running, request, timeout: float, what: str, poll_s: float) -> None:
    """Until ``request`` (a URL or urllib Request) answers 200; stops ``running`` and says why if it
    exits first or never answers (``running``: ``process``, ``stop()``, ``log()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"{what} exited with {running.process.returncode}:\n{running.log()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(poll_s)
    running.stop()
    raise TimeoutError(f"{what} did not answer {getattr(request, 'full_url', request)} within {timeout} s:\n"
                       f"{running.log()[-3000:]}")


class RunningServer:
    def __init__(self, studies: Path | str, conf: dict, log_path: Path, timeout: float = 180.0,
                 env: dict | None = None, headers: dict | None = None, port: int | None = None, nice: int = 0,
                 app_dir: Path | str = APP_DIR):
        self.port = port or free_port()
        self.headers = dict(headers or {})  # e.g. a bearer token when the server requires one
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        monailabel = Path(sys.executable).with_name("monailabel")
        command = (["nice", "-n", str(nice)] if nice else []) + [
                   str(monailabel), "start_server", "--app", str(app_dir), "--studies", str(studies),
                   "--host", "127.0.0.1", "--port", str(self.port)]
        # an empty model folder of its own, so no file in apps/medsam2/model leaks into a test
        # the CPU runtime named, as before "auto" was the default: the same graphs on every machine
        # the compiled graphs in one folder for the session's servers: keyed by the exact weights,
        # so a server on the weights another used reads them instead of compiling again
        conf = {"model_dir": log_path.parent / "model", "cpu_runtime": "openvino",
                "runtime_cache_dir": SHARED_RUNTIME_CACHE, **conf}
        for key, value in conf.items():
            command += ["--conf", key, str(value)]
        env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "OMP_NUM_THREADS": "2", **(env or {})}
        # the monailabel launcher runs whichever `python` is first on PATH: make it ours
        env["PATH"] = f"{monailabel.parent}{os.pathsep}{env.get('PATH', '')}"
        self._log = open(log_path, "a")
        zygote = zygote_for(env)
        if zygote is not None:
            self.process = zygote.start(command[command.index(str(monailabel)):], env, log_path, nice)
        else:
            self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        wait_until_answering(self, urllib.request.Request(self.url + "/info/", headers=self.headers), timeout,
                             "server", poll_s=0.25)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """kill -9 the server and everything it started (a power cut, as far as files go)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log.close()
