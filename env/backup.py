"""pgBackRest for the local environment, laid out as a production system lays it out: a
dedicated repository host and the database host, each running a pgBackRest TLS server.

- The *repository host* owns the repository (`<run dir>/backup/repo`, standing for blob
  storage) and runs as the services' user. Backups run there (the scheduler's leader starts
  them, `cwh env backup` too) and reach the members through the database host's server.
- The *database host* runs as the PostgreSQL user. Every member's `archive_command` pushes its
  WAL to the repository host's server: whichever member is primary archives, so archiving
  survives failovers with no reconfiguration.

Both servers authenticate each other with certificates from the environment's CA (the client's
common name must be the other side's). pgBackRest checks a server's name, not its address: each
server's certificate names `localhost` and its replica's name, which Docker's DNS resolves on
the containers runtime's network. So each side has two configs, equal on the local runtime: the
one its replicas use (the other side by replica name in containers) and the one commands run
from the host use (`*-host.conf`: the other side at `localhost`, through its published port).
Pure: renders configs and command lines, runs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from env import network
from env.layout import Layout
from env.settings import EnvSettings
from reference_impl.backups import stanza_info

#: The stanza: pgBackRest's name for the cluster it backs up.
STANZA = "cloudwatcher"
#: Certificate common names; each server accepts the other's for the stanza.
REPO_CN = "pgbackrest-repo"
PG_CN = "pgbackrest-pg"
#: The host name both servers' certificates carry for clients on the same host (pgBackRest
#: checks names, not IP addresses); the replicas' names are the others (`server_names`).
HOST = "localhost"
#: The database user pgBackRest connects as, over the members' sockets (trusted locally). Named:
#: its default, the OS user's name, is another name in a container whose /etc/passwd maps the
#: PostgreSQL user's uid to another account (seen: "etcd").
DB_USER = "postgres"
#: The two servers' replicas (`env/topology.py`): their names on the containers' network.
REPO_REPLICA, PG_REPLICA = "backup-repo", "backup-pg"


def server_names(cn: str) -> tuple[str, ...]:
    """The DNS names the server certificate of `cn` carries."""
    return (HOST, REPO_REPLICA if cn == REPO_CN else PG_REPLICA)


def _peer(settings: EnvSettings, replica: str, from_host: bool) -> str:
    """Where a client reaches the server of `replica`: loopback from the host and on the local
    runtime, the replica's name between containers."""
    return replica if network.containers(settings) and not from_host else HOST


def repo_config_path(layout: Layout, from_host: bool = False) -> Path:
    return layout.backup_dir / ("pgbackrest-host.conf" if from_host else "pgbackrest.conf")


def pg_config_path(layout: Layout, from_host: bool = False) -> Path:
    return layout.backup_pg_dir / ("pgbackrest-host.conf" if from_host else "pgbackrest.conf")


def _ini(sections: dict[str, dict[str, str]]) -> str:
    out = []
    for name, options in sections.items():
        out.append(f"[{name}]")
        out += [f"{k}={v}" for k, v in options.items()]
        out.append("")
    return "\n".join(out)


def _tls_server(
    settings: EnvSettings, layout: Layout, cn: str, port: int, client_cn: str
) -> dict[str, str]:
    return {
        "tls-server-address": network.bind(settings),
        "tls-server-port": str(port),
        "tls-server-cert-file": str(layout.server_cert(cn)),
        "tls-server-key-file": str(layout.server_key(cn)),
        "tls-server-ca-file": str(layout.ca_cert),
        "tls-server-auth": f"{client_cn}={STANZA}",
    }


