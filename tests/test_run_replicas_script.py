"""scripts/run_replicas.sh stops at once on TERM, whatever its restart delay."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.support.nginx import needs_nginx
from tests.support.server import ROOT, free_port


@needs_nginx
def test_term_stops_everything_at_once_during_a_restart_delay(tmp_path):
    env = {**os.environ, "PORT": str(free_port()), "RUN_DIR": str(tmp_path / "run"), "RESTART_S": "600"}
    # an argument start_server refuses: the replica exits at once and waits 600 s to start again
    said = tmp_path / "said.txt"
    with open(said, "w") as out:
        process = subprocess.Popen(["bash", "scripts/run_replicas.sh", "1", str(tmp_path / "studies"),
                                    "--no-such-option"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "starting it again in 600 s" not in said.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
            if process.poll() is not None:
                break
        time.sleep(2)  # well inside the restart delay
        assert process.poll() is None, "the script ended before it was asked to"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        stopped_in = time.monotonic() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "starting it again in 600 s" in said.read_text()
    assert stopped_in < 5, f"TERM took {stopped_in:.1f} s"
    import psutil

    def left_running():  # a zombie is dead: only its parent's reaping (init's, here) is left
        left = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if os.getpgid(p.info["pid"]) == process.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    left.append(p.info["cmdline"])
            except (ProcessLookupError, PermissionError):
                continue
        return left

    deadline = time.monotonic() + 2  # a killed child may still be on its way out
    while left_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left_running(), f"processes left behind: {left_running()}"
