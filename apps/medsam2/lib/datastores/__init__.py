"""Where studies and labels live: the studies folder (``local.py``, its records shared by replicas
in ``records.py``) or a PACS over DICOMweb (``dicomweb.py``: labels written as DICOM SEG by
``dicom_seg.py`` and read back by ``pacs_labels.py``). Both take a label upload through the same
checks: ``upload_checks.py`` (decoded whole within limits) and ``saved_structures.py`` (a label
as its structures, and a saved one read back so)."""
