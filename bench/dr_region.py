"""`make bench-dr`'s region part: the region-loss drill (`dr-region-loss`) repeated, each with
its fault after a random 10 to 30 s of load, for the distributions of what a region loss costs:
the acknowledged requests lost (the RPO, request by request), the tail the lost region committed
and never sent (database against database), and the time to serve again.

The asynchronous cross-region link carries a write in about its one-way delay (35 ms), so the
tail is whatever was committed in the last tens of milliseconds: most trials lose nothing, some
lose a request or two. One trial says little; the distribution is the figure.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.chaos import distribution, run_once
from env.settings import EnvSettings

EXPERIMENT = "dr-region-loss"


def trial_figures(run: dict[str, Any]) -> dict[str, Any]:
    """One trial's figures from its `bench-chaos`-style entry; `ok` False when it measured
    nothing (the run failed before its measure) or did not recover."""
    chaos = run.get("chaos") or {}
    region = chaos.get("region") or {}
    failover, divergence = region.get("failover") or {}, region.get("divergence") or {}
    rto = chaos.get("rto_s") or {}
    return {
        "repeat": run["repeat"],
        "code": run["code"],
        "ok": bool(chaos) and all((chaos.get("recovered") or {}).values()) and bool(divergence),
        "acknowledged": chaos.get("acknowledged"),
        "lost": chaos.get("lost"),
        "rpo_s": (chaos.get("rpo_s") or {}).get("max"),
        "not_carried": divergence.get("not_carried"),
        "committed": divergence.get("committed"),
        "promoted_s": failover.get("promoted_s"),
        "serving_s": failover.get("serving_s"),
        "rto_write_s": rto.get("write"),
        "rto_notification_s": rto.get("notification"),
    }


def region_trials(
    settings: EnvSettings, trials: int, out: Path, rng: random.Random, log: Any
) -> list[dict[str, Any]]:
    """Run the drill `trials` times on the environment of `settings`; each run's folder
    under `out/dr-region-loss-<n>`. `log(text)` reports each trial."""
    figures = []
    for i in range(trials):
        baseline = rng.randint(10, 30)
        folder = out / f"{EXPERIMENT}-{i + 1}"
        run = run_once(settings, EXPERIMENT, i + 1, baseline, folder, 20, timeout_s=1200)
        if run["code"] is None:  # cut at its timeout: its restore may not have run
            restore_after(settings, folder)
        f = trial_figures(run)
        figures.append(f)
        log(
            f"region loss #{i + 1} (fault after {baseline} s): exit {f['code']}, lost "
            f"{f['lost']} of {f['acknowledged']} acknowledged, {f['not_carried']} committed "
            f"never carried, serving at +{f['serving_s']} s, RTO write {f['rto_write_s']} s"
        )
    return figures


def restore_after(settings: EnvSettings, folder: Path) -> None:
    """What `cwh chaos stop` does for a trial cut short: the primary region back, the second
    region gone, every fault undone (the next trial needs the environment whole)."""
    from experiments.harness import restore_all
    from experiments.settings import ChaosSettings

    runs = sorted(folder.glob("*-chaos-*")) or [folder]
    restore_all(ChaosSettings(env=settings, run_dir=runs[0]), wait_s=300, stop_fleet=True)


def remove_second_region(settings: EnvSettings, out: Path) -> None:
    """The drills' second region, if one outlived its trial (a trial killed at its timeout)."""
    from experiments.activities.region.actions import drill_record, second_region
    from experiments.settings import ChaosSettings

    env2 = second_region(ChaosSettings(env=settings, run_dir=out))
    if env2 is not None:
        env2.reset()
        drill_record(settings).unlink(missing_ok=True)


def summarize(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """Distributions over the trials that measured and recovered; the others counted (each
    is in the table, with whatever it measured)."""
    ok = [f for f in figures if f["ok"]]
    return {
        "trials": len(figures),
        "measured": len(ok),
        "unrecovered": len(figures) - len(ok),
        "lost": distribution([f["lost"] for f in ok]),
        "lost_total": sum(f["lost"] for f in ok),
        "not_carried": distribution([f["not_carried"] for f in ok]),
        "rpo_s": distribution([f["rpo_s"] for f in ok if f["rpo_s"] is not None]),
        "serving_s": distribution([f["serving_s"] for f in ok if f["serving_s"] is not None]),
        "rto_write_s": distribution([f["rto_write_s"] for f in ok if f["rto_write_s"]]),
        "trials_losing": sum(1 for f in ok if f["lost"]),
    }


def lines(summary: dict[str, Any], figures: list[dict[str, Any]]) -> list[str]:
    """The report's region section (Markdown)."""

    def d(x: dict[str, Any]) -> str:
        return "/".join("-" if x[k] is None else f"{x[k]:g}" for k in ("p50", "p95", "max"))

    out = [
        "| trial | exit | acknowledged | lost | RPO s | committed, never carried | promoted s "
        "| serving s | RTO write s | RTO notification s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        out.append(
            f"| {f['repeat']} | {f['code']} | {f['acknowledged']} | {f['lost']} | {f['rpo_s']} "
            f"| {f['not_carried']} of {f['committed']} | {f['promoted_s']} | {f['serving_s']} "
            f"| {f['rto_write_s']} | {f['rto_notification_s']} |"
        )
    s = summary
    out += [
        "",
        f"Over {s['measured']} measured trials of {s['trials']} ({s['unrecovered']} did not "
        "measure or recover: see the table) (p50/p95/max): acknowledged "
        f"requests lost {d(s['lost'])} ({s['lost_total']} in all, {s['trials_losing']} trials "
        f"lost any), committed and never carried {d(s['not_carried'])}, RPO {d(s['rpo_s'])} s "
        f"against the seed's 300 s; serving again {d(s['serving_s'])} s after the loss, write "
        f"RTO {d(s['rto_write_s'])} s against the seed's 900 s.",
    ]
    return out


def plot(figures: list[dict[str, Any]], path: Path) -> None:
    ok = [f for f in figures if f["ok"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    trials = [f["repeat"] for f in ok]
    left.bar([t - 0.2 for t in trials], [f["lost"] for f in ok], 0.4, label="acknowledged, lost")
    left.bar(
        [t + 0.2 for t in trials],
        [f["not_carried"] for f in ok],
        0.4,
        label="committed, never carried",
    )
    left.set_xlabel("trial")
    left.set_ylabel("requests")
    left.set_title("the tail a region loss takes")
    left.legend(fontsize="small")
    for key, label in (
        ("promoted_s", "promoted"),
        ("serving_s", "serving (entry point)"),
        ("rto_write_s", "RTO write (5 good in a row)"),
    ):
        right.plot(trials, [f[key] for f in ok], marker="o", label=label)
    right.set_xlabel("trial")
    right.set_ylabel("seconds after the loss")
    right.set_title("back in service")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
