"""`make bench-scale`: how fast the API's HPA scales out and back in, over repeated ramps, each
measured against the bound its spec implies.

Each ramp pushes the API past its CPU target with an open-loop read rate
(`scenarios/pressure.py`), holds until the HPA has made no change for `--quiet` seconds, stops,
and waits for the minimum again. Two figures per ramp, from the same Prometheus series the
autoscaling SLOs read (kube-state-metrics' names, `slo/scaling.py`):

- time to scale: from the first sample above target x (1 + tolerance) to an available replica
  beyond the count before the HPA acted, for every such episode of the ramp; measured twice:
  from the replicas' own CPU (their `process_cpu_seconds_total` against their request: the
  threshold crossed as it happened, so the HPA's detection is in the figure) and from the HPA's
  view of its metric (what `api-scale-up-reaction` judges: its detection is not);
- time to drain: from the load stopping to the HPA's current replicas back at the minimum.

The predicted bounds come from the spec and the controller's flags alone (`predicted_*`); the
ratio measured / predicted is the figure to read (absolute seconds on a shared 2-core machine
are noise). A ramp starts at a random phase of the sync loop (jitter), so the distribution
covers the loop's quantization.

Runs on an environment of its own (base port 22000 unless CWH_BENCH_BASE_PORT says otherwise),
torn down at the end, also on Ctrl-C. `--specs fast` shortens the scale-down window to 20 s and
the policy period to 10 s (what the tests use); the default is `deploy/base/` as shipped.
Writes `reports/<UTC>-bench-scale/` (bench-scale.json, .md, .png).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

from cwh.report.versions import stamp_versions

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from bench.chaos import distribution, quantile
from cwh.report import try_write_html
from env import hpa, topology
from env.autoscaler import ControllerConfig, ScaleEvent, scale_down_limit
from env.commands import prometheus_memory_mib
from env.hpa import HPASpec
from env.local import LocalEnvironment
from env.settings import EnvSettings
from env.state import EnvStatus
from scenarios.pressure import InBackground, ramp
from slo import scaling
from slo.sources import Prometheus

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = "api"
FIRST_SCALE_OUT_S = 180.0  # the longest wait for the first scale-out of a ramp
FAST_WINDOW_S, FAST_PERIOD_S = 20, 10


def predicted_scale_up_s(
    spec: HPASpec, cfg: ControllerConfig, probe_period_s: float, scrape_s: float
) -> float:
    """The longest time to scale the spec allows, from the first exported metric sample above
    the threshold to an available replica beyond the count before: the scale-up window, one
    sync (the sync that first sees it may hold off, as the HPA does with pods not yet ready), one
    readiness probe period and one scrape.

    This is the bound for the HPA's view (from its own metric crossing). The replica's start-up
    is not in any spec: it is assumed to fit in one probe period (a replica of the reference
    system starts in about a second here), so a slower start shows as a ratio above 1."""
    window = float(spec.behavior.scale_up.stabilization_window_s or 0)
    return window + cfg.sync_period_s + probe_period_s + scrape_s


def predicted_scale_up_own_s(up_bound_s: float, cfg: ControllerConfig) -> float:
    """The same bound counted from the replicas' own CPU crossing the threshold: the HPA reads
    CPU averaged over the sync period before each sync, so its metric crosses up to one sync
    period after the replicas' does. (The bench's own signal is a rate too, but a lagging
    signal starts the clock later: it can only shorten the figure.)"""
    return up_bound_s + cfg.sync_period_s


def predicted_scale_down_s(
    spec: HPASpec, cfg: ControllerConfig, peak: int, scrape_s: float
) -> float:
    """The longest time from the load stopping to the minimum, for an HPA at `peak` replicas.

    The sync after the stop may still see the load (its metric window covers it): the last high
    recommendation is at most one sync after the stop; the first scale-down comes at the first
    sync a whole stabilization window later. From there the scale-down policies set the pace,
    computed by the controller's own limit (`scale_down_limit`) at each sync. Plus one scrape.
    inf when the policies never allow the minimum (`selectPolicy: Disabled`).
    """
    rules = spec.behavior.scale_down
    sync = cfg.sync_period_s
    window = float(
        cfg.downscale_stabilization_s
        if rules.stabilization_window_s is None
        else rules.stabilization_window_s
    )
    t = sync + math.ceil(window / sync) * sync
    current, events = peak, list[ScaleEvent]()
    for _ in range(10_000):
        if current <= spec.min_replicas:
            return t + scrape_s
        after = max(scale_down_limit(current, tuple(events), rules, t), spec.min_replicas)
        if after < current:
            events.append(ScaleEvent(t, after - current))
            current = after
            if current <= spec.min_replicas:
                return t + scrape_s
        elif rules.select_policy == "Disabled":
            return math.inf
        t += sync
    return math.inf


def cpu_signal(request_cores: float, window_s: float) -> str:
    """The API's CPU utilization from the replicas' own metrics, in % of their request: an
    overload signal independent of the HPA (on a cluster, cAdvisor's
    `container_cpu_usage_seconds_total` over `kube_pod_container_resource_requests`)."""
    sel = f'job="services",role="{WORKLOAD}"'
    return (
        f"100 * sum(rate(process_cpu_seconds_total{{{sel}}}[{window_s:g}s]))"
        f" / ({request_cores:g} * count(process_cpu_seconds_total{{{sel}}}))"
    )


@dataclass
class Ramp:
    """One ramp's outcome (times in seconds; UTC epoch for the instants)."""

    repeat: int
    jitter_s: float
    started: float
    stopped: float = 0.0
    peak: int = 0
    scaled: list[float] = field(default_factory=list)  # time to scale per episode (replicas' CPU)
    scaled_hpa: list[float] = field(default_factory=list)  # the same, from the HPA's view
    unreacted: int = 0  # episodes that ended without a new ready replica (either view)
    drained: bool = False  # back at the minimum by the HPA itself, within the wait
    drain_s: float | None = None
    predicted_up_s: float = 0.0  # from the HPA's view
    predicted_up_own_s: float = 0.0  # from the replicas' CPU
    predicted_down_s: float = 0.0
    tally: dict[str, Any] = field(default_factory=dict)
    problem: str = ""

    def add_problem(self, what: str) -> None:
        self.problem = f"{self.problem}; {what}" if self.problem else what


