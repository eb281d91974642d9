"""`cwh`: the one command of the harness. Subcommands wrap the roles (env, load, slo, chaos)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from rich import box
from rich.console import Console
from rich.table import Table

from cwh import signals
from cwh.gate import GateOptions, check
from env.files import UntrustedRunDir
from env.layout import Layout
from env.local import EnvironmentStartError, LocalEnvironment
from env.settings import RUNTIMES, EnvSettings, SettingsError
from env.state import EnvStatus
from slo.definitions import DEFAULT_DIR, DefinitionError
from slo.definitions import load as load_definitions
from slo.reconcile import worst_exit
from slo.rules import render
from slo.sources import Window, parse_time

console = Console(stderr=True)


T = TypeVar("T")


def _settings() -> EnvSettings:
    try:
        return EnvSettings.from_environ()
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


def _runtime(args: argparse.Namespace) -> None:
    """`--runtime` is `CWH_RUNTIME` for this command (and what it starts)."""
    if getattr(args, "runtime", None):
        os.environ["CWH_RUNTIME"] = args.runtime


def env_up(args: argparse.Namespace) -> int:
    _runtime(args)
    settings = _settings()
    with console.status("starting the local environment…") as spinner:

        def progress(event: str, status: dict[str, Any]) -> None:
            if event == "stage" and status.get("stage"):
                spinner.update(f"starting the local environment: [bold]{status['stage']}[/bold]")
                console.log(f"stage {status['stage']}")

        env = LocalEnvironment(settings, progress=progress)
        try:
            env.up(timeout_s=args.timeout)
        except (EnvironmentStartError, UntrustedRunDir) as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
    console.print(f"[green]up[/green]: run directory {settings.run_dir}")
    return _print_status(env, as_json=False)


def env_down(args: argparse.Namespace) -> int:
    _runtime(args)
    settings = _settings()
    env = LocalEnvironment(settings)
    with console.status("stopping the local environment…"):
        swept = env.down()
    if swept:
        console.print(f"stopped {len(swept)} leftover process(es): {swept}")
    console.print("[green]down[/green]")
    return 0


def env_status(args: argparse.Namespace) -> int:
    _runtime(args)
    return _print_status(LocalEnvironment(_settings()), as_json=args.json)


def _print_status(env: LocalEnvironment, as_json: bool) -> int:
    raw = env.status()
    if as_json:  # the JSON as collected, not a re-rendering of what EnvStatus models
        print(json.dumps(raw, indent=2, default=str))
        return 0 if raw["healthy"] else 1
    status = EnvStatus.from_json(raw)
    Console().print(status_table(status))
    for warning in status.warnings:
        Console().print(f"[yellow]warning:[/yellow] {warning}")
    urls = status.urls
    # Terminals and CI logs get recorded: URLs without their passwords (--json has them all).
    for key in ("write", "read", "pgbouncer", "redis", "prometheus", "https"):
        Console().print(f"  {key:10} {without_password(urls[key])}", highlight=False)
    Console().print(f"  {'secrets':10} {status.secrets_file} (passwords, registration_secret)")
    return 0 if status.healthy else 1


def without_password(url: str) -> str:
    """`url` with its password replaced by `***` (user, host and options kept)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def status_table(status: EnvStatus) -> Table:
    """One line per component, in 80 columns (CI logs): ports as numbers (`--json` names
    them), PostgreSQL's pid as patroni/postgres, long roles cut with an ellipsis."""
    table = Table(
        title=f"local environment ({status.phase}, {status.run_dir})",
        box=box.SIMPLE_HEAD,
        padding=(0, 2, 0, 0),
        pad_edge=False,
    )
    table.add_column("component", no_wrap=True, min_width=18)
    table.add_column("role", no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("pid", no_wrap=True, min_width=9)
    table.add_column("ports", no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("health", no_wrap=True)
    table.add_column("lag", no_wrap=True)
    table.add_column("tls", no_wrap=True)
    for c in status.components:
        ports = ",".join(str(v) for v in c.ports.values())
        pid: object = c.pid
        if c.kind == "postgresql":
            pid = f"{c.detail.get('patroni_pid') or '-'}/{c.detail.get('postgres_pid') or '-'}"
        lag = ""
        secs, lag_bytes = c.detail.get("replay_lag_s"), c.detail.get("lag_bytes")
        if secs is not None or lag_bytes is not None:
            lag = f"{lag_bytes or 0}B" + (f" {secs * 1000:.0f}ms" if secs is not None else "")
        health = "[green]ok[/green]" if c.healthy else f"[red]{c.state}[/red]"
        # Data stores: the TLS version a verifying probe negotiated ("off": none).
        tls = ""
        if "tls" in c.detail:
            tls = str(c.detail["tls"]).removeprefix("TLSv") if c.detail["tls"] else "[red]off[/red]"
        table.add_row(c.name, c.role, str(pid or "-"), ports, health, lag, tls)
    return table


def env_hold(args: argparse.Namespace) -> int:
    print(json.dumps(LocalEnvironment(_settings()).hold(args.component, args.seconds)))
    return 0


def _attempt(doing: str, call: Callable[[], T], errors: tuple[type[Exception], ...]) -> T | None:
    """`call()` under a live status line; None, with the reason printed, when it raises one of
    `errors` (the supervisor's 4xx carries its JSON reason)."""
    try:
        with console.status(doing):
            return call()
    except errors as exc:
        console.print(f"[red]error:[/red] {exc}")
        return None


def env_scale(args: argparse.Namespace) -> int:
    """`cwh env scale api 5`: scale now; prints what was added, removed or refused."""
    env = LocalEnvironment(_settings())
    result = _attempt(
        f"scaling {args.workload} to {args.replicas}",
        lambda: env.scale(args.workload, args.replicas),
        (RuntimeError,),
    )
    if result is None:
        return 2
    print(json.dumps(result))
    return 1 if result["refused"] else 0


def env_rollout(args: argparse.Namespace) -> int:
    """`cwh env rollout api`: every replica replaced, one by one, none unavailable."""
    env = LocalEnvironment(_settings())
    result = _attempt(
        f"rolling out {args.workload}",
        lambda: env.rollout(args.workload),
        (RuntimeError, KeyError),
    )
    if result is None:
        return 2
    print(json.dumps(result))
    return 1 if result["refused"] else 0


def env_autoscale(args: argparse.Namespace) -> int:
    print(json.dumps(LocalEnvironment(_settings()).autoscale(args.state == "on")))
    return 0


def env_workloads(args: argparse.Namespace) -> int:
    print(json.dumps(LocalEnvironment(_settings()).workloads(), indent=2))
    return 0


def env_release(args: argparse.Namespace) -> int:
    print(json.dumps(LocalEnvironment(_settings()).release(args.component)))
    return 0


def env_backup(args: argparse.Namespace) -> int:
    """`cwh env backup [--type full|diff|incr]`: a backup now, into the repository."""
    env = LocalEnvironment(_settings())
    taken = _attempt(
        f"taking a {args.type} backup", lambda: env.backup(args.type), (RuntimeError, ValueError)
    )
    if taken is None:
        return 1
    print(json.dumps(taken))
    return 0


def env_backups(args: argparse.Namespace) -> int:
    """`cwh env backups`: the repository's backups with times, sizes and WAL range."""
    try:
        found = LocalEnvironment(_settings()).backups()
    except (RuntimeError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    table = Table(title=f"backups ({len(found)})", box=box.SIMPLE)
    for col in ("label", "type", "finished (UTC)", "took s", "size MB", "in repo MB", "WAL"):
        table.add_column(col)
    for b in found:
        table.add_row(
            b["label"],
            b["type"],
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(b["stop"])),
            str(b["stop"] - b["start"]),
            f"{b['bytes'] / 1e6:.1f}",
            f"{b['repo_bytes'] / 1e6:.1f}",
            f"{b['wal_start']} .. {b['wal_stop']}",
        )
    console.print(table)
    return 0


def env_restore(args: argparse.Namespace) -> int:
    """`cwh env restore [--xid X --before EPOCH]`: replace the PostgreSQL cluster with one
    restored from the repository (to the end of the archive, or to just before transaction X
    committed); prints the steps' times as JSON. Destroys whatever the members hold now."""
    import psycopg

    from env.process import DeadlineExceeded
    from env.restore import restore_cluster

    if bool(args.xid) != (args.before is not None):
        console.print("[red]error:[/red] --xid and --before go together (the mistake and its time)")
        return 2
    env = LocalEnvironment(_settings())
    with console.status("restoring the cluster") as status:
        try:
            done = restore_cluster(
                env,
                target_xid=args.xid,
                before_wall=args.before,
                progress=lambda step: status.update(f"restoring the cluster: {step}"),
            )
        except (RuntimeError, ValueError, DeadlineExceeded, psycopg.Error) as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
    print(json.dumps(done))
    return 0


def env_verify_backup(args: argparse.Namespace) -> int:
    """`cwh env verify-backup`: the weekly drill (pgbackrest verify, then the newest backup
    restored into a scratch instance and compared with the live cluster); exit 1 when it
    found something wrong."""
    import psycopg

    from env.process import DeadlineExceeded
    from env.restore import verify_backup

    env = LocalEnvironment(_settings())
    result = _attempt(
        "verifying the backups and restoring the newest into a scratch instance",
        lambda: verify_backup(env),
        (RuntimeError, DeadlineExceeded, psycopg.Error),
    )
    if result is None:
        return 2
    print(json.dumps(result))
    return 1 if result["wrong"] else 0


def env_promote(args: argparse.Namespace) -> int:
    """`cwh env promote`: a standby region's database becomes the primary (region failover);
    prints the new leader, its timeline and how long it took."""
    from env.region import RegionError

    env = LocalEnvironment(_settings())
    done = _attempt(
        "promoting the standby region", env.promote, (RegionError, ConnectionError, OSError)
    )
    if done is None:
        return 1
    print(json.dumps(done))
    return 0


def env_rotate_keys(args: argparse.Namespace) -> int:
    from env.process import DeadlineExceeded
    from env.rotation import retire_old_keys, rotate_keys

    settings = _settings()
    try:
        if args.retire_now:
            result = retire_old_keys(settings)
        else:
            result = rotate_keys(settings, args.retire_after_s, progress=console.log)
    except (DeadlineExceeded, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    print(json.dumps(result))
    return 0


def load(args: argparse.Namespace) -> int:
    from cwh.fleet import FleetOptions, run_fleet

    target, ca_file = args.target, args.ca_file
    opts = FleetOptions(
        target=target.rstrip("/") or "https://local",
        users=args.users,
        duration_s=args.duration,
        spawn_rate=args.spawn_rate,
        shape=args.shape,
        workers=args.workers,
        mix=args.mix,
        ca_file=ca_file,
        registration_secret=args.registration_secret,
        arrival_rate=args.arrival_rate,
        prometheus_url=args.prometheus.rstrip("/"),
        settle_s=args.settle_s,
        role="master" if args.master else "worker" if args.worker else "local",
        master_host=args.master_host,
        master_port=args.master_port,
        master_bind_host=args.master_bind_host,
    )
    if problems := opts.problems():  # before anything starts
        for problem in problems:
            console.print(f"[red]error:[/red] {problem}")
        return 2
    if opts.role == "worker":
        from cwh.fleet import run_worker

        return run_worker(opts, console, Path(args.out) if args.out else None)
    if not target:  # the local environment: bring it up if it is not
        env = LocalEnvironment(_settings())
        with console.status("bringing the local environment up…"):
            try:
                env.up()
            except EnvironmentStartError as exc:
                console.print(f"[red]error:[/red] {exc}")
                return 1
        status = env.state()
        target, ca_file = status.urls["https"], status.tls_certificate
        # Registration needs the environment's secret unless one was given.
        secret = opts.registration_secret or status.registration_secret or ""
        opts = dataclasses.replace(opts, registration_secret=secret)
    opts = dataclasses.replace(opts, target=target.rstrip("/"), ca_file=ca_file)
    run_code, out, summary = run_fleet(opts, console, out=Path(args.out) if args.out else None)
    prometheus = opts.prometheus_url or ("" if args.target else _local_prometheus())
    if prometheus:
        from cwh.fleet import add_replicas

        add_replicas(out, prometheus, console)
    console.print((out / "summary.md").read_text())
    if summary.get("interrupted"):
        console.print(f"[yellow]interrupted[/yellow]: what ran is reconciled in {out}; no gate")
        return 130
    if summary["locust_exit_code"] != 0 or not summary["operations"]:
        console.print(f"[red]the load run itself failed[/red]; report: {out}")
        return 1
    if args.no_gate:
        return run_code  # the reconciliation's verdict: 1 lost or duplicated, 2 unknowns left
    # The gate decides (lost and duplicated requests are among its key objectives); a run with
    # unknowns left is never a pass, whatever definitions the gate was given.
    gate_code = check(
        GateOptions(run=out, prometheus_url=prometheus, definitions=Path(args.definitions)),
        console,
    )
    from cwh.report import try_write_html

    try_write_html(out, prometheus, console)
    console.print(f"report: {out}")
    return worst_exit(gate_code, run_code)


def _local_prometheus() -> str:
    return f"http://127.0.0.1:{_settings().ports.prometheus}"


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    from cwh.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def slo_check(args: argparse.Namespace) -> int:
    window = None
    if args.start or args.end:
        if not (args.start and args.end) or args.end <= args.start:
            console.print("[red]error:[/red] --from and --to go together, --from before --to")
            return 2
        window = Window(args.start, args.end)
    run = Path(args.run).resolve() if args.run else None
    if run is None and window is None:
        run = Path("reports/latest").resolve()
    if run is not None and not (run / "summary.json").exists():
        console.print(f"[red]error:[/red] {run} is not a run folder (no summary.json)")
        return 2
    prometheus = args.prometheus or os.environ.get("PROMETHEUS_URL") or _local_prometheus()
    opts = GateOptions(
        run=run,
        window=window,
        prometheus_url=prometheus.rstrip("/"),
        definitions=Path(args.definitions),
        baseline=Path(args.baseline) if args.baseline else None,
        out=Path(args.out) if args.out else None,
        on_inconclusive=args.on_inconclusive,
    )
    return check(opts, console)


def slo_rules(args: argparse.Namespace) -> int:
    try:
        text = render(load_definitions(Path(args.definitions)))
    except DefinitionError as exc:
        console.print(f"[red]error:[/red] SLO definition: {exc}")
        return 2
    if args.install:  # into the local environment's Prometheus, which loads rules/*.yml
        settings = _settings()
        target = Layout(settings.run_dir).prometheus_dir / "rules" / "slo.yml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        try:
            LocalEnvironment(settings).reload_prometheus()
        except (requests.RequestException, RuntimeError, KeyError, TimeoutError) as exc:
            console.print(f"[red]error:[/red] wrote {target}, but Prometheus did not reload: {exc}")
            return 2
        console.print(f"installed {target} and reloaded Prometheus")
    elif args.output == "-":
        print(text, end="")
    else:
        Path(args.output).write_text(text)
        console.print(f"wrote {args.output}")
    return 0


def report_html(args: argparse.Namespace) -> int:
    from cwh.report import NotARunFolder, screenshot, write_html
    from cwh.report.browser import BrowserError

    folder = Path(args.run)
    prometheus = args.prometheus or os.environ.get("PROMETHEUS_URL", "")
    try:
        path = write_html(folder, prometheus.rstrip("/"))
    except NotARunFolder as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    print(path)
    if args.screenshot:
        try:
            print(screenshot(path))
        except BrowserError as exc:
            console.print(f"[red]error:[/red] screenshot: {exc}")
            return 1
    return 0


def report_index(args: argparse.Namespace) -> int:
    from cwh.report.index import entries, write_index

    reports = Path(args.reports)
    if not reports.is_dir():
        console.print(f"[red]error:[/red] {reports} is not a folder")
        return 2
    path = write_index(reports)
    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in entries(reports)], indent=2))
    else:
        print(path)
    return 0


