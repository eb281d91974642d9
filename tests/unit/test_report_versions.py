"""A run's versions are recorded once, as it starts: a report written at its end, or made again
later, names the code that ran, not what was checked out meanwhile."""

from __future__ import annotations

import json
from pathlib import Path

from cwh.report.build import versions
from cwh.report.versions import stamp_versions


def test_versions_are_recorded_once_and_kept(tmp_path: Path) -> None:
    first = stamp_versions(tmp_path)
    assert first["harness"]
    assert first["python"]
    # What a later checkout would say is not what the run recorded: the file is kept.
    recorded = {**first, "harness": "abc1234"}
    (tmp_path / "versions.json").write_text(json.dumps(recorded))
    assert stamp_versions(tmp_path)["harness"] == "abc1234"
    assert dict(versions(tmp_path))["harness"] == "abc1234"


def test_a_damaged_record_is_written_again(tmp_path: Path) -> None:
    (tmp_path / "versions.json").write_text("{not json")
    assert "python" in stamp_versions(tmp_path)
    assert "python" in json.loads((tmp_path / "versions.json").read_text())