def replicas(env: LocalEnvironment) -> int:
    view = env.workloads()
    return len(next(w for w in view["workloads"] if w["name"] == WORKLOAD)["replicas"])


def scaled_out(env: LocalEnvironment, minimum: int) -> int | None:
    """The API's replica count once it is above `minimum`."""
    n = replicas(env)
    return n if n > minimum else None


def wait_for(check: Callable[[], Any], deadline_s: float, step_s: float = 1.0) -> Any:
    """`check()`'s first truthy value within the deadline, or None."""
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        if value := check():
            return value
        time.sleep(step_s)
    return None


def scraped_after(prom: Prometheus, t: float) -> bool:
    """Prometheus holds a sample of the HPA's current replicas scraped after `t`."""
    sel = f'horizontalpodautoscaler="{WORKLOAD}"'
    # timestamp() inside: of an aggregate it would be the evaluation time, always "after".
    q = f"max(timestamp({scaling.HPA}status_current_replicas{{{sel}}}))"
    return (prom.instant(q, time.time()) or 0) > t


def reaction_params() -> dict[str, str | float]:
    """The shipped `api-scale-up-reaction` definition's parameters: the bench measures what the
    SLO judges."""
    from slo.definitions import load

    slo = next(s for s in load() if s.name == f"{WORKLOAD}-scale-up-reaction")
    if slo.metric is None:
        raise ValueError(f"{slo.file}: {slo.name} reads no Prometheus metric")
    return dict(slo.metric.params)


def episodes(
    got: Mapping[str, scaling.Series], params: dict[str, str | float], end: float
) -> list[scaling.Episode]:
    return scaling.reaction_episodes(
        got["metric"],
        got["current"],
        got["available"],
        float(params["maximum"]),
        float(params["threshold"]),
        float(params.get("tolerance", 0.1)),
        end,
        settle_s=float(params.get("settle", 30.0)),
    )


def measure(
    prom: Prometheus,
    params: dict[str, str | float],
    signal: str,
    r: Ramp,
    end: float,
    minimum: int,
    step_s: float,
) -> None:
    """Fill `r`'s episodes, peak and drain time from Prometheus over [r.started, end]."""
    q = {**scaling.queries("scale-up-reaction", params), "signal": signal}
    got = {k: (prom.timed(v, r.started, end, step_s) or [[]])[0] for k, v in q.items()}
    own = episodes({**got, "metric": got["signal"]}, params, end)
    hpa_view = episodes(got, params, end)
    r.scaled = [e.duration_s for e in own if e.reacted]
    r.scaled_hpa = [e.duration_s for e in hpa_view if e.reacted]
    r.unreacted = sum(1 for e in own + hpa_view if not e.reacted)
    r.peak = int(max((v for _, v in got["current"]), default=0))
    # A ramp that did not drain by itself was scaled down by hand after the wait: that way back
    # is not the HPA's and has no time to drain.
    back = [t for t, v in got["current"] if t >= r.stopped and v <= minimum]
    r.drain_s = back[0] - r.stopped if back and r.drained else None


