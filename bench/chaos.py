"""`make bench-chaos`: each failover experiment repeated with jittered timing, reporting the
distribution (p50 / p95 / max) of RTO per path and of RPO: not a single run.

Runs on an environment of its own (base port 21000 unless CWH_BENCH_BASE_PORT says otherwise),
torn down at the end, also on Ctrl-C. Each repetition waits a random 5 to 15 s of steady load
before its fault (CWH_CHAOS_BASELINE_S), so the fault lands at different points of the system's
cycles (Patroni's loop, HAProxy's checks, the Redis node timeout). Writes
`reports/<UTC>-bench-chaos/` with every run's folder, `bench-chaos.json`, `bench-chaos.md` and
`bench-chaos.png`.

Fast detection has a price: false failovers. With `--soak DURATION` (SOAK=30m) the benchmark
then runs a no-fault soak (`bench.soak`, its run folder `soak/`) under a fleet and `--noise`
busy processes (CPU contention), and counts the failovers it sees: every one is spurious (goal:
none), and one fails the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

from cwh.report.versions import stamp_versions

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.fleet_args import duration_arg
from env import failover_model
from env.failover_timing import PROFILES, STANDARD, FailoverTiming
from env.local import LocalEnvironment
from env.settings import EnvSettings

ROOT = Path(__file__).resolve().parent.parent
FAILOVERS = ["pg-kill-primary", "pg-switchover", "pg-lose-primary-node", "redis-kill-master"]
PATHS = ("write", "read", "notification")


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def distribution(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": quantile(values, 0.5),
        "p95": quantile(values, 0.95),
        "max": max(values) if values else None,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """experiment -> {rto_<path>: distribution, rpo: distribution, lost, unrecovered, runs}."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["experiment"] for r in runs):
        mine = [r["chaos"] for r in runs if r["experiment"] == name and r["chaos"]]
        entry: dict[str, Any] = {
            f"rto_{p}": distribution([c["rto_s"][p] for c in mine if c["rto_s"][p] is not None])
            for p in PATHS
        }
        entry["rpo"] = distribution([c["rpo_s"]["max"] for c in mine])
        entry["lost"] = sum(c["lost"] for c in mine)
        entry["unrecovered"] = sum(c["unrecovered_paths"] for c in mine)
        entry["runs"] = len(mine)
        entry["failed_runs"] = sum(1 for r in runs if r["experiment"] == name and r["code"] != 0)
        out[name] = entry
    return out


def model_rows(
    summary: dict[str, dict[str, Any]], timing: FailoverTiming = STANDARD
) -> list[dict[str, Any]]:
    """Per experiment and path the model covers: the predicted worst case under `timing` with
    its formula (env.failover_model), the measured p95 and max, whether every run stayed within
    the bound, and the p95 goal where #17 sets one (met: None without a goal or a
    measurement)."""
    predicted = failover_model.bounds(timing)
    rows = []
    for name, entry in summary.items():
        for path, bound in predicted.get(name, {}).items():
            dist = entry[f"rto_{path}"]
            goal = failover_model.GOALS_P95_S.get((name, path))
            p95, worst = dist["p95"], dist["max"]
            rows.append(
                {
                    "experiment": name,
                    "path": path,
                    "predicted_s": bound.seconds,
                    "formula": bound.formula(),
                    "n": dist["n"],
                    "p95_s": p95,
                    "max_s": worst,
                    "within_bound": None if worst is None else worst <= bound.seconds,
                    "goal_p95_s": goal,
                    "goal_met": None if goal is None or p95 is None else p95 <= goal,
                }
            )
    return rows


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


MODEL_COLUMNS = ("experiment", "path", "predicted (s)", "p95 / max (s)", "within", "goal p95")


def _model_cells(row: dict[str, Any]) -> list[str]:
    goal = row["goal_p95_s"]
    return [
        row["experiment"],
        row["path"],
        f"{row['predicted_s']:g}",
        f"{_fmt(row['p95_s'])} / {_fmt(row['max_s'])}",
        _verdict(row["within_bound"]),
        "-" if goal is None else f"{goal:g} ({_verdict(row['goal_met'])})",
    ]


def _model_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="Predicted worst case (env/failover_model.py) beside the measured RTO "
        "(within: every run, so one outlier says NO)"
    )
    for c in MODEL_COLUMNS:
        table.add_column(c)
    for row in rows:
        table.add_row(*_model_cells(row))
    return table


