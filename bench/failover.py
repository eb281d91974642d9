"""`make bench-failover`: repeated primary kills under a steady write loop.

Kills the primary's postgres and, separately, its Patroni, N times each, on an environment of its
own (base port 21000 unless CWH_BENCH_BASE_PORT says otherwise), and prints min / median / max
RTO and the count of lost acknowledged writes per fault. The environment is torn down at the end,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cwh.report.versions import stamp_versions
from env.configs import worst_case_failover_s
from env.local import LocalEnvironment
from env.settings import EnvSettings
from experiments.pg_failover import KILL_PATRONI, KILL_POSTGRES, measure_failover


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=3, help="kills of each kind (1 to 20)")
    parser.add_argument("--rate", type=float, default=50.0, help="writes per second")
    args = parser.parse_args(argv)
    if not 1 <= args.kills <= 20:
        parser.error("--kills must be between 1 and 20")
    console = Console()
    base = int(os.environ.get("CWH_BENCH_BASE_PORT", "21000"))
    settings = EnvSettings(
        base_port=base,
        run_dir=Path(f"/var/tmp/cwh-bench-{base}"),
        failover=os.environ.get("CWH_FAILOVER") or "standard",
    )
    env = LocalEnvironment(settings)
    env.reset()
    results: list[dict[str, Any]] = []
    with env:
        faults = [KILL_POSTGRES, KILL_PATRONI]
        with Progress(console=console) as progress:
            task = progress.add_task("failovers", total=args.kills * len(faults))
            for _ in range(args.kills):
                for fault in faults:
                    progress.update(task, description=f"{fault.name}")
                    result = measure_failover(env, fault, rate_per_s=args.rate)
                    results.append(result)
                    progress.console.log(
                        f"{fault.name}: RTO {result['rto_s']:.2f} s, "
                        f"{result['primary_before']} -> {result['primary_after']}, "
                        f"lost {result['reconciliation']['lost']}"
                    )
                    progress.advance(task)
    table = Table(
        title=f"PostgreSQL failover, {args.kills} kills each, {args.rate:g} writes/s "
        f"(promised worst case {worst_case_failover_s(settings.timing):g} s, "
        f"{settings.failover} profile)"
    )
    table.add_column("fault")
    for col in ("RTO min s", "median s", "max s", "acked", "lost", "info"):
        table.add_column(col, justify="right")
    summary: dict[str, dict[str, Any]] = {}
    for name in ("kill-primary-postgres", "kill-primary-patroni"):
        rows = [r for r in results if r["fault"] == name]
        rtos = [r["rto_s"] for r in rows]
        rec = [r["reconciliation"] for r in rows]
        summary[name] = {
            "rto_s": rtos,
            "lost": sum(x["lost"] for x in rec),
            "acknowledged": sum(x["acknowledged"] for x in rec),
            "info": sum(x["info"] for x in rec),
        }
        table.add_row(
            name,
            f"{min(rtos):.2f}",
            f"{statistics.median(rtos):.2f}",
            f"{max(rtos):.2f}",
            str(summary[name]["acknowledged"]),
            str(summary[name]["lost"]),
            str(summary[name]["info"]),
        )
    console.print(table)
    out = Path("reports") / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-bench-failover"
    out.mkdir(parents=True, exist_ok=True)
    stamp_versions(out)  # the versions that run, before anything changes
    (out / "results.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    console.print(f"results: {out / 'results.json'}")
    from cwh.report import try_write_html

    try_write_html(out, "", console)
    return 1 if any(s["lost"] for s in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