def repo_config(settings: EnvSettings, layout: Layout, from_host: bool = False) -> str:
    """The repository host's config: the repository, its retention, and every member reached
    through the database host's server (a backup finds the primary among them). `from_host`:
    for commands run on the host (the database host at `localhost`)."""
    ports, d = settings.ports, layout.backup_dir
    members: dict[str, str] = {}
    for m in range(settings.pg_members):
        i = m + 1
        members |= {
            f"pg{i}-host": _peer(settings, PG_REPLICA, from_host),
            f"pg{i}-host-type": "tls",
            f"pg{i}-host-port": str(ports.backup_pg),
            f"pg{i}-host-cert-file": str(layout.server_cert(REPO_CN)),
            f"pg{i}-host-key-file": str(layout.server_key(REPO_CN)),
            f"pg{i}-host-ca-file": str(layout.ca_cert),
            f"pg{i}-host-config": str(pg_config_path(layout)),
            f"pg{i}-path": str(layout.pg_data(m)),
            f"pg{i}-port": str(ports.postgres(m)),
            f"pg{i}-socket-path": str(layout.pg_member(m)),
            f"pg{i}-user": DB_USER,
        }
    return _ini(
        {
            "global": {
                "repo1-path": str(layout.backup_repo),
                # Time-based: a full backup (with its differentials and WAL) is expired once a
                # newer full is older than this many days; there is always one full to restore.
                "repo1-retention-full-type": "time",
                "repo1-retention-full": str(settings.backup_retention_days),
                "compress-type": "lz4",
                # A checkpoint at once: a backup starts now, not at the next timed checkpoint.
                "start-fast": "y",
                "log-path": str(d / "log"),
                "lock-path": str(d / "lock"),
                "log-level-console": "warn",
                "log-level-file": "info",
                **_tls_server(settings, layout, REPO_CN, ports.backup_repo, PG_CN),
            },
            STANZA: members,
        }
    )


def pg_config(settings: EnvSettings, layout: Layout, from_host: bool = False) -> str:
    """The database host's config: the repository through the repository host's server.
    `pg1-path` is member 0's; each member's archive command names its own (`archive_command`).
    `from_host`: for commands run on the host (the repository host at `localhost`)."""
    ports, d = settings.ports, layout.backup_pg_dir
    return _ini(
        {
            "global": {
                "repo1-host": _peer(settings, REPO_REPLICA, from_host),
                "repo1-host-type": "tls",
                "repo1-host-port": str(ports.backup_repo),
                "repo1-host-cert-file": str(layout.server_cert(PG_CN)),
                "repo1-host-key-file": str(layout.server_key(PG_CN)),
                "repo1-host-ca-file": str(layout.ca_cert),
                "repo1-host-config": str(repo_config_path(layout)),
                # An unreachable repository host fails a push after two of these (the default,
                # 60 s, held the archiver 2 minutes per attempt): PostgreSQL retries at once,
                # and the failure shows in pg_stat_archiver while it lasts.
                "io-timeout": "15",
                "compress-type": "lz4",
                "log-path": str(d / "log"),
                "lock-path": str(d / "lock"),
                "spool-path": str(d / "spool"),
                "log-level-console": "warn",
                "log-level-file": "info",
                **_tls_server(settings, layout, PG_CN, ports.backup_pg, REPO_CN),
            },
            STANZA: {
                "pg1-path": str(layout.pg_data(0)),
                "pg1-port": str(ports.postgres(0)),
                "pg1-socket-path": str(layout.pg_member(0)),
                "pg1-user": DB_USER,
            },
        }
    )


def archive_command(layout: Layout, member: int) -> str:
    """Member `member`'s `archive_command`: push the segment to the repository (any member
    may be primary; a replica with `archive_mode = on` archives nothing)."""
    return (
        f"pgbackrest --config={pg_config_path(layout)} --stanza={STANZA} "
        f"--pg1-path={layout.pg_data(member)} archive-push %p"
    )


def repo_command(layout: Layout, *args: str) -> list[str]:
    """A pgBackRest command line run from the host on the repository (`backup`, `info`, `check`,
    `stanza-create`, `expire`), as its user."""
    config = repo_config_path(layout, from_host=True)
    return ["pgbackrest", f"--config={config}", f"--stanza={STANZA}", *args]


def server_command(config: Path) -> list[str]:
    """One side's TLS server."""
    return ["pgbackrest", f"--config={config}", "server"]


