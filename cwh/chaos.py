"""`cwh chaos`: run a Chaos Toolkit experiment against the local environment with a fleet of
phones in the background, then measure and gate it; list the experiments; stop a running one.

A run writes `reports/<UTC>-chaos-<name>/`: Chaos Toolkit's journal and log, the fleet's ledger
and summary, the fault journal, `chaos.json` (RTO per path, RPO), the SLO gate's outputs,
`chaos.md` and a timeline plot, and points `reports/latest` at it.

The experiment learns where the environment and the run folder are from its `configuration`:
`chaos run --var-file <run folder>/configuration.json` (`experiments.settings`), not from the
environment of the `chaos` process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from cwh import signals
from cwh.fleet import INTERRUPTED as INTERRUPTED_EXIT
from cwh.fleet import point_latest
from cwh.gameday import DONE, STATE, Day, Plan, Trial, score, trials
from cwh.gate import GateOptions, check
from cwh.report.versions import stamp_versions
from env.local import EnvironmentStartError, LocalEnvironment
from env.process import wait_until
from env.settings import EnvSettings
from experiments import harness
from experiments.activities.fleet.actions import FLEET_OPTIONS
from experiments.settings import ChaosSettings, new_run_dir, runtimes_of
from slo.ledger import write_atomic
from slo.reconcile import EXIT_CODES, worst_exit
from slo.sources import RunData, Window

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = ROOT / "experiments"
#: `make gameday`: one experiment of each kind, the cheapest first.
GAMEDAY = [
    "kill-api",
    "kill-lb",
    "kill-worker",
    "storage-outage",
    "redis-kill-master",
    "net-pg-latency",
    "pg-kill-primary",
    "rolling-update",
]
#: `make gameday` on the kubernetes runtime (`make staging-chaos`): one of each kind it runs.
KUBE_GAMEDAY = [
    "kill-api",
    "kill-worker",
    "net-pg-latency",
    "redis-kill-master",
    "pg-lose-primary-node",
    "node-drain",
]
#: What gates a chaos run: recovery and data. User-facing latency and availability over a run
#: built around a fault breach by design (chaos.png shows by how much); the steady-state
#: hypothesis checks them before and after the fault instead.
CHAOS_SLOS = (
    "rto",
    "rpo",
    "chaos-recovered",
    "requests-lost",
    "requests-duplicated",
    "requests-never-notified",
)
#: How long an interrupted experiment may take to play its rollbacks before we stop waiting.
ROLLBACK_GRACE_S = 300.0


@dataclass(frozen=True)
class ChaosOptions:
    """Attributes:
    experiment: a name from `experiments/` (kill-api, pg-kill-primary, ...).
    users: phones in the background fleet (0: the experiment's default).
    fleet_s: the fleet's duration in seconds (0: the experiment's default).
    gate: run the SLO gate on the run.
    reports: where the run folder is made.
    shape: the background fleet's load shape (one of scenarios.profiles.SHAPE_NAMES).
    """

    experiment: str
    users: int = 0
    fleet_s: int = 0
    gate: bool = True
    reports: Path = Path("reports")
    shape: str = "steady"


def catalogue() -> dict[str, dict[str, Any]]:
    """name -> {path, title, summary, tags, doc} of every experiment under `experiments/`."""
    out = {}
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        cwh = [e for e in doc.get("extensions", []) if e.get("name") == "cwh"]
        ext: dict[str, Any] = cwh[0] if cwh else {}
        out[path.stem] = {
            "path": path,
            "title": doc["title"],
            "summary": ext.get("summary", doc["title"]),
            "tags": doc.get("tags", []),
            # SLOs the experiment is also judged on (autoscaling ones, say), beyond CHAOS_SLOS.
            "slos": tuple(str(n) for n in ext.get("slos", ())),
            # Chaos SLOs the experiment breaches by design (name -> why), left out of its gate.
            "waive": {str(k): str(v) for k, v in (ext.get("waive") or {}).items()},
            # The runtimes it runs on (a partition needs containers, a drain Kubernetes).
            "runtimes": runtimes_of(doc),
            "doc": doc,
        }
    return out


def list_experiments(as_json: bool = False) -> int:
    """The experiments on standard output (a listing pipes): one line each, or JSON."""
    exps = catalogue()
    if as_json:
        keys = ("title", "summary", "tags")
        listed = [
            {"name": n, **{k: e[k] for k in keys}, "path": str(e["path"])} for n, e in exps.items()
        ]
        print(json.dumps(listed, indent=2))
        return 0
    for name, exp in exps.items():
        print(f"{name:<24} {exp['summary']}")
    return 0


def _chaos_binary() -> str:
    return str(Path(sys.executable).with_name("chaos"))


def run(opts: ChaosOptions, console: Console, settings: EnvSettings) -> tuple[int, Path | None]:
    """Returns (exit code, run folder). Exit code: 0 when the experiment completed without
    deviating and the gate passed; 1 when it deviated, failed or the gate failed; 2 when it
    could not run or the gate was inconclusive."""
    exps = catalogue()
    if opts.experiment not in exps:
        console.print(
            f"[red]error:[/red] no experiment {opts.experiment!r}; one of: {', '.join(exps)}"
        )
        return 2, None
    exp = exps[opts.experiment]
    # An environment that runs is experimented on with the runtime it really has; a record
    # left by one that no longer runs is `up`'s to clean, and what was asked starts.
    kubernetes = settings.runtime == "kubernetes"
    if not kubernetes:
        running = LocalEnvironment(settings)
        if running.supervisor_status() is not None:
            settings = running.settings
    if settings.runtime not in exp["runtimes"]:
        console.print(f"[red]error:[/red] {runtime_refusal(opts.experiment, exp, settings)}")
        return 2, None
    if not (_cluster_answers(settings, console) if kubernetes else _up(settings, console)):
        return 2, None
    if not _wait_steady(exp, settings, console):
        return 2, None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = (opts.reports / f"{stamp}-chaos-{opts.experiment}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp_versions(out)  # the versions that run, before anything changes
    chaos_settings = ChaosSettings(env=settings, run_dir=out)
    console.print(f"[bold]chaos[/bold] {opts.experiment}: {exp['summary']}")
    console.print(f"  run folder {out}")
    # The fleet's shape reaches start_fleet through the run folder (every experiment starts
    # its fleet alike, and the experiments' configuration is the environment's).
    write_atomic(out / FLEET_OPTIONS, json.dumps({"shape": opts.shape}))
    proc = subprocess.Popen(
        _chaos_command(exp["path"], out, _var_file(chaos_settings, opts)),
        cwd=ROOT,
        env=_chaos_environ(settings),
    )
    _wait_through_interrupts(proc, console)
    # Whatever happened inside (even a second Ctrl-C during the rollbacks): nothing stays on.
    restored = _restore(console, chaos_settings)
    write_atomic(out / "restored-after.json", json.dumps(restored))
    if not restored["healthy"]:
        console.print(
            f"[red]error:[/red] the environment is not healthy after {opts.experiment}; "
            "see `cwh env status`"
        )
    chaos = _measurement(chaos_settings, console)
    if chaos is not None:
        chaos["restore_errors"] = _restore_errors(out, restored)
        if region := _region_failover(out):
            chaos["region"] = region
        if (out / "partition.json").exists():
            chaos["partition"] = json.loads((out / "partition.json").read_text())
        if (out / "squeeze.json").exists():
            chaos["squeeze"] = json.loads((out / "squeeze.json").read_text())
        if (out / "redis-partition.json").exists():
            chaos["redis_partition"] = json.loads((out / "redis-partition.json").read_text())
        write_atomic(out / "chaos.json", json.dumps(chaos, indent=2))
    gate_code = 2
    for name, why in exp["waive"].items():
        console.print(f"[yellow]not gated on {name}[/yellow]: {why}")
    if opts.gate and (out / "summary.json").exists():
        window = RunData(out).window()
        if exp["slos"] and window is not None:
            # The experiment's own SLOs (scaling ones) read Prometheus over the whole method,
            # up to now: a scale-in waited for after the fleet stopped belongs to it.
            window = Window(window.start, time.time())
        gate_code = check(
            GateOptions(
                run=out,
                window=window,
                prometheus_url=_prometheus_url(settings),
                only=(*(n for n in CHAOS_SLOS if n not in exp["waive"]), *exp["slos"]),
            ),
            console,
        )
    journal = (
        json.loads((out / "journal.json").read_text()) if (out / "journal.json").exists() else {}
    )
    write_report(out, opts.experiment, exp, journal, chaos, gate_code)
    from cwh.chaos_plot import plot_timeline

    plot_timeline(out)
    from cwh.report import try_write_html

    # The runs' index of the folder the run was made in; a game day's trials are listed by
    # the day, which indexes its own folder's parent.
    in_day = (opts.reports / STATE).exists()
    try_write_html(out, _prometheus_url(settings), console, None if in_day else opts.reports)
    point_latest(out)
    status = journal.get("status", "missing")
    deviated = bool(journal.get("deviated"))
    if not journal and restored["healthy"] and not restored["errors"]:
        console.print(
            "[yellow]inconclusive[/yellow]: Chaos Toolkit wrote no journal (the experiment or "
            "its configuration could not be loaded, e.g. a CWH_CHAOS_* value of the wrong "
            f"type), so nothing was tested; see {out / 'chaostoolkit.log'}"
        )
        return 2, out
    before = (journal.get("steady_states") or {}).get("before") or {}
    if status == "completed" and not before.get("steady_state_met", False):
        console.print(
            "[yellow]inconclusive[/yellow]: the system was not in its steady state before the "
            f"fault, so nothing was tested; see {out / 'chaostoolkit.log'}"
        )
        return 2, out
    console.print(
        f"experiment {opts.experiment}: [bold]{status}[/bold]"
        + (" ([red]deviated[/red])" if deviated else "")
        + f"; report {out / 'chaos.md'}"
    )
    # Chaos Toolkit goes on after a method activity raises and still calls the experiment
    # completed: a wait that timed out (the autoscaler never scaled back) is a failure here.
    if failed := failed_activities(journal):
        console.print(f"[red]failed:[/red] {', '.join(failed)} (see {out / 'journal.json'})")
        return 1, out
    if status != "completed" or deviated or not restored["healthy"] or restored["errors"]:
        return 1, out
    waived = "requests-lost" in exp["waive"]
    return worst_exit(gate_code if opts.gate else 0, _reconciliation_code(out, waived)), out


def runtime_refusal(name: str, exp: dict[str, Any], settings: EnvSettings) -> str:
    """Why `name` does not run on this environment's runtime, and how to run it."""
    wanted = exp["runtimes"]
    how = (
        "make kind-up, then make staging-chaos EXPERIMENTS=" + name
        if wanted[0] == "kubernetes"
        else f"make chaos EXPERIMENT={name} RUNTIME={wanted[0]}"
    )
    return (
        f"{name} needs the {' or '.join(wanted)} runtime "
        f"(this environment's is {settings.runtime}): {how}"
    )


