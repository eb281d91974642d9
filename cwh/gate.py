"""`cwh slo check`: the release gate over a run or a window, its outputs written where the run
is (or in `reports/<UTC>-slo/`), its verdict as the exit code."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from slo import report
from slo.definitions import DEFAULT_DIR, DefinitionError, load
from slo.gate import (
    EXIT_INCONCLUSIVE,
    EXIT_PASS,
    Context,
    as_json,
    baseline_values,
    evaluate,
    exit_code,
)
from slo.ledger import write_atomic
from slo.sources import Prometheus, RunData, SourceUnavailable, Window


@dataclass(frozen=True)
class GateOptions:
    """Attributes:
    run: a run folder (its summary.json gives the window and the run's own data), or None.
    window: the evaluated window when there is no run (or to override the run's).
    prometheus_url: "" to evaluate without Prometheus (its SLOs then have no data).
    definitions: a file or a folder of SLO definitions.
    baseline: a previous run folder with an slo.json, for the baseline comparisons.
    out: where slo.json, slo-junit.xml and slo.md go (default: the run folder).
    on_inconclusive: the exit code when the gate is inconclusive (2 by default).
    only: evaluate these SLOs (by name) and no others; empty: every definition.
    """

    run: Path | None = None
    window: Window | None = None
    prometheus_url: str = ""
    definitions: Path = DEFAULT_DIR
    baseline: Path | None = None
    out: Path | None = None
    on_inconclusive: int = EXIT_INCONCLUSIVE
    only: tuple[str, ...] = ()


def check(opts: GateOptions, console: Console) -> int:
    try:
        slos = load(opts.definitions)
    except DefinitionError as exc:
        console.print(f"[red]error:[/red] SLO definition: {exc}")
        return EXIT_INCONCLUSIVE
    if opts.only:
        if missing := sorted(set(opts.only) - {s.name for s in slos}):
            console.print(f"[red]error:[/red] no such SLO: {', '.join(missing)}")
            return EXIT_INCONCLUSIVE
        slos = [s for s in slos if s.name in opts.only]
    try:
        run = RunData(opts.run)
        window = opts.window or run.window()
        if window is None:
            console.print("[red]error:[/red] no window: give --run (a run folder) or --from/--to")
            return EXIT_INCONCLUSIVE
        prometheus = None
        if opts.prometheus_url and any(
            s.kind in ("prometheus", "scaling") for o in slos for s in o.sources
        ):
            prometheus = Prometheus(opts.prometheus_url)
            prometheus.check()
        baseline = baseline_values(opts.baseline) if opts.baseline else None
        ctx = Context(window=window, prometheus=prometheus, run=run, baseline=baseline)
        verdicts = [evaluate(slo, ctx) for slo in slos]
    except SourceUnavailable as exc:
        # Never a pass: without its data the gate cannot say the release is good.
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_INCONCLUSIVE
    except (OSError, ValueError, KeyError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_INCONCLUSIVE
    code = exit_code(verdicts, opts.on_inconclusive)
    # Acknowledged requests the read-back could not answer may be lost: never a pass.
    unknown = run.value("reconciliation.unknown") or 0
    if code == EXIT_PASS and unknown:
        code = opts.on_inconclusive
    out = opts.out or opts.run
    if out is None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = (Path("reports") / f"{stamp}-slo").resolve()
    result = as_json(
        verdicts,
        window,
        code,
        {
            "prometheus": opts.prometheus_url or None,
            "definitions": str(opts.definitions),
            "run": str(opts.run) if opts.run else None,
            "baseline": str(opts.baseline) if opts.baseline else None,
            "unknown_requests": int(unknown),
        },
    )
    report.write(out, verdicts, result, suite=out.name)
    start, end = window.iso()
    report.print_verdicts(verdicts, f"SLO gate, {start} to {end}", console)
    if unknown:
        console.print(
            f"[magenta]{unknown:g} acknowledged request(s) unknown[/]: the read-back got no "
            "answer for them (summary.md), so the run cannot pass"
        )
    if opts.baseline is not None and opts.run is not None:
        _noise_aware_baseline(opts.baseline, opts.run, out, console)
    word = {0: "[green]PASS[/green]", 1: "[red]FAIL[/red]"}.get(code, "[magenta]INCONCLUSIVE[/]")
    console.print(f"SLO gate: {word} (exit code {code}); slo.json, slo-junit.xml, slo.md in {out}")
    return code


def _noise_aware_baseline(baseline: Path, run: Path, out: Path, console: Console) -> None:
    """Beside the SLOs' own regression limits (one measured value against the baseline's):
    what changed from the baseline run beyond its noise, judged over every sample both runs
    hold (latencies, repeated trials' RTOs), as `cwh report compare` does. Written to
    `baseline-compare.json`; it informs, the SLOs' limits decide the exit code."""
    from cwh.report.compare import compare, read_figures, text_table

    changes = compare(read_figures(baseline), read_figures(run))
    write_atomic(
        out / "baseline-compare.json", json.dumps([c.to_json() for c in changes], indent=2)
    )
    console.print(text_table(changes, str(baseline), str(run)))
    if worse := [c.figure for c in changes if c.regression]:
        console.print(f"[red]worse than the baseline beyond noise[/red]: {', '.join(worse)}")
