"""`make bench-api`'s wait for the environment's first backup: done only once pgBackRest lists a
complete backup; a repository without a stanza yet is not done, and not an error."""

from __future__ import annotations

from typing import Any

from bench.api import first_backup_done


class Repo:
    def __init__(self, answer: list[dict[str, Any]] | Exception) -> None:
        self.answer = answer

    def backups(self) -> list[dict[str, Any]]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_the_first_backup_is_done_once_one_is_listed() -> None:
    assert not first_backup_done(Repo(RuntimeError("pgbackrest info: stanza missing")))  # type: ignore[arg-type]
    assert not first_backup_done(Repo([]))  # type: ignore[arg-type]
    assert first_backup_done(Repo([{"label": "20261205-221000F", "type": "full"}]))  # type: ignore[arg-type]