def _up(settings: EnvSettings, console: Console) -> bool:
    """The local environment up (started, or found running); False, said, when it fails."""
    with console.status("bringing the local environment up…"):
        try:
            LocalEnvironment(settings).up()
        except EnvironmentStartError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return False
    return True


def _cluster_answers(settings: EnvSettings, console: Console) -> bool:
    """On the kubernetes runtime: the API server answers and the namespace exists (`up` does
    not start a cluster); False, said, when not."""
    from experiments.kube.api import connect

    try:
        connect(settings).core.read_namespace(settings.namespace)
    except Exception as exc:  # any failure to reach it is the same answer: nothing to test
        console.print(
            f"[red]error:[/red] the cluster's namespace {settings.namespace} is not reachable "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}): "
            "check CWH_KUBECONFIG, CWH_KUBE_CONTEXT and CWH_NAMESPACE (make kind-up applies "
            "the manifests)"
        )
        return False
    return True


def _chaos_environ(settings: EnvSettings) -> dict[str, str]:
    """The `chaos` process's environment: ours, the project importable, and on the kubernetes
    runtime `KUBECONFIG` from the settings (chaosk8s reads the kubeconfig from there)."""
    out = {**os.environ, "PYTHONPATH": str(ROOT)}
    if settings.runtime == "kubernetes" and settings.kubeconfig:
        out["KUBECONFIG"] = settings.kubeconfig
    return out


