"""`make bench-runtime`: what the containers runtime costs, as ratios against the local one.

For each runtime in turn, local first (the baseline), then containers (never both at once: two
full topologies would starve a 2-core machine), on an environment of its own (base port 22400
unless CWH_BENCH_BASE_PORT says otherwise, one run directory, reset before each):

1. up: the time from `up` to the supervisor's "ready" (`up_s`). The containers runtime's Docker
   engine and image are made ready first and not timed (the image is built once per tree:
   `make images`); the engine is not running during the local runtime's turn.
2. load: the same bounded fleet (`cwh.fleet.run_fleet`, as `make load` runs it: closed model,
   steady shape) for the same time: acknowledged submits per second, the submit latency p99 and
   the time to result p99 of the steady phase (the run's HDR histograms), and its
   reconciliation (lost must be 0).
3. failover: the same PostgreSQL primary failure, KILLS times (`experiments.pg_failover`: the
   primary's postmaster SIGKILLed under a write loop through the write path): RTO from the
   client's side (median and max), and acknowledged writes lost.
4. down: the time to stop everything (`down_s`).

The figure to read is the ratio containers / local of each, measured in the same run: absolute
numbers on a shared 2-core machine are noise. Writes `reports/<UTC>-bench-runtime/`
(summary.json, summary.md, ratios.png, and each runtime's load run folder). The environments
are torn down at the end, also on Ctrl-C. Exit code: 0 both runtimes measured and nothing lost,
1 otherwise, 2 bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

from cwh.report.versions import stamp_versions

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.fleet_args import add_fleet_arguments
from cwh.fleet import FleetOptions, run_fleet
from env.local import LocalEnvironment
from env.settings import EnvSettings
from experiments.pg_failover import KILL_POSTGRES, measure_failover, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
#: The baseline first: every ratio is containers / local.
RUNTIMES = ("local", "containers")
BASELINE, CANDIDATE = RUNTIMES


@dataclass(frozen=True)
class Figure:
    """One row of the side-by-side table.

    Attributes:
        key: its name in each runtime's `figures`.
        label: what the reader sees, with the unit.
        better: "lower" or "higher": which way a ratio above 1 costs.
        ratio: whether a ratio means anything (counts of losses do not: they must be 0).
    """

    key: str
    label: str
    better: str
    ratio: bool = True


FIGURES = (
    Figure("up_s", "environment up, s", "lower"),
    Figure("submits_per_s", "acknowledged submits/s", "higher"),
    Figure("submit_p99_ms", "submit latency p99, ms", "lower"),
    Figure("ttr_p99_ms", "time to result p99, ms", "lower"),
    Figure("rto_median_s", "PG failover RTO median, s", "lower"),
    Figure("rto_max_s", "PG failover RTO max, s", "lower"),
    Figure("down_s", "environment down, s", "lower"),
    Figure("load_lost", "load: acknowledged submits lost", "lower", ratio=False),
    Figure("failover_lost", "failover: acknowledged writes lost", "lower", ratio=False),
)


@dataclass(frozen=True)
class BenchArgs:
    """The bench's parameters, validated (`parse_args`).

    Attributes:
        users: phones of the fleet; duration_s: its run time, s; spawn_rate: phones started
            per second; settle_s: the read-back's limit after the run, s.
        kills: primary failovers measured per runtime; rate: the write loop's writes per s.
        runtimes: which runtimes run, in order (the baseline, local, always first).
    """

    users: int = 50
    duration_s: float = 120.0
    spawn_rate: float = 10.0
    settle_s: float = 60.0
    kills: int = 3
    rate: float = 50.0
    runtimes: tuple[str, ...] = RUNTIMES

    def fleet(self, status: Mapping[str, Any]) -> FleetOptions:
        """The fleet's options against an environment, from its status."""
        return FleetOptions(
            target=str(status["urls"]["https"]).rstrip("/"),
            users=self.users,
            duration_s=self.duration_s,
            spawn_rate=self.spawn_rate,
            ca_file=str(status.get("tls_certificate") or ""),
            registration_secret=str(status.get("registration_secret") or ""),
            settle_s=self.settle_s,
        )


