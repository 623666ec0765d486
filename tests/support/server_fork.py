"""Test servers forked from one process that has already imported torch and MONAI.

``monailabel start_server`` spends most of its start (6-9 s on these machines) importing MONAI,
whose package imports every submodule, before one line of MONAI Label or the app runs. The suite
starts about 35 servers, so it starts them from a zygote: one process per test session that
imports those third-party libraries (no MONAI Label module: its settings are read from each
server's own environment) and forks a child per server. The child takes the server's own
environment, working directory, log and new session, and runs ``monailabel.main`` with the same
arguments as the launcher would, as ``python -m monailabel.main`` does. The launcher itself is
tested in ``test_launcher.py``, the replica script in ``test_run_replicas_script.py``.
``MEDSAM2_TEST_FORK_SERVERS=0`` starts each server as its own process instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# what every server imports first and which reads nothing of a server's own settings at import
PRELOADED = ("torch", "monai", "monai.apps", "monai.bundle", "monai.bundle.scripts", "fastapi", "uvicorn",
             "girder_client", "jwt", "pydicom_seg", "highdicom", "tensordict", "sam2")  # not openvino: it starts a thread
# environment read by the preloaded libraries at import: a server asking for other values is not forked
READ_AT_IMPORT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED", "PYTHONPATH", "LD_PRELOAD")


class ForkedProcess:
    """What the tests use of ``subprocess.Popen`` for a server the zygote forked."""

    def __init__(self, zygote: "Zygote", pid: int):
        self._zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.ask({"op": "poll", "pid": self.pid})["code"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"server {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


class Zygote:
    def __init__(self, env: dict):
        self.env = dict(env)
        self._lock = threading.Lock()
        self._process = subprocess.Popen([sys.executable, "-m", "tests.support.server_fork"], env=self.env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.ask({"op": "ready"})

    def can_start(self, env: dict) -> bool:
        return self._process.poll() is None and all(env.get(k) == self.env.get(k) for k in READ_AT_IMPORT)

    def ask(self, request: dict) -> dict:
        with self._lock:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the server zygote exited with {self._process.wait()}")
        return json.loads(line)

    def start(self, argv: list, env: dict, log_path, nice: int = 0) -> ForkedProcess:
        reply = self.ask({"op": "start", "argv": [str(a) for a in argv], "env": env, "log": str(log_path),
                          "cwd": os.getcwd(), "nice": nice})
        return ForkedProcess(self, reply["pid"])


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def zygote_for(env: dict) -> Zygote | None:
    """The session's zygote if it can start a server with ``env``; None: start a process of its own."""
    global _zygote
    if os.environ.get("MEDSAM2_TEST_FORK_SERVERS", "1") == "0" or not hasattr(os, "fork"):
        return None
    with _zygote_lock:
        if _zygote is None:
            _zygote = Zygote(env)
        return _zygote if _zygote.can_start(env) else None


def _run_server(request: dict) -> None:
    """In the forked child: become the server the request names; never returns."""
    code = 1
    try:
        os.setsid()
        if request["nice"]:
            os.nice(request["nice"])
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.path[0] = os.getcwd()  # as `python -m monailabel.main` run there has it
        sys.path.append(ROOT)  # last: only for a spawned grandchild, which imports this module as its main
        import tempfile

        tempfile.tempdir = None  # TMPDIR is the server's own
        sys.argv = request["argv"]
        from monailabel.main import Main

        Main().run()
        code = 0
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
    except BaseException:  # noqa: BLE001 - said in the server's log, as an unforked server would
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve() -> None:
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    exited: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        reply: dict = {}
        if request["op"] == "start":
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _run_server(request)
            reply = {"pid": pid}
        elif request["op"] == "poll":
            pid = request["pid"]
            if pid not in exited:
                done, status = os.waitpid(pid, os.WNOHANG)  # only ever asked of its own children
                if done:
                    exited[pid] = os.waitstatus_to_exitcode(status)
            reply = {"code": exited.get(pid)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