def _prometheus_url(settings: EnvSettings) -> str:
    """The local environment's Prometheus for the gate and the report; "" on the kubernetes
    runtime, where it sits behind the API server (the chaos gate's SLOs need none; `cwh slo
    check --prometheus` through `kubectl proxy` judges the cluster: make staging-chaos)."""
    if settings.runtime == "kubernetes":
        return ""
    return f"http://127.0.0.1:{settings.ports.prometheus}"


def failed_activities(journal: dict[str, Any]) -> list[str]:
    """The method's activities that failed (raised), by name, in a Chaos Toolkit journal."""
    return [
        str(run.get("activity", {}).get("name", "?"))
        for run in journal.get("run") or []
        if run.get("status") == "failed"
    ]


def _var_file(s: ChaosSettings, opts: ChaosOptions) -> Path:
    """`<run folder>/configuration.json`: the experiment's configuration values for this run
    (`chaos run --var-file`): where the environment is, the run folder, and the fleet's size
    and duration when given."""
    values = s.to_configuration()
    if opts.users:
        values["users"] = opts.users
    if opts.fleet_s:
        values["fleet_s"] = opts.fleet_s
    path = s.run_dir / "configuration.json"
    write_atomic(path, json.dumps({"configuration": values}, indent=2))
    return path


def _chaos_command(experiment: Path, out: Path, var_file: Path) -> list[str]:
    return [
        _chaos_binary(),
        "--log-file",
        str(out / "chaostoolkit.log"),
        "run",
        "--var-file",
        str(var_file),
        "--journal-path",
        str(out / "journal.json"),
        str(experiment),
    ]


def _reconciliation_code(out: Path, losses_waived: bool = False) -> int:
    """The fleet's reconciliation as an exit code: 1 lost or duplicated, 2 acknowledged
    requests left unknown (the read-back got no answer), 0 otherwise or without a fleet.

    `losses_waived`: the experiment loses data by design (`waive: requests-lost`, judged by
    its RPO and its own checks instead): only duplicates and unknowns count then."""
    path = out / "summary.json"
    if not path.exists():
        return 0
    rec = json.loads(path.read_text())["reconciliation"]
    if losses_waived and rec.get("verdict") == "fail" and not rec.get("duplicated"):
        # Waived: what the restore lost, acknowledged before it ended. A request acknowledged
        # once the system was back and lost later is a loss of the recovered system.
        restored = [f["wall"] for f in _journal(out) if f["event"] == "restore"]
        ended = max(restored, default=float("inf"))
        if not any(w > ended for w in rec.get("lost_acked_walls", [])):
            return EXIT_CODES["inconclusive" if rec.get("unknown") else "pass"]
    return EXIT_CODES[rec.get("verdict", "pass")]


