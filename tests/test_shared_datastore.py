"""Two processes saving labels into one studies folder lose no record (replicas on a shared folder)."""

from __future__ import annotations

from tests.support.datastore_race import race


def test_two_processes_saving_concurrently_lose_no_record(tmp_path):
    result = race(tmp_path / "studies", processes=2, per_process=8)
    assert result["recorded"] == result["expected"] == 16
    # the records are the saves' own (with their info), not ones rebuilt from the label files
    assert result["with_info"] == 16


def test_a_record_written_by_another_process_is_read_at_once(tmp_path):
    from tests.support.datastore_race import _label_file, _open, write_studies

    folder = tmp_path / "studies"
    write_studies(folder, 2)
    first, second = _open(str(folder), "safe"), _open(str(folder), "safe")
    second.save_label("study_001", _label_file(str(folder), "study_001", str(tmp_path)), "final",
                      {"by": "second"})
    assert first.get_label_info("study_001", "final")["by"] == "second"  # no restart, no watcher needed
    version = first.get_label_info("study_001", "final")["version"]
    first.update_label_info("study_001", "final", {"checked": True})
    assert second.get_label_info("study_001", "final")["checked"] is True
    assert second.get_label_info("study_001", "final")["version"] == version