def model_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The model's table and each bound's formula, for bench-chaos.md."""
    lines = [
        "Predicted worst case beside the measured RTO:",
        "",
        "| " + " | ".join(MODEL_COLUMNS) + " |",
        "|" + "---|" * len(MODEL_COLUMNS),
    ]
    lines += ["| " + " | ".join(_model_cells(row)) + " |" for row in rows]
    lines += ["", *(f"- {r['experiment']} ({r['path']}): {r['formula']}" for r in rows)]
    return lines


def run_once(
    settings: EnvSettings,
    name: str,
    repeat: int,
    baseline_s: int,
    folder: Path,
    users: int,
    timeout_s: float = 900,
) -> dict[str, Any]:
    """One `cwh chaos run` of `name` (no gate) on the environment of `settings`, the fault
    after `baseline_s` of load, its run folder under `folder`: the run's entry of
    `bench-chaos.json` (experiment, repeat, baseline_s, code, chaos: its chaos.json). A run
    past `timeout_s` is interrupted as Ctrl-C does (its rollbacks play), killed 300 s later,
    and has code None."""
    folder.mkdir(parents=True)
    cmd = [str(Path(sys.executable).with_name("cwh")), "chaos", "run", name, "--no-gate"]
    proc = subprocess.Popen(
        [*cmd, "--users", str(users), "--reports", str(folder)],
        cwd=ROOT,
        env={**os.environ, **settings.to_environ(), "CWH_CHAOS_BASELINE_S": str(baseline_s)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its group: `chaos` and the fleet go with it on a timeout
    )
    code: int | None
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _interrupt(proc)
        code = None
    except KeyboardInterrupt:
        # Its own session does not get the terminal's Ctrl-C: pass it on, let its rollbacks
        # play, then go on stopping the bench.
        _interrupt(proc)
        raise
    chaos_files = list(folder.glob("*/chaos.json"))
    chaos = json.loads(chaos_files[0].read_text()) if chaos_files else None
    return {
        "experiment": name,
        "repeat": repeat,
        "baseline_s": baseline_s,
        "code": code,
        "chaos": chaos,
    }


def _interrupt(proc: subprocess.Popen[bytes], grace_s: float = 300) -> None:
    """Ctrl-C to the experiment's process group (its rollbacks play), SIGKILL after
    `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each experiment (1-20)")
    parser.add_argument("--experiments", default=",".join(FAILOVERS))
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="for the jitter")
    parser.add_argument(
        "--soak",
        type=duration_arg,
        default=0.0,
        help="then a no-fault soak this long (SOAK: 30m; 0: none), counting spurious failovers",
    )
    parser.add_argument("--noise", type=int, default=1, help="busy processes during the soak")
    parser.add_argument(
        "--failover",
        choices=sorted(PROFILES),
        default="standard",
        help="the failure-detection timings the environment runs with (FAILOVER)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= 20:
        parser.error("--repeats must be between 1 and 20")
    if args.soak and not 60 <= args.soak <= 86_400:
        parser.error(f"SOAK={args.soak:g} s: a soak runs 1m to 24h (0: none)")
    if not 0 <= args.noise <= 16:
        parser.error(f"NOISE={args.noise}: 0 to 16 busy processes")
    from cwh import signals

    signals.install()  # SIGTERM as Ctrl-C: a running trial or soak is stopped the same way
    names = [n for n in args.experiments.split(",") if n]
    console = Console()
    rng = random.Random(args.seed)
    base = int(os.environ.get("CWH_BENCH_BASE_PORT", "21000"))
    settings = EnvSettings(
        base_port=base, run_dir=Path(f"/var/tmp/cwh-bench-{base}"), failover=args.failover
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = (ROOT / "reports" / f"{stamp}-bench-chaos").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp_versions(out)  # the versions that run, before anything changes
    env = LocalEnvironment(settings)
    env.reset()
    runs: list[dict[str, Any]] = []
    with env:
        env.up()
        plan = [(n, i) for i in range(args.repeats) for n in names]
        with Progress(console=console) as progress:
            task = progress.add_task("chaos", total=len(plan))
            for name, i in plan:
                baseline = rng.randint(5, 15)
                progress.update(task, description=f"{name} #{i + 1} (fault after {baseline} s)")
                folder = out / f"{name}-{i + 1}"
                runs.append(run_once(settings, name, i + 1, baseline, folder, args.users))
                chaos = runs[-1]["chaos"]
                proc_code = runs[-1]["code"]
                rto = (chaos or {}).get("rto_s", {})
                progress.console.log(
                    f"{name} #{i + 1}: exit {proc_code}, RTO write "
                    f"{_fmt(rto.get('write'))} s, read {_fmt(rto.get('read'))} s, notification "
                    f"{_fmt(rto.get('notification'))} s, lost {(chaos or {}).get('lost')}"
                )
                progress.advance(task)
    summary = summarize(runs)
    model = model_rows(summary, settings.timing)
    soak = (
        run_soak(settings, args.soak, args.noise, args.users, out / "soak", console)
        if args.soak
        else None
    )
    (out / "bench-chaos.json").write_text(
        json.dumps(
            {
                "failover": settings.failover,
                "timing": dict(settings.timing.rows()),
                "runs": runs,
                "summary": summary,
                "model": model,
                "soak": soak,
            },
            indent=2,
        )
    )
    table = Table(
        title=f"RTO and RPO over {args.repeats} jittered runs each (seconds), "
        f"failover profile {settings.failover}"
    )
    cols = ["experiment"] + [f"RTO {p} p50/p95/max" for p in PATHS] + ["RPO max", "lost"]
    for c in cols:
        table.add_column(c)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, s in summary.items():
        cells = ["/".join(_fmt(s[f"rto_{p}"][k]) for k in ("p50", "p95", "max")) for p in PATHS] + [
            _fmt(s["rpo"]["max"]),
            str(s["lost"]),
        ]
        table.add_row(name, *cells)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    console.print(table)
    console.print(_model_table(model))
    lines += ["", *model_markdown(model)]
    if soak is not None:
        line = soak_line(soak)
        console.print(line)
        lines += ["", line]
    (out / "bench-chaos.md").write_text("\n".join(lines) + "\n")
    _plot(summary, runs, out / "bench-chaos.png")
    from cwh.report import try_write_html

    try_write_html(out, "", console)
    console.print(f"bench-chaos: {out}")
    trials_ok = all(s["failed_runs"] == 0 for s in summary.values())
    if soak is not None and soak["code"] == 130:
        return 130
    return 0 if trials_ok and (soak is None or soak.get("spurious") == 0) else 1


def run_soak(
    settings: EnvSettings, duration_s: float, noise: int, users: int, out: Path, console: Console
) -> dict[str, Any]:
    """The no-fault soak (`python -m bench.soak`, its own environment, run folder `out`, the
    trials' CWH_* settings): {duration_s, noise, code, spurious: failovers seen or None when
    not measured, roles, noise_cpu_s}. Ctrl-C or SIGTERM reaches it as Ctrl-C (its own
    session, as a trial's): it stops its fleet, writes what it sampled and brings its
    environment down; killed only past 300 s."""
    console.print(f"no-fault soak: {duration_s:g} s, {noise} busy processes beside the fleet")
    cmd = [sys.executable, "-m", "bench.soak", "--duration", f"{duration_s:g}s"]
    cmd += ["--noise", str(noise), "--users", str(users), "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **settings.to_environ()}, start_new_session=True
    )
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        _interrupt(proc)
        code = 130
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    return soak_result(duration_s, noise, code, summary)


#: bench-soak's goal line that judges the failovers.
SPURIOUS_GOAL = "spurious failovers (no fault injected)"


def soak_result(
    duration_s: float, noise: int, code: int, summary: dict[str, Any]
) -> dict[str, Any]:
    """What bench-chaos keeps of the soak's summary.json (pure). `spurious` is the failovers
    counted when the soak judged its goal (sampled over the whole run), the count when one was
    seen whatever the coverage, else None (not measured)."""
    roles = summary.get("roles")
    goals = summary.get("goals", [])
    goal: dict[str, Any] = next((g for g in goals if g.get("name") == SPURIOUS_GOAL), {})
    seen = roles["total"] if roles else 0
    spurious = seen if (goal.get("ok") is not None or seen) else None
    return {
        "duration_s": duration_s,
        "noise": noise,
        "code": code,
        "spurious": spurious,
        "measured": goal.get("measured"),
        "roles": roles,
        "noise_cpu_s": (summary.get("noise") or {}).get("cpu_s"),
    }


def soak_line(soak: dict[str, Any]) -> str:
    """The soak's line in bench-chaos's report."""
    roles = soak.get("roles") or {}
    what = (
        "not measured (see soak/summary.md)"
        if soak["spurious"] is None
        else f"{soak['spurious']} ({'met' if soak['spurious'] == 0 else 'MISSED'}: goal none)"
    )
    detail = (
        f"; PostgreSQL {roles['pg_leader_changes']} leader changes, "
        f"{roles['pg_timeline_changes']} timelines, {roles['pg_demotions']} demotions; Redis "
        f"{roles['redis_master_changes']} master changes, {roles['redis_epoch_bumps']} epoch bumps"
        if roles
        else ""
    )
    return (
        f"Spurious failovers in a {soak['duration_s']:g} s no-fault soak with {soak['noise']} "
        f"busy processes ({soak.get('noise_cpu_s') or 0:g} CPU s): {what}{detail}."
    )


def _plot(summary: dict[str, Any], runs: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(PATHS), figsize=(13, 4), sharey=True)
    for ax, p in zip(axes, PATHS, strict=True):
        data = [
            [r["chaos"]["rto_s"][p] for r in runs
             if r["experiment"] == name and r["chaos"] and r["chaos"]["rto_s"][p] is not None]
            for name in summary
        ]  # fmt: skip
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(summary) + 1), list(summary), rotation=30, ha="right")
        ax.set_title(f"RTO, {p} path")
    axes[0].set_ylabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