def parse_args(argv: list[str] | None = None) -> BenchArgs:
    """The command line, checked before anything starts.

    Raises:
        SystemExit(2): a bad value, with a message naming the option (and the make variable).
    """
    parser = argparse.ArgumentParser(
        prog="bench-runtime", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_fleet_arguments(parser, 120.0, "90s, 2m")
    parser.add_argument("--kills", type=int, default=3, help="failovers per runtime (KILLS)")
    parser.add_argument("--rate", type=float, default=50.0, help="failover writes/s")
    parser.add_argument(
        "--runtimes",
        default=",".join(RUNTIMES),
        help="local,containers (the default), or local alone to try the bench quickly",
    )
    ns = parser.parse_args(argv)
    runtimes = tuple(r for r in ns.runtimes.split(",") if r)
    problems = []
    if runtimes not in (RUNTIMES, (BASELINE,)):
        problems.append(f"--runtimes={ns.runtimes!r}: local,containers or local")
    if not 1 <= ns.kills <= 20:
        problems.append(f"KILLS={ns.kills}: 1 to 20")
    if not 1 <= ns.rate <= 500:
        problems.append(f"--rate={ns.rate:g}: 1 to 500 writes/s")
    args = BenchArgs(
        users=ns.users,
        duration_s=ns.duration,
        spawn_rate=ns.spawn_rate,
        settle_s=ns.settle,
        kills=ns.kills,
        rate=ns.rate,
        runtimes=runtimes,
    )
    # The fleet's own checks (USERS, DURATION, SETTLE, ...), against a placeholder target.
    problems += args.fleet({"urls": {"https": "https://placeholder"}}).problems()
    if not 0 < args.spawn_rate <= 1000:
        problems.append(f"SPAWN_RATE={args.spawn_rate:g}: above 0, at most 1000 phones/s")
    if problems:
        parser.error("; ".join(problems))
    return args


# ---- figures (pure) ---------------------------------------------------------------------------


def _p99(latency: Mapping[str, Any], kind: str) -> float | None:
    """The steady phase's p99 of `kind` (ms), else the ramp-up's when the run had no steady
    phase to speak of; None when neither was measured."""
    for name in (kind, f"{kind} (ramp-up)"):
        h = latency.get(name)
        if h and h.get("count"):
            return float(h["p99_ms"])
    return None


def load_figures(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A fleet run's figures from its `summary.json` (`cwh.fleet.run_fleet`): acknowledged
    submits per second of the configured run time, submit and time-to-result p99 (ms), lost,
    and the verdict."""
    duration = float(summary["options"]["duration_s"])
    submits = summary["operations"].get("submit", {"ok": 0})
    rec = summary["reconciliation"]
    return {
        "submits_per_s": round(submits["ok"] / duration, 3) if duration else None,
        "submit_p99_ms": _p99(summary["latency"], "submit"),
        "ttr_p99_ms": _p99(summary["latency"], "time to result"),
        "load_acknowledged": rec["acknowledged"],
        "load_lost": rec["lost"],
        "load_duplicated": rec["duplicated"],
        "load_unknown": rec["unknown"],
        "load_verdict": summary["verdict"],
    }


def failover_figures(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`measure_failover` results: RTO median and max (s), every RTO, writes acknowledged and
    lost. Nones when none was measured."""
    rtos = [float(r["rto_s"]) for r in results]
    rec = [r["reconciliation"] for r in results]
    return {
        "rto_s": rtos,
        "rto_median_s": round(statistics.median(rtos), 3) if rtos else None,
        "rto_max_s": max(rtos) if rtos else None,
        "failover_acknowledged": sum(x["acknowledged"] for x in rec),
        "failover_lost": sum(x["lost"] for x in rec),
    }


def ratio(candidate: float | None, baseline: float | None) -> float | None:
    """candidate / baseline, None when either is missing or the baseline is 0."""
    if candidate is None or baseline is None or baseline == 0:
        return None
    return round(candidate / baseline, 3)


@dataclass
class Row:
    """A figure on both runtimes and their ratio (containers / local)."""

    key: str
    label: str
    better: str
    local: float | None
    containers: float | None
    ratio: float | None


def ratio_table(figures: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    """One row per figure of FIGURES: its value on each runtime (None where that runtime did
    not measure it) and the ratio containers / local where a ratio means something."""
    base, cand = figures.get(BASELINE, {}), figures.get(CANDIDATE, {})
    return [
        Row(
            f.key,
            f.label,
            f.better,
            base.get(f.key),
            cand.get(f.key),
            ratio(cand.get(f.key), base.get(f.key)) if f.ratio else None,
        )
        for f in FIGURES
    ]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):  # counts
        return str(v)
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def _fmt_ratio(r: Row) -> str:
    return "-" if r.ratio is None else f"{r.ratio:.2f}x"


def render_markdown(summary: Mapping[str, Any]) -> str:
    """`summary.md`: the parameters, the side-by-side table with ratios, the problems."""
    args = summary["args"]
    rows = [Row(**r) for r in summary["table"]]
    lines = [
        "# Runtime cost: containers against local",
        "",
        f"The same fleet ({args['users']} phones, {args['duration_s']:g} s, closed model, steady "
        f"shape) and the same PostgreSQL primary failover ({args['kills']} postmaster kill(s) "
        f"under {args['rate']:g} writes/s) on each runtime in turn, in one run. Read the ratios "
        "(containers / local): absolute figures on a shared 2-core machine are noise.",
        "",
        "| figure | local | containers | containers / local |",
        "|---|---|---|---|",
    ]
    for r in rows:
        note = f" ({r.better} is better)" if r.ratio is not None else ""
        lines.append(
            f"| {r.label}{note} | {_fmt(r.local)} | {_fmt(r.containers)} | {_fmt_ratio(r)} |"
        )
    for runtime, problems in summary.get("problems", {}).items():
        for p in problems:
            lines.append(f"\n**{runtime}**: {p}")
    lines += ["", f"Verdict: {summary['verdict']}."]
    return "\n".join(lines) + "\n"


def verdict(
    figures: Mapping[str, Mapping[str, Any]],
    problems: Mapping[str, list[str]],
    runtimes: tuple[str, ...],
) -> str:
    """ "pass": every runtime asked for measured everything and lost nothing; else "fail"."""
    for runtime in runtimes:
        got = figures.get(runtime, {})
        if problems.get(runtime) or any(got.get(f.key) is None for f in FIGURES):
            return "fail"
        # Unknowns (acknowledged submits never read back) leave "nothing lost" unproven.
        if any(got.get(k) for k in ("load_lost", "load_duplicated", "load_unknown")):
            return "fail"
        if got["failover_lost"]:
            return "fail"
    return "pass"


def plot(rows: list[Row], path: Path) -> None:
    """The ratios as bars against 1 (the baseline)."""
    shown = [r for r in rows if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(shown) + 1.5))
    labels = [f"{r.label} ({r.better} is better)" for r in shown]
    ax.barh(labels, [r.ratio or 0 for r in shown], color="tab:blue")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("containers / local (1 = the same)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- measuring -------------------------------------------------------------------------------


def settings_for(runtime: str, base_port: int, timeout_scale: float = 1.0) -> EnvSettings:
    """One runtime's environment: the same topology and settings on both (no autoscaler: the
    replica counts stay the same; no backups: the containers runtime has none)."""
    return EnvSettings(
        base_port=base_port,
        run_dir=Path(f"/var/tmp/cwh-bench-{base_port}"),
        timeout_scale=timeout_scale,
        autoscale=False,
        backups=False,
        runtime=runtime,
    )


def bench_settings(environ: Mapping[str, str]) -> dict[str, EnvSettings]:
    """Each runtime's settings from the bench's variables (CWH_BENCH_BASE_PORT, 22400 by
    default; CWH_TIMEOUT_SCALE).

    Raises:
        ValueError: a variable that is not a number, or settings the environment refuses; the
            message names the variable.
    """
    from env.settings import SettingsError

    raw = environ.get("CWH_BENCH_BASE_PORT", "22400")
    try:
        base = int(raw)
    except ValueError:
        raise ValueError(f"CWH_BENCH_BASE_PORT={raw!r}: a port number") from None
    raw = environ.get("CWH_TIMEOUT_SCALE", "1.0")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"CWH_TIMEOUT_SCALE={raw!r}: a number, like 2.0") from None
    try:
        return {r: settings_for(r, base, scale) for r in RUNTIMES}
    except SettingsError as exc:
        raise ValueError(f"{exc} (CWH_BENCH_BASE_PORT sets the bench's base port)") from None


def prepare_engine(say: Callable[[str], None]) -> bool:
    """A Docker engine and this tree's image, before the containers runtime's `up` is timed;
    True when the engine was started here (`release_engine` stops it again)."""
    import docker

    from env import engine, images

    started = engine.ensure()
    if started:
        say("started dockerd")
    client = docker.from_env()
    try:
        images.ensure_stack(client, progress=say)
    finally:
        client.close()
    return started


def release_engine() -> None:
    """Stop the engine this bench started, unless containers of any environment are left."""
    from env import engine
    from env.containers import LABEL

    engine.stop_if_ours(LABEL)


def measure_runtime(
    runtime: str,
    args: BenchArgs,
    settings: EnvSettings,
    out: Path,
    progress: Progress,
    step: Callable[[str], None],
    figures: dict[str, Any],
    failovers: list[dict[str, Any]],
) -> None:
    """Up, the fleet, the failovers and down on one runtime, into `figures` (FIGURES' keys and
    the details) and `failovers` (`measure_failover`'s results) as they are measured, so what
    was measured before a failure is kept. Raises what failed (KeyboardInterrupt when the
    fleet was interrupted); the environment is down whatever happens."""
    console = progress.console
    env = LocalEnvironment(settings)
    env.reset()  # an earlier run's state (or the other runtime's) is no baseline
    step(f"{runtime}: up")
    t0 = time.monotonic()
    try:
        with env:  # up on entering, down on leaving (also on Ctrl-C or a failure)
            figures["up_s"] = round(time.monotonic() - t0, 3)
            status = wait_healthy(env, timeout_s=180)
            step(f"{runtime}: load")
            opts = args.fleet(
                {
                    "urls": status.urls,
                    "tls_certificate": status.tls_certificate,
                    "registration_secret": status.registration_secret,
                }
            )
            # Locust's live statistics go straight to the terminal: no bar meanwhile.
            progress.stop()
            try:
                _, _, summary = run_fleet(opts, console, out=out / f"{runtime}-load")
            finally:
                progress.start()
            figures.update(load_figures(summary))
            if summary.get("interrupted"):
                raise KeyboardInterrupt
            for i in range(args.kills):
                step(f"{runtime}: failover {i + 1}/{args.kills}")
                result = measure_failover(env, KILL_POSTGRES, rate_per_s=args.rate)
                failovers.append(result)
                console.log(
                    f"{runtime}: RTO {result['rto_s']:.2f} s, {result['primary_before']} -> "
                    f"{result['primary_after']}, lost {result['reconciliation']['lost']}"
                )
            step(f"{runtime}: down")
            t_down = time.monotonic()
        figures["down_s"] = round(time.monotonic() - t_down, 3)
    finally:
        figures.update(failover_figures(failovers))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    try:
        settings = bench_settings(os.environ)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    base = settings[BASELINE].base_port
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = (ROOT / "reports" / f"{stamp}-bench-runtime").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp_versions(out)  # the versions that run, before anything changes
    figures: dict[str, dict[str, Any]] = {}
    failovers: dict[str, list[dict[str, Any]]] = {}
    problems: dict[str, list[str]] = {}
    interrupted = False
    engine_started = False
    steps = len(args.runtimes) * (args.kills + 3)
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("bench-runtime", total=steps)
            done = 0

            def step(what: str) -> None:
                nonlocal done
                progress.update(task, description=what, completed=done)
                done += 1

            for runtime in args.runtimes:
                got = figures.setdefault(runtime, {})
                try:
                    if runtime == "containers":
                        engine_started = prepare_engine(lambda m: progress.console.log(m))
                    measure_runtime(
                        runtime,
                        args,
                        settings[runtime],
                        out,
                        progress,
                        step,
                        got,
                        failovers.setdefault(runtime, []),
                    )
                except Exception as exc:  # reported; the other runtime is still measured
                    problems.setdefault(runtime, []).append(f"{type(exc).__name__}: {exc}")
                    console.log(f"[red]{runtime}: {type(exc).__name__}: {exc}[/red]")
                if got.get("load_lost") or got.get("load_duplicated") or got.get("load_unknown"):
                    problems.setdefault(runtime, []).append(
                        f"the load: {got['load_lost']} lost, {got['load_duplicated']} duplicated, "
                        f"{got['load_unknown']} unknown (never read back)"
                    )
                if got.get("failover_lost"):
                    problems.setdefault(runtime, []).append(
                        f"the failovers lost {got['failover_lost']} acknowledged write(s)"
                    )
            progress.update(task, completed=steps, description="done")
    except KeyboardInterrupt:
        # The environment is down (its context manager ran); what was measured is reported.
        interrupted = True
        console.print("[yellow]interrupted[/yellow]")
    finally:
        if engine_started:
            release_engine()
    rows = ratio_table(figures)
    summary = {
        "args": asdict(args),
        "base_port": base,
        "figures": figures,
        "table": [asdict(r) for r in rows],
        "problems": problems,
        "verdict": "interrupted" if interrupted else verdict(figures, problems, args.runtimes),
        "failovers": failovers,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    md = render_markdown(summary)
    (out / "summary.md").write_text(md)
    if any(r.ratio is not None for r in rows):
        plot(rows, out / "ratios.png")
    console.print(_table(rows, args))
    for runtime, ps in problems.items():
        for p in ps:
            console.print(f"[red]{runtime}[/red]: {p}")
    from cwh.report import try_write_html

    try_write_html(out, "", console)  # the figures and the plot, in one page
    console.print(f"bench-runtime: {out}")
    if interrupted:
        return 130
    return 0 if summary["verdict"] == "pass" else 1


def _table(rows: list[Row], args: BenchArgs) -> Table:
    table = Table(
        title=f"containers / local: {args.users} phones for {args.duration_s:g} s, "
        f"{args.kills} primary kill(s) each"
    )
    for col in ("figure", "local", "containers", "containers / local"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for r in rows:
        table.add_row(r.label, _fmt(r.local), _fmt(r.containers), _fmt_ratio(r))
    return table


if __name__ == "__main__":
    sys.exit(main())