def ping_command(port: int) -> list[str]:
    """Exit 0 when a pgBackRest server answers on `port` (no certificate needed to ping)."""
    return [
        "pgbackrest",
        "--config=/dev/null",
        "server-ping",
        "--tls-server-address=127.0.0.1",
        f"--tls-server-port={port}",
    ]


def listing(info: Any) -> list[dict[str, Any]]:
    """`pgbackrest info --output=json`'s backups, oldest first, in the fields people read."""
    out = []
    for b in stanza_info(info).get("backup", []):
        out.append(
            {
                "label": b["label"],
                "type": b["type"],
                "start": b["timestamp"]["start"],
                "stop": b["timestamp"]["stop"],
                "bytes": b["info"]["size"],
                "repo_bytes": b["info"]["repository"]["size"],
                "wal_start": (b.get("archive") or {}).get("start"),
                "wal_stop": (b.get("archive") or {}).get("stop"),
                "prior": b.get("prior"),
                "error": bool(b.get("error")),
            }
        )
    return sorted(out, key=lambda b: b["stop"])


def archive_get_command(layout: Layout, member: int) -> str:
    """The `restore_command` of restored member `member`: WAL from the repository, through the
    repository host's server. It names the member's own data directory: pgBackRest checks the
    segment against the cluster there, and the config's `pg1-path` is member 0's, which may be
    empty while another member restores (seen: recovery found no checkpoint, three times)."""
    return (
        f"pgbackrest --config={pg_config_path(layout)} --stanza={STANZA} "
        f'--pg1-path={layout.pg_data(member)} archive-get %f "%p"'
    )


def restore_bootstrap(
    layout: Layout, member: int, backup_set: str = "", target_xid: str = ""
) -> dict[str, Any]:
    """Patroni's custom bootstrap method that restores the cluster from the repository: the
    first member to take the initialize key runs `pgbackrest restore` into its empty data
    directory, starts PostgreSQL with these recovery settings (WAL from the archive, to its end
    or to `target_xid`, excluded), and promotes it at the end of recovery.

    `backup_set`: the backup to restore ("" for the newest); a point-in-time restore names one
    that ended before its target (a newer one would start past it)."""
    command = [
        "pgbackrest",
        f"--config={pg_config_path(layout)}",
        f"--stanza={STANZA}",
        f"--pg1-path={layout.pg_data(member)}",
        "--log-level-console=info",
        *([f"--set={backup_set}"] if backup_set else []),
        "restore",
    ]
    recovery: dict[str, str] = {
        "restore_command": archive_get_command(layout, member),
        "recovery_target_timeline": "latest",
        "recovery_target_action": "promote",
    }
    if target_xid:
        # Stop just before the mistaken transaction commits: every commit before it is kept.
        recovery |= {"recovery_target_xid": target_xid, "recovery_target_inclusive": "off"}
    return {
        "command": " ".join(command),
        "no_params": True,
        # Patroni's recovery settings, not pgBackRest's (which it drops from the restored
        # postgresql.auto.conf): one place says how the restore recovers.
        "keep_existing_recovery_conf": False,
        "recovery_conf": recovery,
    }


def scratch_restore_command(layout: Layout, scratch: Path) -> list[str]:
    """Restore the newest backup into `scratch` to read, not to serve: the instance started
    there replays the archive and must never push WAL into the repository (archiving off)."""
    return [
        "pgbackrest",
        f"--config={pg_config_path(layout, from_host=True)}",
        f"--stanza={STANZA}",
        f"--pg1-path={scratch}",
        "--archive-mode=off",
        "--log-level-console=warn",
        "restore",
    ]


def scratch_settings(port: int, socket_dir: Path) -> str:
    """`postgresql.auto.conf` lines for the scratch instance (they override the restored
    member's config): its own port and socket, no archiving, no synchronous standby to wait
    for, nothing over the network but loopback."""
    return (
        f"port = {port}\n"
        "listen_addresses = '127.0.0.1'\n"
        f"unix_socket_directories = '{socket_dir}'\n"
        "archive_mode = 'off'\n"
        "synchronous_standby_names = ''\n"
    )
