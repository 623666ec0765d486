"""`.venv/bin/monailabel` works without activating the venv (setup.sh writes it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_monailabel_launcher_runs_the_venv_python_without_activation():
    launcher = Path(sys.executable).with_name("monailabel")
    # MONAI Label's own launcher runs `python` from PATH: with no venv on PATH it cannot import monailabel
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = "/usr/bin:/bin"
    result = subprocess.run([str(launcher), "start_server", "--help"], env=env, cwd="/", capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "--studies" in result.stdout
