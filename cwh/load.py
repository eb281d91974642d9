"""`cwh load` / `make load`: bring the local environment up and run a bounded load against it.

Until the device fleets land (issue "Device fleets"), the load is a steady write loop through
HAProxy's write path, every operation in the ledger, and a reconciliation of every acknowledged
write at the end. Writes `reports/<UTC timestamp>-load/` and points `reports/latest` at it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from env.local import EnvironmentStartError, LocalEnvironment
from env.settings import EnvSettings
from scenarios.write_loop import WriteLoop, present_ids
from slo.ledger import Operation
from slo.recovery import reconcile_writes


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summarize(
    ops: list[Operation], duration_s: float, reconciliation: dict[str, Any]
) -> dict[str, Any]:
    ok = sorted(o.latency_s * 1000 for o in ops if o.outcome == "ok")
    return {
        "operations": len(ops),
        "ok": len(ok),
        "fail": sum(o.outcome == "fail" for o in ops),
        "info": sum(o.outcome == "info" for o in ops),
        "duration_s": round(duration_s, 2),
        "throughput_per_s": round(len(ok) / duration_s, 2) if duration_s else 0.0,
        "latency_ms": {
            "p50": round(percentile(ok, 50), 3),
            "p95": round(percentile(ok, 95), 3),
            "p99": round(percentile(ok, 99), 3),
            "max": round(ok[-1], 3) if ok else None,
            "mean": round(statistics.fmean(ok), 3) if ok else None,
        },
        "reconciliation": reconciliation,
    }


def write_report(
    out: Path, ops: list[Operation], summary: dict[str, Any], settings: EnvSettings
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ledger.jsonl", "w") as f:
        for op in ops:
            f.write(json.dumps(op.to_json()) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    rec = summary["reconciliation"]
    lat = summary["latency_ms"]
    verdict = "PASS" if rec["valid"] else "FAIL: acknowledged writes lost"
    (out / "summary.md").write_text(
        f"# Load run: {verdict}\n\n"
        f"- environment: local, base port {settings.base_port}\n"
        f"- {summary['operations']} writes in {summary['duration_s']} s: {summary['ok']} ok, "
        f"{summary['fail']} fail, {summary['info']} info "
        f"({summary['throughput_per_s']} ok/s)\n"
        f"- latency (ok writes): p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
        f"p99 {lat['p99']} ms, max {lat['max']} ms\n"
        f"- reconciliation: {rec['acknowledged']} acknowledged, {rec['lost']} lost, "
        f"{rec['info']} unknown ({rec['info_present']} of them present)\n"
    )
    latest = out.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(out.name)


def run_load(settings: EnvSettings, duration_s: float, rate_per_s: float, console: Console) -> int:
    """Returns the exit code: 0 when the run completed and lost nothing acknowledged."""
    if not 1 <= duration_s <= 3600:
        console.print(f"[red]error:[/red] DURATION={duration_s:g}: must be 1 to 3600 seconds")
        return 2
    if not 1 <= rate_per_s <= 2000:
        console.print(f"[red]error:[/red] RATE={rate_per_s:g}: must be 1 to 2000 per second")
        return 2
    env = LocalEnvironment(settings)
    with console.status("bringing the local environment up…"):
        try:
            env.up()
        except EnvironmentStartError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
    status = env.status()
    url = status["urls"]["write"]
    loop = WriteLoop(
        url,
        rate_per_s=rate_per_s,
        max_duration_s=duration_s,
        max_ops=int(duration_s * rate_per_s) + 1,
    )
    loop.prepare()
    started = time.monotonic()
    loop.start()
    columns = (
        TextColumn("[bold]load[/bold]"),
        BarColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("load", total=duration_s, stats="")
            while (elapsed := time.monotonic() - started) < duration_s:
                ops = loop.snapshot()
                ok = [o.latency_s * 1000 for o in ops[-500:] if o.outcome == "ok"]
                stats = (
                    f"{sum(o.outcome == 'ok' for o in ops)} ok "
                    f"{sum(o.outcome == 'fail' for o in ops)} fail "
                    f"{sum(o.outcome == 'info' for o in ops)} info "
                    f"p99 {percentile(sorted(ok), 99):.1f} ms"
                )
                progress.update(task, completed=elapsed, stats=stats)
                time.sleep(0.5)
            progress.update(task, completed=duration_s)
    finally:
        ops = loop.stop()
    duration = time.monotonic() - started
    rec = reconcile_writes(ops, present_ids(url, [o.op_id for o in ops]))
    summary = summarize(ops, duration, rec)
    out = Path("reports") / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-load"
    write_report(out, ops, summary, settings)
    console.print((out / "summary.md").read_text())
    console.print(f"report: {out}")
    return 0 if rec["valid"] and summary["ok"] > 0 else 1