def _journal(out: Path) -> list[dict[str, Any]]:
    """The run's fault journal (`faults.jsonl`)."""
    path = out / "faults.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _restore(console: Console, s: ChaosSettings) -> dict[str, Any]:
    """Every restore step (the run's fleet stopped and its faults closed, toxics, holds, knobs
    and planted faults undone, health awaited), each whatever the others did; each failure on
    the terminal."""
    from experiments import harness

    with console.status("restoring the environment…"):
        restored = harness.restore_all(s, wait_s=180, stop_fleet=True)
    for step, error in restored["errors"].items():
        console.print(f"[red]restore step {step} failed:[/red] {error}")
    return restored


def _restore_errors(out: Path, restored: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The restore steps that failed, by who restored: the experiment's control (its
    `restored.json`) and `cwh chaos` after it."""
    control = out / "restored.json"
    by_control = json.loads(control.read_text()).get("errors", {}) if control.exists() else {}
    return {"control": by_control, "cwh": restored["errors"]}


def _steady_probe(exp: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments of the experiment's `slos_hold` steady-state probe, if it has one."""
    for probe in exp["doc"].get("steady-state-hypothesis", {}).get("probes", []):
        if probe["provider"].get("func") == "slos_hold":
            return dict(probe["provider"].get("arguments", {}))
    return None


def _wait_steady(exp: dict[str, Any], settings: EnvSettings, console: Console) -> bool:
    """Wait (bounded) until the SLOs of the experiment's hypothesis hold: right after `up`,
    Prometheus has yet to see every replica for a whole window, and an experiment started then
    would be refused by its own hypothesis."""
    args = _steady_probe(exp)
    if args is None:
        return True
    from experiments.activities.slo.probes import evaluate_slos

    # Holding once is not enough: requests answered just before a check may be scraped only
    # after it (seen: an experiment refused by a p95 of 0.71 s two seconds after this wait saw
    # its SLOs hold, the previous load's last requests arriving in Prometheus meanwhile). So
    # they must hold at two checks at least two scrapes apart, nothing failing in between.
    settle_s = 2 * settings.scrape_interval_s + 1
    held_since: list[float] = []

    def holds() -> bool:
        try:
            prometheus = harness.prometheus(settings)  # asked each time: it may be starting
            verdicts = evaluate_slos(prometheus, args["names"], args.get("window_s", 30))
        except Exception:  # unknown is not holding: the two checks start over
            held_since.clear()
            raise
        if any(v["status"] == "fail" for v in verdicts.values()):
            held_since.clear()
            return False
        if not held_since:
            held_since.append(time.monotonic())
        return time.monotonic() - held_since[0] >= settle_s

    with console.status("waiting for the steady state (the hypothesis's SLOs holding)…"):
        try:
            wait_until(holds, settings.timeout(120), "the steady state", interval_s=2)
        except TimeoutError as exc:
            console.print(f"[red]error:[/red] {exc}: the system is not steady, nothing to test")
            return False
    return True


#: Set when Ctrl-C reached a running experiment (its rollbacks then played): a game day stops
#: after that trial and keeps it to run again.
INTERRUPTS = threading.Event()