def report_compare(args: argparse.Namespace) -> int:
    from cwh.report import kind_of
    from cwh.report.compare import compare, read_figures, text_table

    runs = [Path(args.run_a), Path(args.run_b)]
    for run in runs:
        try:
            kind_of(run)
        except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 2
    a, b = (read_figures(r) for r in runs)
    changes = compare(a, b)
    if args.json:
        print(json.dumps([c.to_json() for c in changes], indent=2))
    else:
        print(text_table(changes, str(runs[0]), str(runs[1])))
    return 1 if any(c.regression for c in changes) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cwh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    env = sub.add_parser("env", help="the local environment: up, status, down")
    env_sub = env.add_subparsers(dest="env_command", required=True)
    up = env_sub.add_parser("up", help="start everything (idempotent) and wait until ready")
    up.add_argument("--timeout", type=float, default=240.0, help="seconds to wait (scaled)")
    up.set_defaults(func=env_up)
    down = env_sub.add_parser("down", help="stop everything; leaves no process or container")
    down.set_defaults(func=env_down)
    st = env_sub.add_parser("status", help="roles, pids, ports, health, lag")
    for p in (up, down, st):
        p.add_argument(
            "--runtime",
            choices=RUNTIMES,
            help="what runs the replicas (default: $CWH_RUNTIME, else local)",
        )
    st.add_argument("--json", action="store_true", help="machine-readable, with URLs")
    st.set_defaults(func=env_status)
    hold = env_sub.add_parser("hold", help="keep a component from being restarted")
    hold.add_argument("component")
    hold.add_argument("--seconds", type=float, default=300.0)
    hold.set_defaults(func=env_hold)
    rel = env_sub.add_parser("release", help="let a held component restart")
    rel.add_argument("component")
    rel.set_defaults(func=env_release)
    sc = env_sub.add_parser(
        "scale",
        help="scale a workload now (api, hub, worker, scheduler): ready before joining, "
        "drained before leaving, the disruption budget kept",
    )
    sc.add_argument("workload")
    sc.add_argument("replicas", type=int)
    sc.set_defaults(func=env_scale)
    ro = env_sub.add_parser(
        "rollout", help="replace every replica of a workload, one by one (surge 1, unavailable 0)"
    )
    ro.add_argument("workload")
    ro.set_defaults(func=env_rollout)
    au = env_sub.add_parser("autoscale", help="switch the local autoscaler (the HPA loop)")
    au.add_argument("state", choices=("on", "off"))
    au.set_defaults(func=env_autoscale)
    env_sub.add_parser(
        "workloads", help="replicas, bounds, budgets and the autoscaler's last decisions (JSON)"
    ).set_defaults(func=env_workloads)
    bk = env_sub.add_parser("backup", help="a pgBackRest backup now, into the repository")
    bk.add_argument("--type", choices=("full", "diff", "incr"), default="full")
    bk.set_defaults(func=env_backup)
    bl = env_sub.add_parser("backups", help="the repository's backups: times, sizes, WAL range")
    bl.add_argument("--json", action="store_true", help="as JSON")
    bl.set_defaults(func=env_backups)
    rs = env_sub.add_parser(
        "restore",
        help="replace the PostgreSQL cluster with one restored from the backup repository",
    )
    rs.add_argument("--xid", default="", help="recover to just before this transaction committed")
    rs.add_argument(
        "--before", type=float, help="when that transaction ran (epoch s): picks the backup"
    )
    rs.set_defaults(func=env_restore)
    env_sub.add_parser(
        "verify-backup",
        help="pgbackrest verify, and the newest backup restored into a scratch instance and "
        "compared with the live cluster",
    ).set_defaults(func=env_verify_backup)
    env_sub.add_parser(
        "promote",
        help="a standby region (CWH_STANDBY_OF) takes over: its database is promoted",
    ).set_defaults(func=env_promote)
    rot = env_sub.add_parser(
        "rotate-keys",
        help="a new token signing key, no failed request; the old one retires a token life later",
    )
    rot.add_argument(
        "--retire-after-s",
        type=float,
        default=None,
        help="seconds until the old key stops verifying (default: the longest token lifetime)",
    )
    rot.add_argument(
        "--retire-now",
        action="store_true",
        help="no new key: retire every key but the current one now (a compromised key)",
    )
    rot.set_defaults(func=env_rotate_keys)

    fl = sub.add_parser(
        "load", help="a fleet of phones against the local environment or TARGET, reconciled"
    )
    fl.add_argument(
        "--target",
        default=os.environ.get("TARGET", ""),
        help="API base URL (default: the local environment, brought up)",
    )
    fl.add_argument(
        "--ca-file",
        default=os.environ.get("CA_FILE", ""),
        help="certificate to trust for --target (default: the system's)",
    )
    fl.add_argument(
        "--registration-secret",
        default=os.environ.get("REGISTRATION_SECRET", ""),
        help="X-Registration-Secret (default with no --target: the local environment's own)",
    )
    fl.add_argument("--users", type=int, default=20)
    fl.add_argument(
        "--duration", type=_duration, default=60.0, help="like 90s, 10m, 1h30m, or seconds"
    )
    fl.add_argument("--spawn-rate", type=float, default=10.0)
    fl.add_argument("--shape", default="steady")
    fl.add_argument(
        "--workers",
        "--expect-workers",
        dest="workers",
        type=int,
        default=1,
        help="Locust worker processes: here, or (--master, --worker) the fleet's, started apart",
    )
    fl.add_argument("--mix", default="ios=60,android=40")
    fl.add_argument(
        "--arrival-rate",
        type=float,
        default=0.0,
        help="sessions/s, open model (latency from the intended start); 0: closed model",
    )
    fl.add_argument(
        "--prometheus",
        default=os.environ.get("PROMETHEUS_URL", ""),
        help="the target's Prometheus, for the SLO gate (default: the local environment's)",
    )
    fl.add_argument(
        "--settle-s",
        type=float,
        default=60.0,
        help="seconds to read back acknowledged requests after the run; unanswered: unknown",
    )
    role = fl.add_mutually_exclusive_group()
    role.add_argument(
        "--master",
        action="store_true",
        help="Locust's master for workers on other hosts (--workers of them, started with "
        "--worker); it collects their records, reconciles and gates",
    )
    role.add_argument(
        "--worker",
        action="store_true",
        help="phones only, for the master at --master-host; records go to it as messages",
    )
    fl.add_argument("--master-host", default="", help="--worker: the master's address")
    fl.add_argument("--master-port", type=int, default=5557, help="the master's worker port")
    fl.add_argument(
        "--master-bind-host",
        default="0.0.0.0",
        help="--master: the address workers reach it on (default: every interface)",
    )
    fl.add_argument("--definitions", default=str(DEFAULT_DIR), help="SLO definitions for the gate")
    fl.add_argument(
        "--out",
        help="write into this folder (default: reports/<UTC>-load, latest; a worker's phones "
        "keep their own state in reports/<UTC>-load-worker)",
    )
    fl.add_argument("--no-gate", action="store_true", help="reconcile, but run no SLO gate")
    fl.set_defaults(func=load)

    slo = sub.add_parser("slo", help="the SLO gate and the Prometheus rules from the same SLOs")
    slo_sub = slo.add_subparsers(dest="slo_command", required=True)
    ck = slo_sub.add_parser(
        "check", help="verdicts for a run or a window; exit 0 pass, 1 fail, 2 error/inconclusive"
    )
    ck.add_argument("--run", help="a run folder (default: reports/latest unless --from/--to)")
    ck.add_argument("--from", dest="start", type=_time, help="RFC 3339 start of the window")
    ck.add_argument("--to", dest="end", type=_time, help="RFC 3339 end of the window")
    ck.add_argument("--prometheus", help="URL (default: PROMETHEUS_URL, else the local one)")
    ck.add_argument("--definitions", default=str(DEFAULT_DIR), help="a file or a folder")
    ck.add_argument("--baseline", help="a previous run folder with slo.json, to compare with")
    ck.add_argument("--out", help="where the outputs go (default: the run folder)")
    ck.add_argument(
        "--on-inconclusive", type=int, default=2, choices=(0, 1, 2), help="exit code (default 2)"
    )
    ck.set_defaults(func=slo_check)
    rl = slo_sub.add_parser("rules", help="recording and burn-rate alert rules for Prometheus")
    rl.add_argument("--definitions", default=str(DEFAULT_DIR))
    rl.add_argument("--output", default="-", help="a file, or - for standard output")
    rl.add_argument(
        "--install", action="store_true", help="into the local Prometheus, and reload it"
    )
    rl.set_defaults(func=slo_rules)

    ch = sub.add_parser("chaos", help="chaos experiments with a fleet in the background")
    ch_sub = ch.add_subparsers(dest="chaos_command", required=True)
    cl = ch_sub.add_parser("list", help="the experiments, one line each (standard output)")
    cl.add_argument("--json", action="store_true", help="name, title, summary, tags, path")
    cl.set_defaults(func=chaos_list)
    cr = ch_sub.add_parser("run", help="run one experiment, measure RTO and RPO, gate it")
    cr.add_argument("experiment", help="a name from `cwh chaos list`")
    for p in (cr,):
        p.add_argument("--reports", default="reports", help="where the run folder is made")
        p.add_argument(
            "--users", type=int, default=0, help="fleet size (default: the experiment's)"
        )
        p.add_argument("--fleet-s", type=int, default=0, help="fleet duration in seconds")
        p.add_argument("--no-gate", action="store_true", help="skip the SLO gate")
    cr.set_defaults(func=chaos_run)
    gd = ch_sub.add_parser("gameday", help="several experiments in turn, one report")
    gd.add_argument(
        "experiments", nargs="*", help="names (default: one of each kind, see cwh.chaos.GAMEDAY)"
    )
    gd.add_argument("--plan", help="a game-day plan (YAML: experiments, repeats, jitter, fleet)")
    gd.add_argument("--resume", help="a game day's folder: run the trials it has not run yet")
    gd.add_argument("--users", type=int, default=0)
    gd.add_argument("--fleet-s", type=int, default=0)
    gd.add_argument("--no-gate", action="store_true")
    gd.add_argument("--reports", default="reports")
    gd.set_defaults(func=chaos_gameday)
    cs = ch_sub.add_parser(
        "stop", help="interrupt running experiments (rollbacks play) and restore the system"
    )
    cs.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="a chaos run folder whose fleet to stop and faults to close (repeatable; default: "
        "the running experiments')",
    )
    cs.set_defaults(func=chaos_stop)

    rp = sub.add_parser("report", help="reports of run folders")
    rp_sub = rp.add_subparsers(dest="report_command", required=True)
    rh = rp_sub.add_parser("html", help="write RUN_DIR/report.html (offline, one file)")
    rh.add_argument("run", metavar="RUN_DIR", help="a run folder (load, chaos, game day, bench)")
    rh.add_argument(
        "--prometheus",
        help="for the timelines that come from it (default: PROMETHEUS_URL, else the one the "
        "run's gate used; answers saved in prometheus.json are reused)",
    )
    rh.add_argument(
        "--screenshot", action="store_true", help="also report.png, from headless Chromium"
    )
    rh.set_defaults(func=report_html)
    ri = rp_sub.add_parser("index", help="write REPORTS/index.html: every run and its verdict")
    ri.add_argument("reports", nargs="?", default="reports", metavar="REPORTS")
    ri.add_argument("--json", action="store_true", help="also list the runs as JSON on stdout")
    ri.set_defaults(func=report_index)
    rc = rp_sub.add_parser(
        "compare", help="what changed from RUN_A to RUN_B, beyond noise; exit 1 on a regression"
    )
    rc.add_argument("run_a", metavar="RUN_A")
    rc.add_argument("run_b", metavar="RUN_B")
    rc.add_argument("--json", action="store_true", help="every change, machine-readable")
    rc.set_defaults(func=report_compare)
    return parser