def one_ramp(
    env: LocalEnvironment,
    status: EnvStatus,
    spec: HPASpec,
    args: argparse.Namespace,
    r: Ramp,
    predicted_down: Callable[[int], float],
) -> None:
    """Scale out under a ramp, hold until quiet, stop, wait for the minimum (all bounded)."""
    driver = InBackground(
        status.urls["https"],
        status.tls_certificate,
        status.registration_secret or "",
        # Long enough for the wait for a first scale-out, the longest hold and a margin: the
        # load must not end before the bench says so.
        ramp(args.peak, up_s=30, hold_s=FIRST_SCALE_OUT_S + args.max_hold + 60),
    )
    env.autoscale(True)
    try:
        with driver:
            # Also ends when the driver stopped sending (it failed: stop() raises why).
            first = wait_for(
                lambda: scaled_out(env, spec.min_replicas) or not driver.running,
                FIRST_SCALE_OUT_S,
            )
            if isinstance(first, bool) or not first:
                driver.stop()
                r.problem = f"no scale-out within {FIRST_SCALE_OUT_S:g} s"
                return
            count, changed, until = first, time.monotonic(), time.monotonic() + args.max_hold
            while time.monotonic() < until and time.monotonic() - changed < args.quiet:
                time.sleep(1.0)  # watching the count each second while the load runs
                if (n := replicas(env)) != count:
                    count, changed = n, time.monotonic()
            # The load ends when the arrivals stop; the wait for requests in flight is not load.
            r.stopped = time.time()
            tally = driver.stop()
            r.tally = asdict(tally) if tally else {}
        bound = predicted_down(max(count, spec.min_replicas + 1))
        r.drained = bool(wait_for(lambda: replicas(env) <= spec.min_replicas, 2 * bound + 120))
        if not r.drained:
            r.problem = f"not back at {spec.min_replicas} within {2 * bound + 120:.0f} s"
    finally:
        # Best effort, never hiding what ended the ramp (a Ctrl-C, a failure above).
        # Each step on its own: a failed switch-off must not leave the next ramp scaled out.
        steps: list[Callable[[], object]] = [
            lambda: env.autoscale(False),
            lambda: env.scale(WORKLOAD, spec.min_replicas),
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:
                r.add_problem(f"not reset: {exc}")


def summarize(ramps: list[Ramp]) -> dict[str, Any]:
    """Each measurement against the bound for what it measures: the time to scale from the
    replicas' CPU against the own-CPU bound, from the HPA's view against the HPA's bound."""
    ups = [(s, r.predicted_up_own_s) for r in ramps for s in r.scaled]
    ups_hpa = [(s, r.predicted_up_s) for r in ramps for s in r.scaled_hpa]
    downs = [(r.drain_s, r.predicted_down_s) for r in ramps if r.drain_s is not None]
    return {
        "time_to_scale_s": distribution([s for s, _ in ups]),
        "time_to_scale_ratio": distribution([s / p for s, p in ups]),
        "time_to_scale_hpa_view_s": distribution([s for s, _ in ups_hpa]),
        "time_to_scale_hpa_view_ratio": distribution([s / p for s, p in ups_hpa]),
        "time_to_drain_s": distribution([d for d, _ in downs]),
        "time_to_drain_ratio": distribution([d / p for d, p in downs]),
        "unreacted_episodes": sum(r.unreacted for r in ramps),
        "problems": [f"#{r.repeat}: {r.problem}" for r in ramps if r.problem],
    }


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(ramps: list[Ramp], summary: dict[str, Any], out: Path, console: Console) -> None:
    table = Table(title=f"{WORKLOAD}: {len(ramps)} ramps")
    cols = ["ramp", "jitter s", "peak", "time to scale s", "predicted", "(HPA's view)"]
    cols += ["predicted", "drain s", "predicted"]
    for c in cols:
        table.add_column(c)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in ramps:
        cells = [
            str(r.repeat),
            _fmt(r.jitter_s),
            str(r.peak),
            ", ".join(_fmt(s) for s in r.scaled) or "-",
            _fmt(r.predicted_up_own_s),
            ", ".join(_fmt(s) for s in r.scaled_hpa) or "-",
            _fmt(r.predicted_up_s),
            _fmt(r.drain_s),
            _fmt(r.predicted_down_s),
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    for label, key in (
        ("time to scale", "time_to_scale"),
        ("time to scale (HPA's view)", "time_to_scale_hpa_view"),
        ("time to drain", "time_to_drain"),
    ):
        s, q = summary[f"{key}_s"], summary[f"{key}_ratio"]
        line = (
            f"{label}: p50 {_fmt(s['p50'])} s, p95 {_fmt(s['p95'])} s, max {_fmt(s['max'])} s "
            f"(n={s['n']}); measured / predicted p50 {_fmt(q['p50'], 2)}, "
            f"p95 {_fmt(q['p95'], 2)}, max {_fmt(q['max'], 2)}"
        )
        console.print(line)
        lines.append(f"\n{line}")
    for p in summary["problems"]:
        console.print(f"[red]{p}[/red]")
        lines.append(f"\nproblem: {p}")
    (out / "bench-scale.md").write_text("\n".join(lines) + "\n")
    _plot(ramps, out / "bench-scale.png")


def _plot(ramps: list[Ramp], path: Path) -> None:
    """Each measurement as a dot, the predicted bound of its ramp as a bar beside it."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    Group = tuple[str, list[tuple[int, float]], list[float]]  # label, points, bounds per ramp
    panels: tuple[tuple[str, list[Group]], ...] = (
        (
            "time to scale",
            [
                (
                    "from the replicas' CPU",
                    [(r.repeat, s) for r in ramps for s in r.scaled],
                    [r.predicted_up_own_s for r in ramps],
                ),
                (
                    "from the HPA's view",
                    [(r.repeat, s) for r in ramps for s in r.scaled_hpa],
                    [r.predicted_up_s for r in ramps],
                ),
            ],
        ),
        (
            "time to drain",
            [
                (
                    "measured",
                    [(r.repeat, r.drain_s) for r in ramps if r.drain_s is not None],
                    [r.predicted_down_s for r in ramps],
                )
            ],
        ),
    )
    repeats = [r.repeat for r in ramps]
    for ax, (title, groups) in zip(axes, panels, strict=True):
        top = 1.0
        for (label, points, bounds), color in zip(groups, ("tab:blue", "tab:orange"), strict=False):
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, marker="o", color=color, label=label, zorder=3)
                top = max(top, *ys)
            if bounds and any(math.isfinite(b) for b in bounds):
                ax.scatter(repeats, bounds, marker="_", s=400, color=color, label="its bound")
                top = max(top, *(b for b in bounds if math.isfinite(b)))
        ax.set_title(f"{title} ({WORKLOAD})")
        ax.set_xlabel("ramp")
        ax.set_xticks(repeats)
        ax.set_ylabel("seconds")
        ax.set_ylim(0, top * 1.15)
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="ramps (1-20)")
    parser.add_argument("--specs", choices=("shipped", "fast"), default="shipped")
    parser.add_argument("--sync", type=float, default=15.0, help="the HPA's sync period, s")
    parser.add_argument("--peak", type=float, default=250.0, help="reads/s at the ramp's top")
    parser.add_argument("--quiet", type=float, default=60.0, help="hold until no change for")
    parser.add_argument("--max-hold", type=float, default=300.0, help="longest hold, s")
    parser.add_argument("--seed", type=int, default=None, help="for the jitter")
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= 20:
        parser.error("--repeats must be between 1 and 20")
    if not 1 <= args.sync <= 60:
        parser.error("--sync must be between 1 and 60 s")
    if not 10 <= args.peak <= 5000:
        parser.error("--peak must be between 10 and 5000 reads/s")
    if not 5 <= args.quiet <= args.max_hold <= 3600:
        parser.error("need 5 <= --quiet <= --max-hold <= 3600 s")
    console = Console()
    rng = random.Random(args.seed)
    base = int(os.environ.get("CWH_BENCH_BASE_PORT", "22000"))
    run_dir = Path(f"/var/tmp/cwh-bench-{base}")
    hpa_dir = hpa.DEFAULT_DIR
    if args.specs == "fast":
        hpa_dir = hpa.write_fast_scale_down(
            Path(f"/var/tmp/cwh-bench-{base}-hpa"), FAST_WINDOW_S, FAST_PERIOD_S
        )
    settings = EnvSettings(
        base_port=base,
        run_dir=run_dir,
        autoscale=False,  # on for each ramp only: between ramps the count is reset by hand
        autoscale_sync_s=args.sync,
        hpa_dir=hpa_dir,
    )
    # Prometheus's memory limit for what the ramps reach (the autoscaler's), not the start's.
    hpas = hpa.load(hpa_dir)
    on = dataclasses.replace(settings, autoscale=True)
    settings = dataclasses.replace(
        settings, prometheus_memory_mib=prometheus_memory_mib(on, topology.build(on, hpas))
    )
    spec = hpas[WORKLOAD]
    cfg = ControllerConfig(sync_period_s=args.sync)
    workload = topology.build(settings, hpas).workload(WORKLOAD)
    probe_s = workload.readiness.period_s if workload.readiness else 0.0
    scrape_s = settings.scrape_interval_s
    up_bound = predicted_scale_up_s(spec, cfg, probe_s, scrape_s)
    console.print(
        f"{WORKLOAD}: {args.specs} specs ({hpa_dir}), sync {args.sync:g} s; predicted time to "
        f"scale <= {up_bound:.0f} s, time to drain from 6 replicas <= "
        f"{predicted_scale_down_s(spec, cfg, 6, scrape_s):.0f} s"
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = (ROOT / "reports" / f"{stamp}-bench-scale").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp_versions(out)  # the versions that run, before anything changes
    params = reaction_params()
    request = (workload.resources.cpu_request_m or 1000) / 1000
    # Three scrapes: short, so the crossing is seen when it happens (a rate over a sync period
    # would lag as much as the HPA it is meant to time), long enough for one spike not to be it.
    signal = cpu_signal(request, 3 * scrape_s)
    ramps: list[Ramp] = []
    env = LocalEnvironment(settings)
    env.reset()
    interrupted = False
    try:
        with env:  # up on entering, down on leaving (also on Ctrl-C)
            status = wait_for(lambda: (st := env.state()).healthy and st, 120)
            if not status:
                console.print("[red]the environment never became healthy[/red]")
                return 1
            prom = Prometheus(status.urls["prometheus"])
            for i in range(args.repeats):
                jitter = rng.uniform(0, args.sync)
                console.log(f"ramp {i + 1}/{args.repeats}: starting in {jitter:.1f} s")
                time.sleep(jitter)  # a random phase of the HPA's sync loop, not a synchronization
                r = Ramp(
                    i + 1,
                    jitter,
                    time.time(),
                    predicted_up_s=up_bound,
                    predicted_up_own_s=predicted_scale_up_own_s(up_bound, cfg),
                )
                try:
                    one_ramp(
                        env,
                        status,
                        spec,
                        args,
                        r,
                        lambda n: predicted_scale_down_s(spec, cfg, n, scrape_s),
                    )
                except Exception as exc:  # this ramp is reported as failed; the next one runs
                    r.add_problem(f"{type(exc).__name__}: {exc}")
                after = time.time() + scrape_s
                if r.stopped:
                    # Prometheus holds the way back once it holds a scrape taken after it.
                    if not wait_for(functools.partial(scraped_after, prom, after), 30):
                        r.problem = "Prometheus holds no sample of the way back after 30 s"
                    measure(prom, params, signal, r, time.time(), spec.min_replicas, scrape_s)
                    r.predicted_down_s = predicted_scale_down_s(
                        spec, cfg, max(r.peak, spec.min_replicas), scrape_s
                    )
                console.log(
                    f"ramp {i + 1}: peak {r.peak}, time to scale "
                    f"{', '.join(_fmt(s) for s in r.scaled) or '-'} s (HPA's view "
                    f"{', '.join(_fmt(s) for s in r.scaled_hpa) or '-'}; bound {up_bound:.0f}), "
                    f"drain {_fmt(r.drain_s)} s (bound {_fmt(r.predicted_down_s)}) {r.problem}"
                )
                ramps.append(r)
    except KeyboardInterrupt:
        # The environment is down (its context manager ran); what was measured is reported.
        interrupted = True
        console.print(f"[yellow]interrupted after {len(ramps)} ramp(s)[/yellow]")
    summary = summarize(ramps)
    settings_used = {"specs": args.specs, "sync_s": args.sync, "peak": args.peak}
    (out / "bench-scale.json").write_text(
        json.dumps(
            {"settings": settings_used, "ramps": [asdict(r) for r in ramps], "summary": summary},
            indent=2,
        )
    )
    report(ramps, summary, out, console)
    try_write_html(out, "", console)  # the figures and the plots, in one page
    console.print(f"bench-scale: {out}")
    # A benchmark reports; it fails only when a ramp could not be measured.
    measured = quantile([s for r in ramps for s in r.scaled], 0.5) is not None
    if interrupted:
        return 130
    return 0 if measured and not summary["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
