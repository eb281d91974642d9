"""The timeline of a chaos run: per path, operations per second answered well and those that
failed or came later than the path's bound (what RTO counts as bad), with the faults'
injection and restoration marked and each path's longest window without any answer shaded.
Written as `chaos.png` in the run folder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from slo.ledger import read_jsonl
from slo.recovery import good, path_ops


def plot_timeline(out: Path) -> Path | None:
    """Returns the plot's path, or None when the run has no ledger."""
    ledger = out / "ledger.jsonl"
    if not ledger.exists():
        return None
    chaos = json.loads((out / "chaos.json").read_text()) if (out / "chaos.json").exists() else {}
    bounds = chaos.get("bound_s", {})
    by_path = path_ops(read_jsonl(ledger), bounds.get("notification") or 5.0)
    everything = [o for ops in by_path.values() for o in ops]
    if not everything:
        return None
    t0 = min(o.invoked_s for o in everything)
    faults = []
    if (out / "faults.jsonl").exists():
        faults = [json.loads(x) for x in (out / "faults.jsonl").read_text().splitlines() if x]
    fig, axes = plt.subplots(len(by_path), 1, figsize=(10, 7), sharex=True)
    for ax, (path, ops) in zip(axes, by_path.items(), strict=True):
        bound = bounds.get(path) if path != "notification" else None
        ok = Counter(int(o.completed_s - t0) for o in ops if good(o, bound))
        bad = Counter(int(o.completed_s - t0) for o in ops if not good(o, bound))
        seconds = range(0, max([*ok, *bad, 0]) + 1)
        ax.bar(seconds, [ok[s] for s in seconds], width=1.0, color="tab:green", label="ok")
        ax.bar(
            seconds,
            [bad[s] for s in seconds],
            width=1.0,
            bottom=[ok[s] for s in seconds],
            color="tab:red",
            label="failed or late",
        )
        for f in faults:
            ax.axvline(
                f["wall"] - t0,
                color="black" if f["event"] == "inject" else "tab:blue",
                linestyle="-" if f["event"] == "inject" else "--",
                linewidth=1,
            )
        if silence := (chaos.get("longest_silence") or {}).get(path):
            ax.axvspan(silence["from"] - t0, silence["to"] - t0, color="tab:orange", alpha=0.2)
        ax.set_ylabel(f"{path}\nper second")
    axes[0].legend(loc="upper right")
    axes[0].set_title(
        f"{out.name}: injection (solid), restoration (dashed), longest silence (shaded)"
    )
    axes[-1].set_xlabel("seconds since the fleet's first operation")
    fig.tight_layout()
    png = out / "chaos.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
