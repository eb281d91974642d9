"""`make bench-dr`: restore time as a function of the database's size.

On an environment of its own (base port 22000 unless CWH_BENCH_BASE_PORT says otherwise), for
each size (rows of the requests table, 10^4, 10^5, 10^6 by default): the table is seeded to that
size, a full backup taken, a tenth more rows written after it (WAL a restore must replay) and
archived; then the newest backup and the archive are restored twice: into a scratch instance,
which times the two phases apart (pgBackRest copying the backup's files, PostgreSQL replaying
the archive: the replay rate), and as the whole cluster (`env.restore.restore_cluster`, the
runbook of `dr-restore-cluster`: the time until the restored primary serves, and until the
replicas stream again). A straight line through the sizes extrapolates the restore to a size
the seed's system may reach (`--extrapolate-gb`), against the seed's RTO of 15 minutes.

Writes `reports/<UTC>-bench-dr/` (bench-dr.json, .md, .png). The environment is torn down at
the end, also on Ctrl-C. Time on a shared machine is noisy: compare sizes within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import matplotlib

from cwh.report.versions import stamp_versions

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import psycopg
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench import dr_region
from cwh.report import try_write_html
from env.local import LocalEnvironment
from env.process import wait_until
from env.restore import (
    archive_now,
    backup_when_free,
    restore_cluster,
    scratch_instance,
    serving_primary,
)
from env.settings import EnvSettings

ROOT = Path(__file__).resolve().parents[1]
#: The seed's recovery time objective.
RTO_OBJECTIVE_S = 15 * 60
#: Rows written per statement while seeding (one transaction each: bounded WAL per commit).
BATCH = 50_000

#: Requests as the API writes them: a sealed document (~128 bytes) and instruction (~64), done.
SEED = """
INSERT INTO requests (device_id, request_id, idempotency_key, body_hash, provider,
    document_enc, instruction_enc, status, correlation_id, created_at, updated_at)
SELECT gen_random_uuid(), gen_random_uuid(), md5(i::text || clock_timestamp()::text),
    decode(md5(i::text), 'hex'), 'gdrive', decode(repeat(md5(i::text), 8), 'hex'),
    decode(repeat(md5((i + 1)::text), 4), 'hex'), 'completed', md5(i::text),
    now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, %s) AS i
