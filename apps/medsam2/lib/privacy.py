"""Patient identifiers never reach the server's log.

MONAI Label logs whole requests and datastore records, and a DICOMweb datastore's records
carry DICOM attributes. A filter on every log handler replaces the values of the patient's
name, id and birth date (by keyword, as in ``{'PatientName': 'Doe^Jane'}``, and by tag, as
DICOM JSON writes them: ``"00100010": {"vr": "PN", "Value": [...]}``) with ``<redacted>``.
"""

from __future__ import annotations

import logging
import re

REDACTED = "<redacted>"
KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
            "PatientAddress", "PatientTelephoneNumbers")
TAGS = ("00100010", "00100020", "00100030", "00100032", "00101000", "00101040", "00102154")

# 'PatientName': 'Doe^Jane' / "PatientID": "123" / PatientID=123 (quoted or bare values)
_BY_KEYWORD = re.compile(r"""(?P<key>["']?(?:%s)["']?\s*[:=]\s*)(?P<value>"[^"]*"|'[^']*'|[^\s,;}\])]+)"""
                         % "|".join(KEYWORDS))
# "00100010": {"vr": "PN", "Value": [...]}  (DICOM JSON), the value list up to its closing bracket
_BY_TAG = re.compile(r"""(?P<key>["']?(?:%s)["']?\s*:\s*\{[^{}]*?["']Value["']\s*:\s*)\[[^\]]*\]"""
                     % "|".join(TAGS))


def redact(text: str) -> str:
    text = _BY_TAG.sub(lambda m: f"{m.group('key')}[\"{REDACTED}\"]", text)
    return _BY_KEYWORD.sub(lambda m: f"{m.group('key')}{_quoted_like(m.group('value'))}", text)


def _quoted_like(value: str) -> str:
    return f"{value[0]}{REDACTED}{value[0]}" if value[:1] in ("'", '"') else REDACTED


class RedactPatientIdentifiers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the logger's problem, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def install() -> None:
    """Add the filter to every handler the logging set-up has (MONAI Label's and uvicorn's)."""
    handlers = list(logging.getLogger().handlers)
    for name in list(logging.root.manager.loggerDict):
        handlers += getattr(logging.getLogger(name), "handlers", [])
    for handler in handlers:
        if not any(isinstance(f, RedactPatientIdentifiers) for f in handler.filters):
            handler.addFilter(RedactPatientIdentifiers())
