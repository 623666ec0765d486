"""A real Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb``) on loopback for tests.

The session fixture is registered in tests/conftest.py (one Orthanc for the session); a test module
imports only the mark::

    from tests.support.orthanc import needs_orthanc

    @needs_orthanc
    def test_x(orthanc):
        orthanc.upload(paths)          # DICOM files (or folders of them) -> Orthanc ids
        orthanc.url                    # http://127.0.0.1:PORT (Orthanc's REST API)
        orthanc.dicomweb               # http://127.0.0.1:PORT/dicom-web (--studies for the app)

Orthanc runs with its own configuration JSON and storage in a pytest temporary folder, on
a free port, with no authentication and no DICOM (DIMSE) listener; it is stopped at the
end of the session. Tests skip, saying why, where the Debian packages are not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.server import free_port, stop_process_group

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

needs_orthanc = pytest.mark.skipif(
    not (os.access(ORTHANC_BINARY, os.X_OK) and DICOMWEB_PLUGIN.exists()),
    reason="Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc, orthanc-dicomweb: "
           "run `bash setup.sh --tests` as root)",
)


class RunningOrthanc:
    def __init__(self, folder: Path, timeout: float = 60.0):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        config = {
            "Name": "medsam2-tests",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.log_path = folder / "orthanc.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([ORTHANC_BINARY, str(config_path)], stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/dicom-web/studies")
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer within {timeout} s:\n{self.log()[-3000:]}")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def upload(self, paths) -> list:
        """Store DICOM files, or every file under given folders; returns Orthanc's instance ids."""
        files = []
        for path in paths if isinstance(paths, (list, tuple)) else [paths]:
            path = Path(path)
            files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        ids = []
        for file in files:
            request = urllib.request.Request(self.url + "/instances", data=file.read_bytes(), method="POST",
                                             headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(request, timeout=60) as response:
                ids.append(json.loads(response.read())["ID"])
        return ids

    def series_uids(self, modality: str | None = None) -> list:
        """SeriesInstanceUIDs Orthanc holds (QIDO-RS), optionally of one modality."""
        query = f"?Modality={modality}" if modality else ""
        return [entry["0020000E"]["Value"][0] for entry in self.get(f"/dicom-web/series{query}") or []]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log.close()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """An empty Orthanc for this test session (tests upload what they need)."""
    server = RunningOrthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()
