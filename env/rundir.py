"""Preparing a run directory: every config, key and secret a local environment's components
read, written before the first of them starts (`prepare`), with the owners and modes each needs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from env import backup, configs, network, region
from env.files import ensure_run_dir, write_file
from env.layout import Layout
from env.process import chown_tree
from env.secrets import Secrets, ensure_environment_tls
from env.settings import EnvSettings
from env.users import RunAs
from reference_impl.corpus import ensure_corpus
from reference_impl.keys import ensure_keys


def exporter_queries(layout: Layout) -> Path:
    """postgres-exporter's extra queries, in the run directory: the exporter's user may not read
    the project's folder."""
    return layout.run_dir / "exporters" / "postgres_queries.yaml"


def haproxy_user_section(run_as: RunAs) -> str:
    """HAProxy's `global` additions that make its workers drop root (none when not root)."""
    if run_as.service is None:
        return ""
    return f"""
# Workers drop root once the key is read and the ports are bound (the master keeps it to reload).
# Numeric ids: a container of the image has no such user (`cwh-run` creates it only for the
# process it runs as).
global
    uid {run_as.service[0]}
    gid {run_as.service[1]}
"""


def _prepare_backups(
    settings: EnvSettings, lay: Layout, pg: tuple[int, int] | None, repo: tuple[int, int] | None
) -> None:
    """Both pgBackRest hosts' folders and configs (no secret in them: the certificates are the
    credentials). The repository host is the services' user's, as the scheduler that starts
    backups is; the database host is PostgreSQL's, as the archive command it serves is."""
    for d in ("log", "lock", "spool"):
        (lay.backup_pg_dir / d).mkdir(parents=True, exist_ok=True)
    for d in ("log", "lock", "repo"):
        (lay.backup_dir / d).mkdir(parents=True, exist_ok=True)
    os.chmod(lay.backup_repo, 0o750)
    # Each side's config for its replicas, and one for commands run from the host.
    for from_host in (False, True):
        text = backup.pg_config(settings, lay, from_host)
        write_file(backup.pg_config_path(lay, from_host), text, mode=0o644, owner=pg)
        text = backup.repo_config(settings, lay, from_host)
        write_file(backup.repo_config_path(lay, from_host), text, mode=0o644, owner=repo)
    chown_tree(lay.backup_dir, repo)


def prepare(settings: EnvSettings, run_as: RunAs, pg_ids: tuple[int, int] | None) -> Secrets:
    """Check the run directory, then write every config, key and secret into it.

    Each file holding a secret is created private with its final owner (`write_file`),
    never written and then `chmod`ed; directories go to the user that writes in them.
    """
    lay, pg, svc = Layout(settings.run_dir), pg_ids, run_as.service
    ensure_run_dir(lay.run_dir)
    for d in (lay.logs, lay.haproxy_dir, lay.prometheus_dir):
        d.mkdir(parents=True, exist_ok=True)
    (lay.prometheus_dir / "rules").mkdir(exist_ok=True)
    lay.prometheus_targets.mkdir(exist_ok=True)
    if settings.standby:
        # Before anything is generated: the standby region's passwords, CA and service keys
        # are the primary region's.
        region.adopt_primary_region(settings, lay)
    secrets = Secrets.load_or_create(lay.secrets)
    ensure_environment_tls(lay, pg, svc, run_as.python, settings.backups, network.all_ips(settings))

    # PostgreSQL's side: owned by the PostgreSQL OS user, which refuses to run as root.
    lay.pg_root.mkdir(exist_ok=True)
    os.chmod(lay.pg_root, 0o755)
    for m in range(settings.pg_members):
        lay.pg_member(m).mkdir(mode=0o700, exist_ok=True)
        text = configs.patroni_config(settings, lay, secrets, m)
        write_file(lay.patroni_config(m), text, owner=pg)
    lay.pgbouncer_dir.mkdir(exist_ok=True)
    ini = configs.pgbouncer_config(settings, lay)
    write_file(lay.pgbouncer_dir / "pgbouncer.ini", ini, owner=pg)
    write_file(lay.pgbouncer_dir / "userlist.txt", configs.pgbouncer_userlist(secrets), owner=pg)
    if settings.backups:
        _prepare_backups(settings, lay, pg, run_as.python)
    chown_tree(lay.pg_root, pg)

    # HAProxy reads its config and key as root, then its workers drop to the service user.
    haproxy_cfg = configs.haproxy_config(settings, lay, secrets)
    write_file(lay.haproxy_dir / "haproxy.cfg", haproxy_cfg + haproxy_user_section(run_as))
    if settings.standby:
        lay.global_lb_dir.mkdir(exist_ok=True)
        failed_over = region.failed_over_marker(lay).exists()
        global_cfg = configs.global_lb_config(settings, lay, failed_over)
        global_cfg += haproxy_user_section(run_as)
        write_file(lay.global_lb_dir / "haproxy.cfg", global_cfg)
    for n in range(settings.redis_nodes):
        lay.redis_dir(n).mkdir(parents=True, exist_ok=True)
        # It holds the replication password: the Redis user's alone.
        redis_conf = configs.redis_config(settings, lay, secrets, n)
        write_file(lay.redis_dir(n) / "redis.conf", redis_conf, owner=svc)
        chown_tree(lay.redis_dir(n), svc)
    prometheus_yml = configs.prometheus_config(settings, lay)
    write_file(lay.prometheus_dir / "prometheus.yml", prometheus_yml, mode=0o644)
    (lay.prometheus_dir / "data").mkdir(exist_ok=True)
    chown_tree(lay.prometheus_dir / "data", svc)
    # In the run directory: the exporter's user may not read the project's folder.
    exporter_queries(lay).parent.mkdir(exist_ok=True)
    write_file(exporter_queries(lay), configs.exporter_queries(settings), mode=0o644)
    lay.etcd_data.mkdir(mode=0o700, exist_ok=True)
    chown_tree(lay.etcd_data, svc)
    if settings.fault_proxy:
        lay.fault_proxy_config.parent.mkdir(exist_ok=True)
        proxies = json.dumps(configs.fault_proxies(settings), indent=2)
        write_file(lay.fault_proxy_config, proxies, mode=0o644)
    if settings.services:
        # Keys and corpus of the reference implementation: made here, once, so every
        # replica shares them; never in the repository. The services write backups,
        # archives and traces: theirs.
        ensure_keys(lay.services_dir)
        ensure_corpus(lay.services_dir / "corpus")
        (lay.run_dir / "traces").mkdir(exist_ok=True)
        chown_tree(lay.services_dir, run_as.python)
        chown_tree(lay.run_dir / "traces", run_as.python)
    return secrets
