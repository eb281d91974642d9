"""The scheduler's side of the backups: pgBackRest on the repository host, which the leading
scheduler drives as a cron job would (`backup`), and reads (`info`) for the backup SLOs.

The repository host's config (`CW_BACKUP_CONFIG`) says where the repository is and how to reach
the database members; no password is involved (the hosts authenticate with certificates), so
nothing secret is ever on a command line.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from reference_impl.settings import ServiceSettings


@dataclass(frozen=True)
class Backups:
    """What the repository holds (ages in seconds from `now`; None when there is none).

    Attributes:
        kept: backups of every type.
        newest_age_s, oldest_age_s: the newest and oldest backup's end.
        newest_full_age_s: the newest full backup's end (what a differential is taken against).
        wal_max: the newest WAL segment in the archive ("" when none).
    """

    kept: int
    newest_age_s: float | None
    oldest_age_s: float | None
    newest_full_age_s: float | None = None
    wal_max: str = ""


#: pgBackRest's exit code when another command holds the stanza's lock ([050] LockAcquireError).
LOCK_HELD = 50


class Busy(RuntimeError):
    """Another backup runs: the stanza's lock is held."""


def stanza_info(info: Any) -> dict[str, Any]:
    """The stanza's part of `pgbackrest info --output=json` (a list, one item per stanza)."""
    if not isinstance(info, list) or not info or not isinstance(info[0], dict):
        raise ValueError(f"pgbackrest info: expected a list of stanzas, got {info!r:.200}")
    return info[0]


def summarize(info: Any, now: float) -> Backups:
    """The repository's backups and archive, from `pgbackrest info --output=json`."""
    stanza = stanza_info(info)
    done = [b for b in stanza.get("backup", []) if not b.get("error")]
    ends = [float(b["timestamp"]["stop"]) for b in done]
    fulls = [float(b["timestamp"]["stop"]) for b in done if b.get("type") == "full"]
    archives = [a.get("max") or "" for a in stanza.get("archive", [])]

    def age(t: float | None) -> float | None:
        return None if t is None else max(0.0, now - t)

    return Backups(
        len(done),
        age(max(ends, default=None)),
        age(min(ends, default=None)),
        age(max(fulls, default=None)),
        max(archives, default=""),
    )


def type_due(backups: Backups, full_every_s: float) -> str:
    """`full` when there is no full backup or the newest is `full_every_s` old, else `diff`
    (the changes since that full: a restore needs the full and one differential)."""
    full_age = backups.newest_full_age_s
    return "full" if full_age is None or full_age >= full_every_s else "diff"


def command(settings: ServiceSettings, *args: str) -> list[str]:
    return [
        "pgbackrest",
        f"--config={settings.backup_config}",
        f"--stanza={settings.backup_stanza}",
        *args,
    ]


async def run(settings: ServiceSettings, *args: str, timeout_s: float) -> tuple[int, str]:
    """A pgBackRest command's exit code and output; killed (never orphaned) on a timeout or
    when the caller is cancelled."""
    proc = await asyncio.create_subprocess_exec(
        *command(settings, *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        await _stop(proc)
        raise RuntimeError(f"pgbackrest {' '.join(args)} took over {timeout_s:g} s") from None
    except asyncio.CancelledError:
        await _stop(proc)
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM first (pgBackRest then releases its lock and stops its local processes), a kill
    after 10 s."""
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def info(settings: ServiceSettings, timeout_s: float = 30.0) -> Backups | None:
    """The repository's backups now (None when pgBackRest could not tell)."""
    code, out = await run(settings, "info", "--output=json", timeout_s=timeout_s)
    if code != 0:
        return None
    try:
        return summarize(json.loads(out), time.time())
    except (ValueError, KeyError, TypeError):
        return None