def chaos_list(args: argparse.Namespace) -> int:
    from cwh.chaos import list_experiments

    return list_experiments(as_json=args.json)


def _chaos_options(args: argparse.Namespace, name: str) -> Any:
    from cwh.chaos import ChaosOptions

    return ChaosOptions(
        name,
        users=args.users,
        fleet_s=args.fleet_s,
        gate=not args.no_gate,
        reports=Path(args.reports),
    )


def chaos_run(args: argparse.Namespace) -> int:
    from cwh.chaos import run

    code, _ = run(_chaos_options(args, args.experiment), console, _settings())
    return code


def chaos_gameday(args: argparse.Namespace) -> int:
    from cwh.chaos import (
        GAMEDAY,
        KUBE_GAMEDAY,
        DayBusy,
        catalogue,
        gameday,
        new_day,
        runtime_refusal,
    )
    from cwh.gameday import Day, PlanError, load_plan, plan_of_names
    from scenarios.profiles import SHAPE_NAMES

    if sum(map(bool, (args.plan, args.resume, args.experiments))) > 1:
        console.print("[red]error:[/red] one of: experiment names, --plan FILE, --resume FOLDER")
        return 2
    # A plan (or the day being resumed) says the fleet and the gate: flags would be ignored.
    if (args.plan or args.resume) and (args.users or args.fleet_s or args.no_gate):
        console.print(
            "[red]error:[/red] --users, --fleet-s and --no-gate go with experiment names; a "
            "plan says them (fleet: {users, duration}, gate: false)"
        )
        return 2
    settings = _settings()
    cat = catalogue()

    def refuse(name: str) -> str | None:
        exp = cat[name]
        if settings.runtime in exp["runtimes"]:
            return None
        return str(runtime_refusal(name, exp, settings))

    try:
        if args.resume:
            day = Day.load(Path(args.resume).resolve())
            if not day.pending():
                console.print(f"{day.folder}: every trial has run; nothing to resume")
                return 0
        else:
            if args.plan:
                plan = load_plan(Path(args.plan), list(cat), SHAPE_NAMES, refuse)
            else:
                default = KUBE_GAMEDAY if settings.runtime == "kubernetes" else GAMEDAY
                names = args.experiments or default
                if unknown := [n for n in names if n not in cat]:
                    raise PlanError(f"no experiment {', '.join(unknown)} (cwh chaos list)")
                if refused := [r for n in names if (r := refuse(n))]:
                    raise PlanError("; ".join(refused))
                plan = plan_of_names(names, args.users, args.fleet_s, not args.no_gate)
            day = new_day(plan, Path(args.reports))
        return gameday(day, console, settings)
    except (PlanError, DayBusy) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2


def chaos_stop(args: argparse.Namespace) -> int:
    from cwh.chaos import stop

    return stop(_settings(), console, runs=[Path(r).resolve() for r in args.run])


def interruptible() -> None:
    """SIGINT interrupts this command (Python's KeyboardInterrupt), even when it came in ignored.

    A shell without job control starts background commands with SIGINT ignored, and children
    inherit that: a fleet started under `cwh chaos run &` would then ignore the SIGINT with
    which the experiment stops it (and lose its results to the SIGKILL after the grace). Only
    a session leader takes it back: no terminal's Ctrl-C reaches one, so its SIGINT is always
    sent on purpose; a command in the caller's own session keeps the caller's choice."""
    if os.getsid(0) == os.getpid() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    interruptible()
    signals.install()
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