"""


def _primary_url(env: LocalEnvironment) -> str:
    status = env.state()
    primary = serving_primary(status)
    if primary is None:
        raise RuntimeError("no primary serves")
    return str(status.urls["members"][primary])


def seed_to(env: LocalEnvironment, rows: int) -> int:
    """Top the requests table up to `rows`; returns the rows written."""
    with psycopg.connect(_primary_url(env), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM requests").fetchone()
        have = int(row[0]) if row else 0
        todo = max(0, rows - have)
        left = todo
        while left > 0:
            n = min(BATCH, left)
            conn.execute(SEED, (n,))
            left -= n
        conn.execute("VACUUM ANALYZE requests")
    return todo


def database_bytes(env: LocalEnvironment) -> int:
    with psycopg.connect(_primary_url(env), connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_database_size('cloudwatcher')").fetchone()
    return int(row[0]) if row else 0


def wal_lsn(env: LocalEnvironment) -> int:
    """The primary's WAL position, in bytes."""
    with psycopg.connect(_primary_url(env), connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def measure_size(env: LocalEnvironment, rows: int, say: Any) -> dict[str, Any]:
    """One size: seed, back up, write a tenth more, archive, restore twice (module doc)."""
    say(f"{rows:,} rows: seeding")
    seed_to(env, rows)
    say(f"{rows:,} rows: full backup")
    t = time.monotonic()
    backup = backup_when_free(env, "full")
    backup_s = time.monotonic() - t
    say(f"{rows:,} rows: writing the WAL to replay")
    lsn0 = wal_lsn(env)
    seed_to(env, rows + rows // 10)
    wal = wal_lsn(env) - lsn0
    archive_now(env, timeout_s=600)
    size = database_bytes(env)
    say(f"{rows:,} rows: scratch restore")
    phases: dict[str, float] = {}
    with scratch_instance(env, 1800, phases) as url, psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM requests").fetchone()
        restored_rows = int(row[0]) if row else 0
    say(f"{rows:,} rows: restoring the cluster")
    done = restore_cluster(env, timeout_s=1800)
    return {
        "rows": rows,
        "restored_rows": restored_rows,
        "database_bytes": size,
        "backup_bytes": backup["bytes"],
        "repo_bytes": backup["repo_bytes"],
        "backup_s": round(backup_s, 3),
        "wal_bytes": wal,
        "copy_s": phases["copy_s"],
        "replay_s": phases["replay_s"],
        "replay_mb_s": round(wal / 1e6 / phases["replay_s"], 2) if phases["replay_s"] else None,
        "cluster_primary_s": done["primary_s"],
        "cluster_whole_s": done["whole_s"],
    }


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares: y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return my - b * mx, b


def plot(results: list[dict[str, Any]], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    gb = [r["database_bytes"] / 1e9 for r in results]
    for key, label in (
        ("copy_s", "copy the backup (pgBackRest)"),
        ("replay_s", "replay the archive"),
        ("cluster_primary_s", "cluster: restored primary serves"),
        ("cluster_whole_s", "cluster: replicas streaming"),
    ):
        left.plot(gb, [r[key] for r in results], marker="o", label=label)
    left.set_xscale("log")
    left.set_xlabel("database size, GB (log)")
    left.set_ylabel("seconds")
    left.set_title("restore time by database size")
    left.legend(fontsize="small")
    right.bar([f"{r['rows']:,}" for r in results], [r["replay_mb_s"] or 0 for r in results])
    right.set_xlabel("rows")
    right.set_ylabel("MB of WAL per second")
    right.set_title("WAL replay rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(
    results: list[dict[str, Any]], extrapolate_gb: float
) -> tuple[list[str], dict[str, float]]:
    xs = [r["database_bytes"] / 1e9 for r in results]
    a, b = fit(xs, [r["cluster_primary_s"] for r in results])
    predicted = a + b * extrapolate_gb
    # The size at which the line reaches the objective (None when it never does).
    limit_gb = (RTO_OBJECTIVE_S - a) / b if b > 0 else None
    lines = [
        "| rows | database MB | backup MB (repo) | backup s | WAL MB | copy s | replay s "
        "| replay MB/s | cluster: primary s | cluster: whole s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['database_bytes'] / 1e6:.0f} | {r['backup_bytes'] / 1e6:.0f} "
            f"({r['repo_bytes'] / 1e6:.0f}) | {r['backup_s']:.1f} | {r['wal_bytes'] / 1e6:.0f} "
            f"| {r['copy_s']:.1f} | {r['replay_s']:.1f} | {r['replay_mb_s']} "
            f"| {r['cluster_primary_s']:.1f} | {r['cluster_whole_s']:.1f} |"
        )
    verdict = "holds" if predicted < RTO_OBJECTIVE_S else "does NOT hold"
    lines += [
        "",
        f"Cluster restore to a serving primary ~ {a:.1f} s + {b:.2f} s per GB (least squares "
        f"over {len(results)} sizes). Extrapolated to {extrapolate_gb:g} GB: {predicted:.0f} s "
        f"({predicted / 60:.1f} min): the seed's RTO of 15 min {verdict} there, before the time "
        "to notice the loss and decide to restore (the drills' detect_s)"
        + (f"; it holds up to about {limit_gb:.0f} GB." if limit_gb is not None else "."),
    ]
    fitted = {"a_s": a, "b_s_per_gb": b, "gb": extrapolate_gb, "predicted_s": predicted}
    if limit_gb is not None:
        fitted["limit_gb"] = limit_gb
    return lines, fitted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes", default="10000,100000,1000000", help="rows, comma separated, ascending"
    )
    parser.add_argument("--extrapolate-gb", type=float, default=100.0)
    parser.add_argument(
        "--region-trials",
        type=int,
        default=5,
        help="runs of the region-loss drill, for its RPO distribution (0-20; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=None, help="for the region trials' jitter")
    args = parser.parse_args(argv)
    if not 0 <= args.region_trials <= 20:
        parser.error("--region-trials must be between 0 and 20")
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes: whole numbers of rows, comma separated")
    if sizes != sorted(sizes) or not all(1000 <= s <= 10_000_000 for s in sizes):
        parser.error("--sizes must be ascending, each between 1000 and 10,000,000 rows")
    console = Console()
    base = int(os.environ.get("CWH_BENCH_BASE_PORT", "22000"))
    settings = EnvSettings(base_port=base, run_dir=Path(f"/var/tmp/cwh-bench-{base}"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = (ROOT / "reports" / f"{stamp}-bench-dr").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp_versions(out)  # the versions that run, before anything changes
    env = LocalEnvironment(settings)
    env.reset()
    results: list[dict[str, Any]] = []
    region: list[dict[str, Any]] = []
    with env, Progress(console=console) as progress:  # down on leaving, also on Ctrl-C
        if args.region_trials:
            # First, while the database is small: each trial clones it into a second region.
            trials = progress.add_task("region-loss drills", total=args.region_trials)

            def done(text: str) -> None:
                progress.console.log(text)
                progress.advance(trials)

            try:
                region = dr_region.region_trials(
                    settings, args.region_trials, out, random.Random(args.seed), done
                )
            finally:
                dr_region.remove_second_region(settings, out)
        task = progress.add_task("restores", total=len(sizes))
        progress.update(task, description="waiting for the scheduler's first backup")
        wait_until(lambda: env.state().healthy and env.backups(), 300, "the first backup", 2)
        for rows in sizes:
            result = measure_size(env, rows, lambda m: progress.update(task, description=m))
            results.append(result)
            progress.console.log(
                f"{rows:,} rows ({result['database_bytes'] / 1e6:.0f} MB): copy "
                f"{result['copy_s']:.1f} s, replay {result['replay_s']:.1f} s, cluster serving "
                f"in {result['cluster_primary_s']:.1f} s"
            )
            progress.advance(task)
    lines, fitted = report(results, args.extrapolate_gb)
    md = "# Restore time by database size\n\n" + "\n".join(lines) + "\n"
    summary = None
    if region:
        summary = dr_region.summarize(region)
        region_md = dr_region.lines(summary, region)
        md += "\n# Region loss: the tail and the time to serve again\n\n" + "\n".join(region_md)
        dr_region.plot(region, out / "bench-dr-region.png")
    result = {"results": results, "fit": fitted, "region": {"trials": region, "summary": summary}}
    (out / "bench-dr.json").write_text(json.dumps(result, indent=2))
    (out / "bench-dr.md").write_text(md + "\n")
    plot(results, out / "bench-dr.png")
    try_write_html(out, "", console)  # the figures and the plots, in one page
    table = Table(title="restore time by database size")
    for col in ("rows", "DB MB", "copy s", "replay s", "replay MB/s", "primary s", "whole s"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            f"{r['rows']:,}",
            f"{r['database_bytes'] / 1e6:.0f}",
            f"{r['copy_s']:.1f}",
            f"{r['replay_s']:.1f}",
            str(r["replay_mb_s"]),
            f"{r['cluster_primary_s']:.1f}",
            f"{r['cluster_whole_s']:.1f}",
        )
    console.print(table)
    console.print(lines[-1])
    if region:
        console.print(dr_region.lines(dr_region.summarize(region), region)[-1])
    console.print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