def _wait_through_interrupts(proc: subprocess.Popen[bytes], console: Console) -> None:
    """Wait for the experiment; Ctrl-C reaches it too (same process group) and it plays its
    rollbacks: wait for those rather than leave the system broken."""
    while True:
        try:
            proc.wait()
            return
        except KeyboardInterrupt:
            INTERRUPTS.set()
            signals.pass_on(proc)
            console.print("[yellow]interrupted: the experiment is playing its rollbacks…[/yellow]")
            try:
                proc.wait(ROLLBACK_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
            except KeyboardInterrupt:
                continue


def _measurement(s: ChaosSettings, console: Console) -> dict[str, Any] | None:
    """`chaos.json`; measured now when the experiment was interrupted before its measure probe
    but the fleet ran and a fault was injected (what users saw still counts)."""
    out = s.run_dir
    path = out / "chaos.json"
    if not path.exists() and (out / "summary.json").exists() and (out / "faults.jsonl").exists():
        from experiments.activities.measure.probes import recovery

        try:
            recovery(configuration=s.to_configuration())
        except RuntimeError as exc:
            console.print(f"[yellow]no measurement:[/yellow] {exc}")
    return json.loads(path.read_text()) if path.exists() else None


def _region_failover(out: Path) -> dict[str, Any] | None:
    """A region-loss drill's failover timeline and divergence (written by its activities after
    the measure probe), for chaos.json."""
    found = {}
    for key, name in (
        ("failover", "region-failover.json"),
        ("divergence", "region-divergence.json"),
    ):
        if (out / name).exists():
            found[key] = json.loads((out / name).read_text())
    return found or None


def _region_lines(region: dict[str, Any] | None) -> list[str]:
    """What a region loss looked like from the second region, and the tail it never got."""
    if not region:
        return []
    lines = [""]
    if f := region.get("failover"):
        how = "by itself" if f["automatic"] else "by hand"
        lines.append(
            f"Region failover ({how}, after {f['failover_after_s']:g} s of silence): the loss seen "
            f"at +{f['lost_seen_s']} s, promotion began at +{f['promotion_began_s']} s, "
            f"promoted (timeline {f['timeline']}) at +{f['promoted_s']} s, serving through the "
            f"global entry point at +{f['serving_s']} s."
            + (
                f" WAL the link never carried: at least {f['wal_not_carried_bytes']} bytes "
                f"({f['last_lsn']} written, {f['received_lsn']} received)."
                if f.get("wal_not_carried_bytes") is not None
                else ""
            )
            + (
                f" The region link was not cut at the loss ({f['link_cut']}): what it carried "
                "after the loss is not the tail a lost region's network would lose."
                if f.get("link_cut") not in (None, "cut")
                else ""
            )
        )
    if d := region.get("divergence"):
        tail = (
            f", committed {d['newest_s_before_loss']} to {d['oldest_s_before_loss']} s before it"
            if d["not_carried"]
            else ""
        )
        lines.append(
            f"Divergence: of {d['committed']} requests the lost region committed in the "
            f"{d['window_s']} s before the loss, {d['not_carried']} never reached the second "
            f"region{tail} (acknowledged or not; the RPO above counts the acknowledged)."
        )
    return lines


def _partition_lines(cut: dict[str, Any] | None) -> list[str]:
    """What a partitioned PostgreSQL primary did while cut off (the split-brain window)."""
    if not cut:
        return []

    healed = f"when the partition healed (+{cut.get('healed_after_s')} s)"
    if cut.get("fenced_after_s") is not None:
        fenced = f"it stopped claiming the primary role at +{cut['fenced_after_s']} s"
    elif cut.get("fencing_known", True):
        fenced = f"it still claimed the primary role {healed}"
    else:
        fenced = (
            f"it answered nothing before it refused, so whether it claimed it {healed} is unknown"
        )
    promoted = (
        f"another member served as primary at +{cut['promoted_after_s']} s"
        if cut.get("promoted_after_s") is not None
        else f"no other member served as primary {healed}"
    )
    isolated = cut.get("isolated_not_on_new_primary")
    before = cut.get("isolated_not_on_new_primary_before_cut")
    counted = (
        f"unknown ({cut.get('error', 'not read')})"
        if isolated is None
        else f"{isolated} (of {cut.get('isolated_committed')} it committed from the cut on)"
        + (f", and {before} written in the 5 s before the cut" if before else "")
    )
    return [
        "",
        f"Partition of {cut['member']} from {', '.join(cut['cut_from'])} (its clients still "
        f"reached it): {fenced}; {promoted}; both claimed it for "
        f"{_fmt(cut.get('both_primary_s'))}. Requests the isolated member committed that the "
        f"new primary lacks: {counted}; the rewind that followed the heal discarded them.",
    ]


def _squeeze_lines(sq: dict[str, Any] | None) -> list[str]:
    """How a replica squeezed to its memory limit died and came back (an OOM kill)."""
    if not sq:
        return []
    head = (
        f"Memory of {sq['replica']} cut to {sq['limit_mb']} MiB, a leak of "
        f"{sq['leak_mb_per_s']} MiB/s planted in it: "
    )
    if sq.get("killed_after_s") is None:
        return ["", head + "it was never killed (the leak did not reach the limit in time)."]
    how = (
        "OOM-killed by the kernel at its limit"
        if sq.get("oom_killed")
        else f"killed, not by the OOM killer ({sq.get('restart_reason') or 'no reason recorded'})"
    )
    back = (
        f"healthy again in a new container at +{sq['back_after_s']} s"
        if sq.get("back_after_s") is not None
        else "not healthy again before the action's deadline"
    )
    return ["", head + f"{how} at +{sq['killed_after_s']} s; {back}."]


def _redis_partition_lines(cut: dict[str, Any] | None) -> list[str]:
    """What a partitioned Redis master did while cut off from its replica and the cluster bus,
    as a client writing to it directly saw it (`experiments.redis_partition`)."""
    if not cut:
        return []

    healed = f"before the partition healed (+{cut.get('healed_after_s')} s)"
    refused = (
        f"refused writes from +{cut['refused_after_s']} s"
        f" ({', '.join(sorted(cut.get('refusals') or {})) or 'an error reply'})"
        if cut.get("refused_after_s") is not None
        else f"never refused a write {healed}"
    )
    promoted = (
        f"{cut.get('promoted') or 'its replica'} was promoted at +{cut['promoted_after_s']} s"
        if cut.get("promoted_after_s") is not None
        else f"no replica was promoted {healed}"
    )
    after = [
        f"{cut[k]} {what}"
        for k, what in (
            ("accepted_after_promotion", "after the promotion"),
            ("accepted_after_refusal", "after its first refusal"),
        )
        if cut.get(k)
    ]
    unknown = f", {cut['unknown']} unknown (read back with no answer)" if cut.get("unknown") else ""
    return [
        "",
        f"Partition of Redis master {cut['master']} from {', '.join(cut['cut_from'])} (its "
        f"clients still reached it; cluster-node-timeout {_fmt(cut.get('cluster_node_timeout_s'))}"
        f"): it accepted {cut['accepted_while_cut']} writes while cut"
        + (f" ({', '.join(after)})" if after else "")
        + f", last at +{cut.get('last_ack_after_s')} s; it {refused}; {promoted}. Of its "
        f"{cut['acknowledged']} acknowledged writes ({cut['rate_per_s']:g}/s to its own port), "
        f"{cut['lost']} were lost after the heal{unknown}: it rejoined as a replica of the "
        "promoted node and resynchronised from it.",
    ]


def _pitr_lines(pitr: dict[str, Any] | None) -> list[str]:
    """What a point-in-time restore brought back, request by request (`slo/pitr.py`)."""
    if not pitr:
        return []
    return [
        "",
        f"Point-in-time restore: {pitr['before']} requests acknowledged before the mistake, "
        f"{pitr['missing_before']} of them missing; {pitr['window']} acknowledged between the "
        f"mistake and the restore (gone by design), {pitr['present_window']} of them back; "
        f"{pitr['after']} acknowledged after the restore, {pitr['missing_after']} missing; "
        f"{pitr['during']} raced the mistake ({pitr['during_present']} back) and "
        f"{pitr.get('gap', 0)} the cut ({pitr.get('gap_present', 0)} back). "
        + ("Exact." if pitr["wrong"] == 0 else f"WRONG: {pitr['wrong_ids']}"),
    ]


def _verify_lines(verify: dict[str, Any] | None) -> list[str]:
    """What the backup drill checked (`env.restore.verify_backup`)."""
    if not verify:
        return []
    return [
        "",
        f"Backup drill: pgbackrest verify {'passed' if verify['verify_ok'] else 'FAILED'}; the "
        f"scratch restore took {verify['restore_s']:g} s and holds {verify['rows']} requests up "
        f"to {verify['cutoff']}, {'the same as' if verify['same_as_live'] else 'NOT the same as'}"
        f" the live cluster (checksum {verify['checksum']}); {verify['acknowledged_checked']} "
        f"acknowledged requests checked, {verify['acknowledged_missing']} missing.",
    ]


def _fmt(v: Any, unit: str = " s") -> str:
    return "no data" if v is None else f"{v:g}{unit}"


def _rto_table(chaos: dict[str, Any]) -> list[str]:
    """Per path: RTO (a stall counts: an answer later than the bound is bad), whether it
    recovered, the longest window without any answer, and what was bad after the fault."""
    rto, rec = chaos["rto_s"], chaos["recovered"]
    bound = chaos.get("bound_s", {})
    silence = chaos.get("longest_silence_s", {})
    slow = chaos.get("slow_after_fault", {})
    lines = [
        "| path | RTO | recovered | longest without an answer | failed after the fault "
        "| ok but slower than the bound |",
        "|---|---|---|---|---|---|",
    ]
    for path in ("write", "read", "notification"):
        lines.append(
            f"| {path} | {_fmt(rto.get(path))} | "
            f"{ {True: 'yes', False: 'NO', None: 'no data'}[rec.get(path)] } | "
            f"{_fmt(silence.get(path))} | {chaos['not_ok_after_fault'].get(path, 0)} | "
            f"{slow.get(path, 0)} (bound {_fmt(bound.get(path))}) |"
        )
    return [
        *lines,
        "",
        "RTO runs from the first fault to the first of "
        f"{chaos['consecutive']} operations in a row after the last bad one, bad meaning "
        "failed or stalled (answered later than the bound after waiting while the path "
        "answered nobody for longer than its stall_quiet_s): a stall is downtime.",
    ]


def write_report(
    out: Path,
    name: str,
    exp: dict[str, Any],
    journal: dict[str, Any],
    chaos: dict[str, Any] | None,
    gate_code: int,
) -> None:
    lines = [
        f"# Chaos experiment {name}: {journal.get('status', 'did not run')}"
        + (" (deviated)" if journal.get("deviated") else ""),
        "",
        exp["summary"],
        "",
    ]
    safety = out / "safety.json"
    if safety.exists():
        lines += [
            f"**Interrupted by the stop condition**: {json.loads(safety.read_text())['reason']}",
            "",
        ]
    states = journal.get("steady_states") or {}
    for when in ("before", "after"):
        if state := states.get(when):
            met = "met" if state.get("steady_state_met") else "NOT met"
            lines.append(f"- Steady state {when}: {met}")
    lines.append("")
    if chaos:
        lines += _rto_table(chaos)
        lines += [
            "",
            f"RPO {chaos['rpo_s']['max']:g} s: {chaos['acknowledged']} acknowledged, "
            f"{chaos['lost']} lost, {chaos['duplicated']} duplicated, "
            f"{chaos['never_notified']} never notified, {chaos.get('unknown', 0)} unknown (the "
            f"read-back got no answer: inconclusive when not 0), {chaos['info']} submits with "
            "no answer (info)."
            + (
                f" {chaos['reads_of_lost']} reads of lost requests were answered 404: counted"
                " in the RPO, not as the read path's downtime."
                if chaos.get("reads_of_lost")
                else ""
            ),
            *_pitr_lines(chaos.get("pitr")),
            *_verify_lines(chaos.get("verify")),
            *_region_lines(chaos.get("region")),
            *_partition_lines(chaos.get("partition")),
            *_squeeze_lines(chaos.get("squeeze")),
            *_redis_partition_lines(chaos.get("redis_partition")),
            "",
            "Faults (UTC):",
            "",
        ]
        t0 = chaos["fault_wall"]
        for f in chaos["faults"]:
            lines.append(
                f"- {time.strftime('%H:%M:%S', time.gmtime(f['wall']))} "
                f"(+{f['wall'] - t0:.1f} s) {f['event']} {f['fault']}"
            )
    else:
        lines.append(
            "No measurement: the fleet or the fault did not happen (see chaostoolkit.log)."
        )
    for who, errors in ((chaos or {}).get("restore_errors") or {}).items():
        lines += [
            f"- restore step {step} failed ({who}): {error}" for step, error in errors.items()
        ]
    verdict = {0: "PASS", 1: "FAIL", 2: "INCONCLUSIVE"}.get(gate_code, str(gate_code))
    lines += ["", f"SLO gate: {verdict} (slo.md)", ""]
    write_atomic(out / "chaos.md", "\n".join(lines))


def stop(
    settings: EnvSettings,
    console: Console,
    timeout_s: float = ROLLBACK_GRACE_S,
    runs: Sequence[Path] = (),
) -> int:
    """Interrupt every running experiment (the stop file its safety control watches), wait for
    their rollbacks, then restore whatever is left: in the environment, and in `runs` (run
    folders: their fleets stopped, their open faults closed; default those of the running
    experiments, else a new `reports/<UTC>-chaos-stop` folder that records the restore)."""
    from experiments import harness

    running = harness.running_dir(settings)
    found = _running_experiments(running)
    pids = list(found)
    folders = list(runs) or [f for f in found.values() if f] or [new_run_dir("stop")]
    stop_file = harness.stop_file(settings)
    stop_file.parent.mkdir(parents=True, exist_ok=True)
    stop_file.write_text(str(time.time()))
    try:
        if pids:
            console.print(f"stopping experiment process(es) {', '.join(pids)}…")
            wait_until(
                lambda: not any(running.iterdir()),
                timeout_s,
                "running experiments ended (rollbacks played)",
                interval_s=0.5,
            )
        else:
            console.print("no experiment is running")
    finally:
        stop_file.unlink(missing_ok=True)
    from experiments.activities.region.actions import drill_record

    # No supervisor: nothing to restore, unless a region-loss drill took the whole region
    # down and its process died before its restore (its record says so).
    if LocalEnvironment(settings).supervisor_status() is None and not (
        drill_record(settings).exists()
    ):
        return 0
    failed = False
    for folder in folders:
        chaos_settings = ChaosSettings(env=settings, run_dir=folder)
        restored = _restore(console, chaos_settings)
        write_atomic(harness.run_dir(chaos_settings) / "restored-stop.json", json.dumps(restored))
        failed = failed or bool(restored["errors"]) or not restored["healthy"]
    if failed:
        console.print("[red]not restored[/red]: see the errors above and `cwh env status`")
        return 1
    console.print("[green]restored[/green]: no fault injected, every component healthy")
    return 0


def _running_experiments(running: Path) -> dict[str, Path | None]:
    """pid -> run folder of each running experiment (None while its control is still writing
    it); one that ends while being read is left out."""
    found: dict[str, Path | None] = {}
    for entry in running.iterdir() if running.exists() else []:
        with contextlib.suppress(FileNotFoundError):
            text = entry.read_text().strip()
            found[entry.name] = Path(text) if text else None
    return found


def new_day(plan: Plan, reports: Path) -> Day:
    """A game day's folder, `reports/<UTC>-gameday[-<plan name>]`, and its trials, saved."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffix = "" if plan.name == "gameday" else f"-{plan.name}"
    folder = (reports / f"{stamp}-gameday{suffix}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    stamp_versions(folder)  # the versions that run, before anything changes
    day = Day(folder, plan, trials(plan))
    day.save()
    return day


#: What a game day runs each trial with (`run`; a test gives its own).
RunTrial = Callable[[ChaosOptions, Console, EnvSettings], tuple[int, "Path | None"]]


def gameday(
    day: Day, console: Console, settings: EnvSettings, run_trial: RunTrial | None = None
) -> int:
    """Run the day's pending trials in turn, each into the day's folder. Writes `gameday.md`,
    `gameday.json` (trials, exit codes, folders, the resilience score) and `report.html`.

    A trial stays pending, and the day stops with the folder to resume
    (`cwh chaos gameday --resume FOLDER`), when it was interrupted (Ctrl-C, SIGTERM,
    `cwh chaos stop`: its rollbacks play first; half a trial measures nothing) or could not
    start (refused before its run folder: not steady, environment down). A trial that leaves
    the system unhealthy is done (it failed) and stops the day too.

    Exit code: 130 when interrupted; else the worst over every trial the day has run, resumed
    runs included (a failure wins over inconclusive), and inconclusive while trials are left."""
    run_trial = run_trial or run
    plan, folder = day.plan, day.folder
    stopped = ""  # why the day stopped early
    interrupted = False
    with _day_lock(folder):
        for n, trial in enumerate(day.pending()):
            try:
                # No pause before the first trial of a run: nothing ran before it to be in step
                # with.
                if trial.pause_s and n:
                    with console.status(f"jitter: {trial.pause_s:g} s before {trial.experiment}"):
                        time.sleep(trial.pause_s)  # the plan's random pause, not a synchronisation
                INTERRUPTS.clear()
                code, out = run_trial(
                    ChaosOptions(
                        trial.experiment, plan.users, plan.fleet_s, plan.gate, folder, plan.shape
                    ),
                    console,
                    settings,
                )
            except KeyboardInterrupt:
                interrupted = True
                break
            if out is None:
                stopped = f"{trial.experiment} could not start (above)"
                break
            if INTERRUPTS.is_set() or _stopped_from_outside(out):
                # The trial's rollbacks ran; what it measured is half a trial. Its folder is
                # kept (what happened) and named, but it does not count.
                trial.aborted.append(os.path.relpath(out, folder))
                interrupted = True
                break
            trial.status, trial.code = DONE, code
            trial.folder = os.path.relpath(out, folder)
            day.save()
            restored = out / "restored-after.json"
            if not (restored.exists() and json.loads(restored.read_text()).get("healthy")):
                stopped = f"the system is not whole again after {trial.experiment}"
                break
        day.save()
        _write_gameday(day, settings, console)
    left = len(day.pending())
    if interrupted or stopped:
        why = "interrupted" if interrupted else f"stopped: {stopped}"
        console.print(
            f"[yellow]game day {why}[/yellow]; {left} trial(s) to go: "
            f"`cwh chaos gameday --resume {folder}`"
        )
    if interrupted:
        return INTERRUPTED_EXIT
    return day_exit_code(day)


def day_exit_code(day: Day) -> int:
    """The worst over every trial run (a failure wins), inconclusive while trials are left."""
    codes = [t.code if t.code is not None else 2 for t in day.trials if t.status == DONE]
    return worst_exit(*codes, *([2] if day.pending() else []))


def _stopped_from_outside(out: Path) -> bool:
    """`cwh chaos stop` ended the trial (its safety control says so)."""
    path = out / "safety.json"
    return path.exists() and "cwh chaos stop" in str(json.loads(path.read_text()).get("reason"))


@contextlib.contextmanager
def _day_lock(folder: Path) -> Iterator[None]:
    """One process runs a day's trials at a time (a resume while the first run still ends)."""
    with open(folder / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DayBusy(f"{folder}: another cwh runs this game day") from None
        yield


class DayBusy(RuntimeError):
    pass


def _trial_label(day: Day, trial: Trial) -> str:
    repeats = {i.name: i.repeats for i in day.plan.items}
    return trial.experiment + (f" #{trial.index}" if repeats.get(trial.experiment, 1) > 1 else "")


def _write_gameday(day: Day, settings: EnvSettings, console: Console) -> None:
    """The day's table (terminal, `gameday.md`), `gameday.json` and the page."""
    folder = day.folder
    done = [t for t in day.trials if t.status == DONE]
    table = Table(title="game day")
    for col in ("experiment", "result", "RTO write", "RTO read", "RTO notify", "RPO", "lost"):
        table.add_column(col)
    lines = [
        f"# Game day {folder.name}",
        "",
        "| experiment | result | RTO write | RTO read | RTO notification | RPO | lost | report |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for trial in done:
        out = folder / trial.folder if trial.folder else None
        chaos = (
            json.loads((out / "chaos.json").read_text())
            if out and (out / "chaos.json").exists()
            else None
        )
        result = {0: "pass", 1: "FAIL", 2: "inconclusive"}.get(trial.code or 0, str(trial.code))
        rto = (chaos or {}).get("rto_s", {})
        cells = [
            _fmt(rto.get("write")),
            _fmt(rto.get("read")),
            _fmt(rto.get("notification")),
            _fmt((chaos or {}).get("rpo_s", {}).get("max")),
            str((chaos or {}).get("lost", "-")),
        ]
        label = _trial_label(day, trial)
        table.add_row(label, result, *cells)
        rel = f"{trial.folder}/chaos.md" if trial.folder else "-"
        lines.append(f"| {label} | {result} | {' | '.join(cells)} | {rel} |")
    result_score = score(day.plan, done)
    pending = day.pending()
    lines += [
        "",
        f"**Resilience score: {_fmt_score(result_score['score'])}** "
        "(weighted share of trials that passed, per experiment; cwh/gameday.py says why)",
    ]
    if pending:
        lines.append(f"\n{len(pending)} trial(s) not run: `cwh chaos gameday --resume {folder}`.")
    console.print(table)
    console.print(f"resilience score: [bold]{_fmt_score(result_score['score'])}[/bold]")
    write_atomic(folder / "gameday.md", "\n".join(lines) + "\n")
    console.print(f"game day report: {folder / 'gameday.md'}")
    entries = [
        {
            "experiment": _trial_label(day, t),
            "trial": t.index,
            "code": t.code,
            "folder": t.folder,
        }
        for t in done
    ]
    doc = {
        "experiments": entries,
        "plan": day.plan.to_json(),
        "score": result_score,
        "pending": len(pending),
    }
    write_atomic(folder / "gameday.json", json.dumps(doc, indent=2))
    from cwh.report import try_write_html

    try_write_html(folder, _prometheus_url(settings), console, folder.parent)
    point_latest(folder)


def _fmt_score(value: float | None) -> str:
    return "-" if value is None else f"{value:g} %"
