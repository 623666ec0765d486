"""No patient identifier in the log; the log itself readable only from this machine without auth."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI
from fastapi.testclient import TestClient


def test_patient_identifiers_are_redacted_from_log_records(caplog):
    from lib.privacy import RedactPatientIdentifiers

    logger = logging.getLogger("test_privacy")
    handler_filter = RedactPatientIdentifiers()
    caplog.handler.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger="test_privacy"):
            logger.info("Infer Request: %s", {"image": "1.2.3", "PatientName": "Doe^Jane", "PatientID": "MRN-0042"})
            logger.info("qido: %s", json.dumps({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
                                                "00100030": {"vr": "DA", "Value": ["19700101"]},
                                                "0020000E": {"vr": "UI", "Value": ["1.2.3"]}}))
            logger.info("PatientBirthDate=19700101 PatientID=MRN-0042 Modality=CT")
    finally:
        caplog.handler.removeFilter(handler_filter)
    text = caplog.text
    for secret in ("Doe^Jane", "MRN-0042", "19700101"):
        assert secret not in text, text
    assert "1.2.3" in text and "Modality=CT" in text and text.count("<redacted>") == 6


def test_logs_are_readable_only_from_this_machine_without_auth(tmp_path, monkeypatch):
    from monailabel.config import settings

    from lib.http import tasks

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "app.log").write_text("a request's parameters\n")
    monkeypatch.setattr(settings, "MONAI_LABEL_APP_DIR", str(tmp_path))
    app = FastAPI()
    app.add_api_route("/logs/", tasks.logs, methods=["GET"])
    remote = TestClient(app, client=("10.1.2.3", 50000))
    local = TestClient(app, client=("127.0.0.1", 50000))
    assert remote.get("/logs/", params={"text": True}).status_code == 403
    answer = local.get("/logs/", params={"text": True})
    assert answer.status_code == 200 and "a request's parameters" in answer.text
