"""From a run folder's records to what the report shows: pure functions, data in, typed values
out (`cwh.report.model`). The records are read by key and whatever is missing is left out, so
a folder written by an older or newer harness still gets a report."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cwh.report.model import (
    FAIL,
    INFO,
    OK,
    Bars,
    FaultWindow,
    LedgerEntry,
    Line,
    Listed,
    Row,
    Span,
    Stack,
    Verdict,
)
from slo.ledger import Operation
from slo.recovery import path_ops

#: Bins per timeline at most: a bar narrower than a few pixels says nothing more.
MAX_BINS = 240
#: Bin widths to choose from, so the axis reads in round numbers.
NICE_BINS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def dig(data: Any, path: str, default: Any = None) -> Any:
    """`data["a"]["b"]` for `path` "a.b", or `default` when any part is missing."""
    node = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def number(value: Any) -> float | None:
    """A finite number, or None (booleans, strings and NaN are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, unit: str = "") -> str:
    """A value for a table cell: numbers to 4 significant digits, None as an em dash."""
    if value is None:
        return "—"
    if (v := number(value)) is not None:
        return f"{v:.4g}{unit}"
    return str(value)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


# ---- faults and the time axis ------------------------------------------------------------------


def fault_windows(events: Iterable[Mapping[str, Any]]) -> list[FaultWindow]:
    """Pair the fault journal's `inject` and `restore` events by fault name, first in first
    out (a fault injected twice is two windows). An injection never restored stays open
    (`end` None); a restoration with no injection before it is ignored."""
    timed = [e for e in events if number(e.get("wall")) is not None]
    pending: dict[str, list[Mapping[str, Any]]] = {}
    out: list[FaultWindow] = []
    for e in sorted(timed, key=lambda e: float(e["wall"])):
        name = str(e.get("fault", "fault"))
        if e.get("event") == "inject":
            pending.setdefault(name, []).append(e)
        elif e.get("event") == "restore" and pending.get(name):
            inj = pending[name].pop(0)
            out.append(FaultWindow(name, float(inj["wall"]), float(e["wall"]), _detail(inj)))
    for name, left in pending.items():
        out += [FaultWindow(name, float(inj["wall"]), None, _detail(inj)) for inj in left]
    return sorted(out, key=lambda w: (w.start, w.fault))


def _detail(event: Mapping[str, Any]) -> str:
    skip = {"event", "fault", "wall"}
    return ", ".join(f"{k} {v}" for k, v in event.items() if k not in skip and v not in ("", None))


def time_span(
    window: Mapping[str, Any] | None, ops: Sequence[Operation], faults: Sequence[FaultWindow]
) -> tuple[float, float] | None:
    """The shared axis: from the earliest to the latest of the run's window, its operations
    (invoked to completed, wall clock) and its faults; None when there is no time at all."""
    times = [number(dig(window, "start")), number(dig(window, "end"))]
    times += [o.invoked_wall for o in ops] + [o.invoked_wall + o.latency_s for o in ops]
    times += [w.start for w in faults] + [w.end for w in faults if w.end is not None]
    known = [t for t in times if t is not None]
    if not known:
        return None
    t0, t1 = min(known), max(known)
    return (t0, t1) if t1 > t0 else (t0, t0 + 1.0)


def bin_width(span_s: float, most: int = MAX_BINS) -> float:
    """The smallest round bin width that cuts `span_s` into at most `most` bins."""
    for width in NICE_BINS_S:
        if span_s / width <= most:
            return float(width)
    return float(math.ceil(span_s / most))


# ---- the ledger on the time axis ---------------------------------------------------------------


def outcome_bars(ops: Iterable[Operation], t0: float, t1: float) -> Bars:
    """Operations per second that ended ok, fail and info, per bin of their completion time.
    The operations carry wall-clock times in `invoked_s` / `completed_s` (`path_ops`)."""
    width = bin_width(t1 - t0)
    n = max(1, math.ceil((t1 - t0) / width))
    counts = {"ok": [0.0] * n, "fail": [0.0] * n, "info": [0.0] * n}
    for op in ops:
        i = min(n - 1, max(0, int((op.completed_s - t0) // width)))
        counts[op.outcome][i] += 1.0 / width
    return Bars(
        t0,
        width,
        (
            Stack("ok", OK, tuple(counts["ok"])),
            Stack("fail", FAIL, tuple(counts["fail"])),
            Stack("info (unknown)", INFO, tuple(counts["info"])),
        ),
    )


def paths_on_wall_clock(ops: Sequence[Operation]) -> dict[str, list[Operation]]:
    """The ledger per path (write, read, notification) as RTO sees it (`slo.recovery`)."""
    return path_ops(ops)


def nearest_rank(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def quantile_lines(
    samples: Iterable[tuple[float, float]],
    t0: float,
    t1: float,
    label: str,
    colors: Mapping[float, str],
    dashed: bool = False,
) -> list[Line]:
    """Per bin (`bin_width` of the span / 4, for enough samples each), the quantiles in `colors`
    of the values (seconds) of `samples` `(time, value)`, one line per quantile at bin centres;
    empty bins are gaps."""
    width = bin_width(t1 - t0, MAX_BINS // 4)
    bins: dict[int, list[float]] = {}
    for t, v in samples:
        bins.setdefault(int((t - t0) // width), []).append(v)
    lines = []
    for q, color in colors.items():
        points = tuple(
            (t0 + (i + 0.5) * width, nearest_rank(vs, q)) for i, vs in sorted(bins.items())
        )
        if points:
            lines.append(Line(f"{label} p{q * 100:g}", color, points, dashed))
    return lines


def latency_samples(ops: Iterable[Operation]) -> dict[str, list[tuple[float, float]]]:
    """(completion time, seconds) of successful operations: submits' service time, and open
    arrival sessions' time from their intended start (their `invoked_s` is the intended start:
    the wait for a free phone counts, no coordinated omission)."""
    out: dict[str, list[tuple[float, float]]] = {"service": [], "intended": []}
    for op in ops:
        if op.outcome != "ok":
            continue
        if op.kind == "submit":
            out["service"].append((op.invoked_wall + op.latency_s, op.latency_s))
        elif op.kind == "session":
            out["intended"].append((op.invoked_wall + op.latency_s, op.latency_s))
    return out


# ---- verdict -------------------------------------------------------------------------------------

#: What to do next, by what failed (matched against an SLO's name and queries).
NEXT_STEPS = (
    (
        ("rto", "recovered", "unrecovered"),
        "A path recovered late or never: read the timelines around the shaded fault (which "
        "component's role changed, when ok operations came back), that component's log in the "
        "environment's logs/, and compare the RTO with the failover bound under Settings.",
    ),
    (
        ("lost", "rpo"),
        "Acknowledged requests were lost: each is listed under Reconciliation with its ledger "
        "lines. After cascading PostgreSQL failures, non-strict synchronous mode commits "
        "asynchronously: consider CWH_PG_SYNC_STRICT=1 and fencing of a deposed primary.",
    ),
    (
        ("duplicated",),
        "One idempotency key was acknowledged as two requests: the keys and their ledger lines "
        "are under Reconciliation; check the API's idempotency record across the failover.",
    ),
    (
        ("latency", "time-to-result", "time to result"),
        "A latency objective broke: the latency chart shows when; compare it with the fault "
        "windows, the queue depth and the replica counts.",
    ),
    (
        ("availability",),
        "Availability broke: the operations chart shows the failed and unknown operations; "
        "which answers they got is in the ledger (error field).",
    ),
    (
        ("replication", "lag"),
        "Replication lag broke: the lag chart shows which member and when; look at the "
        "replication link (fault proxy toxics) and the primary's load.",
    ),
)


def next_step_for(name: str, queries: Sequence[str]) -> str:
    text = " ".join([name, *queries]).lower()
    for words, advice in NEXT_STEPS:
        if any(w in text for w in words):
            return advice
    return f"SLO {name} failed: its definition (file and line in slo.json) gives the query."


def verdict(
    summary: Mapping[str, Any] | None,
    slo: Mapping[str, Any] | None,
    journal: Mapping[str, Any] | None = None,
    restored: Mapping[str, Any] | None = None,
) -> tuple[Verdict, list[str], list[str]]:
    """The run's verdict, the reasons for it and what to do next, read from its records as
    `cwh load` and `cwh chaos run` decide their exit codes: fail when the run itself failed,
    the experiment deviated or did not complete, the environment was not whole again, a key
    SLO failed or a request was lost or duplicated; inconclusive when nothing failed but the
    gate did not run or could not decide, the steady state did not hold before the fault, or
    read-backs stayed unknown; pass otherwise."""
    fails: list[str] = []
    steps: list[str] = []
    if summary is not None:
        code = dig(summary, "locust_exit_code")
        if code not in (None, 0):
            fails.append(f"the load run itself failed (Locust exit code {code})")
            steps.append("Read fleet.log and locust.html in this folder: the fleet did not run.")
        elif "operations" in summary and not summary["operations"]:
            fails.append("the fleet recorded no operation")
            steps.append("Read fleet.log: no phone completed anything.")
    _journal_reasons(journal, fails, steps)
    if restored is not None and restored.get("healthy") is False:
        fails.append("the environment was not healthy after the experiment")
        steps.append("Run `cwh env status`; the components' logs are in the run directory.")
    failed_slos = [v for v in (dig(slo, "verdicts") or []) if v.get("status") == "fail"]
    rec = dig(summary, "reconciliation") or {}
    for what in ("lost", "duplicated"):
        if (number(rec.get(what)) or 0) > 0:
            fails.append(f"{fmt(rec[what])} request(s) {what}")
            steps.append(next_step_for(what, []))
    hard = bool(fails)
    for v in failed_slos:
        key = v.get("key", True)
        reason = f"SLO {v.get('name')} failed" + ("" if key else " (not key: reported only)")
        fails.append(f"{reason}: {v['reason']}" if v.get("reason") else reason)
        if key:
            hard = True
            steps.append(next_step_for(str(v.get("name")), v.get("queries") or []))
    if hard or dig(slo, "verdict") == "fail":
        return "fail", fails, list(dict.fromkeys(steps))
    unsure = _inconclusive_reasons(slo, journal, rec)
    if unsure:
        steps = [
            "Nothing failed, but nothing was proven either: fix what the reasons name and run "
            "again (an inconclusive run is never a pass)."
        ]
        return "inconclusive", [*fails, *unsure], steps
    return "pass", fails, []


def _journal_reasons(journal: Mapping[str, Any] | None, fails: list[str], steps: list[str]) -> None:
    if journal is None:
        return
    status = journal.get("status")
    if status is not None and status != "completed":
        fails.append(f"the experiment ended {status}")
        steps.append("Read chaostoolkit.log and journal.json: the experiment did not complete.")
    if journal.get("deviated"):
        fails.append("the steady state did not hold after the fault (deviated)")
        steps.append(
            "The hypothesis's SLOs did not come back after the fault: slo-probes.jsonl has "
            "every evaluation, the timelines show what stayed broken."
        )


def _inconclusive_reasons(
    slo: Mapping[str, Any] | None, journal: Mapping[str, Any] | None, rec: Mapping[str, Any]
) -> list[str]:
    out = []
    if slo is None:
        out.append("no SLO gate ran on this run (no slo.json)")
    elif slo.get("verdict") not in ("pass", "fail"):
        no_data = [v.get("name") for v in slo.get("verdicts") or [] if v.get("status") == "no_data"]
        out.append(
            f"the SLO gate was {slo.get('verdict', 'undecided')}"
            + (f" (no data: {', '.join(map(str, no_data))})" if no_data else "")
        )
    before = dig(journal, "steady_states.before")
    if isinstance(before, Mapping) and before.get("steady_state_met") is False:
        out.append("the steady state did not hold before the fault: nothing was tested")
    unknown = number(rec.get("unknown"))
    if unknown:
        out.append(f"{unknown:g} acknowledged request(s) could not be read back (unknown)")
    return out


# ---- SLOs ----------------------------------------------------------------------------------------


def slo_rows(
    slo: Mapping[str, Any] | None, span_of: Any = None
) -> tuple[list[Row], list[Span], str]:
    """The gate's table (name, status, measured, objective, margin, budget used, key, reason),
    each failed row linked to the window `span_of(verdict)` returns; the note under it."""
    if slo is None:
        return [], [], "No SLO gate ran on this run (no slo.json)."
    rows, spans = [], []
    for v in slo.get("verdicts") or []:
        budget = number(v.get("budget_consumed"))
        cells = (
            str(v.get("name", "?")),
            str(v.get("status", "?")),
            fmt(v.get("measured")),
            str(v.get("objective", "")),
            fmt(v.get("margin")),
            "—" if budget is None else f"{budget * 100:.1f} %",
            "yes" if v.get("key", True) else "no",
            str(v.get("reason", "")),
        )
        link = span_of(v) if span_of is not None and v.get("status") == "fail" else None
        if link is not None:
            spans.append(link)
        rows.append(Row(cells, str(v.get("status", "")), link))
    window = dig(slo, "window") or {}
    note = (
        f"Gate {str(slo.get('verdict', '?')).upper()} (exit code {slo.get('exit_code', '?')}) over "
        f"{window.get('start', '?')} to {window.get('end', '?')}."
    )
    return rows, spans, note


def slo_span(
    v: Mapping[str, Any],
    faults: Sequence[FaultWindow],
    chaos: Mapping[str, Any] | None,
    rec: Mapping[str, Any],
    ops: Sequence[Operation],
    span: tuple[float, float],
) -> Span:
    """The window of the timeline that broke a failed SLO, chosen by what it measures: RTO from
    the injection to the slowest path's recovery; lost data from the first lost
    acknowledgement to the fault after it; duplicates over their submits; anything else over
    the fault windows, or the whole run when there was no fault."""
    anchor = f"slo-{slug(str(v.get('name', '')))}"
    text = " ".join([str(v.get("name", "")), *map(str, v.get("queries") or [])]).lower()
    first_fault = faults[0].start if faults else None
    fault_at = number(dig(chaos, "fault_wall")) or first_fault
    worst = number(dig(chaos, "rto_s.max"))
    if fault_at is not None and any(w in text for w in ("rto", "recovered")):
        return Span(anchor, fault_at, fault_at + (worst or 0.0), "from the fault to recovery")
    walls = [w for w in (number(x) for x in rec.get("lost_acked_walls") or []) if w is not None]
    if walls and any(w in text for w in ("lost", "rpo")):
        marks = sorted([w.start for w in faults] + [w.end for w in faults if w.end is not None])
        end = max(next((m for m in marks if m >= a), span[1]) for a in walls)
        return Span(anchor, min(walls), end, "from the first lost acknowledgement to its fault")
    keys = set(rec.get("duplicated_keys") or [])
    dup = [
        o.invoked_wall for o in ops if o.kind == "submit" and (o.detail or {}).get("key") in keys
    ]
    if dup and "duplicated" in text:
        return Span(anchor, min(dup), max(dup), "the duplicated keys' submits")
    if faults:
        ends = [w.end if w.end is not None else span[1] for w in faults]
        return Span(anchor, faults[0].start, max(ends), "the fault windows")
    return Span(anchor, span[0], span[1], "the whole run (no fault to narrow it)")


# ---- RTO, RPO and the reconciliation ----------------------------------------------------------


#: The recovery table's columns: header, and the chaos.json record per path (None: RTO and
#: recovered, computed). Records a measurement does not have are left out of the table.
RECOVERY_COLUMNS = (
    ("latency bound", "bound_s"),
    ("not ok after the fault", "not_ok_after_fault"),
    ("ok but slow", "slow_after_fault"),
)


def recovery_rows(chaos: Mapping[str, Any] | None) -> tuple[list[str], list[Row], str]:
    """The recovery table: header and rows. RTO per path with `recovered`, the longest window
    without a completion and the other per-path records the measurement has, then RPO."""
    if chaos is None:
        return [], [], ""
    rto = dig(chaos, "rto_s") or {}
    paths = [p for p in rto if p != "max"]
    extra = [(h, k) for h, k in RECOVERY_COLUMNS if isinstance(chaos.get(k), Mapping)]
    head = ["path", "RTO", "recovered", "longest silence", *(h for h, _ in extra)]
    rows = []
    for path in paths:
        recovered = dig(chaos, f"recovered.{path}")
        status = {True: "pass", False: "fail"}.get(recovered, "no_data")
        cells = [path, fmt(rto.get(path), " s"), {True: "yes", False: "NO"}.get(recovered, "—")]
        silence = longest_silence(chaos, path)
        cells.append(fmt(silence[0] if silence else None, " s"))
        cells += [fmt(dig(chaos, f"{k}.{path}")) for _, k in extra]
        rows.append(Row(tuple(cells), status))
    rpo = number(dig(chaos, "rpo_s.max"))
    blank = ("",) * (len(head) - 2)
    rows.append(Row(("RPO", fmt(rpo, " s"), *blank), "fail" if rpo else "pass"))
    note = (
        f"RTO: from the injection to the first of {fmt(chaos.get('consecutive'))} consecutive "
        "good operations of the path (ok, and within the latency bound where there is one). "
        "Longest silence: the longest window after the fault with no operation of the path "
        "completed. RPO: the longest window of acknowledged data lost."
    )
    return head, rows, note


def longest_silence(
    chaos: Mapping[str, Any] | None, path: str
) -> tuple[float, float | None, float | None] | None:
    """(seconds, from, to) of the path's longest window without a completion after the fault,
    when the measurement recorded one (`longest_silence`, or only its length under
    `longest_silence_s`)."""
    window = dig(chaos, f"longest_silence.{path}")
    if isinstance(window, Mapping) and number(window.get("s")) is not None:
        return (float(window["s"]), number(window.get("from")), number(window.get("to")))
    seconds = number(dig(chaos, f"longest_silence_s.{path}"))
    return None if seconds is None else (seconds, None, None)


#: Reconciliation counts in reading order, with their labels; keys not listed follow.
RECONCILIATION_KEYS = (
    ("acknowledged", "acknowledged"),
    ("completed", "completed"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("unknown", "unknown (could not be read back)"),
    ("never_notified", "never notified"),
    ("notified_after_run", "notified only after the run"),
    ("notification_unknown", "notification unknown"),
    ("info_submits", "submits with unknown outcome (info)"),
)


def reconciliation_facts(rec: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    known = {k for k, _ in RECONCILIATION_KEYS}
    for key, label in RECONCILIATION_KEYS:
        if key in rec:
            out.append((label, _count(rec[key])))
    for key, value in rec.items():
        if key not in known and (number(value) is not None):
            out.append((key.replace("_", " "), _count(value)))
    if isinstance(rec.get("by_status"), Mapping):
        out.append(("read back as", ", ".join(f"{k} {v}" for k, v in rec["by_status"].items())))
    return out


def _count(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else fmt(value)


def ledger_index(lines: Sequence[str]) -> dict[str, list[int]]:
    """request id and idempotency key -> the 1-based numbers of the ledger lines that name
    them (submits, notifications, reads of that request)."""
    index: dict[str, list[int]] = {}
    for n, line in enumerate(lines, start=1):
        try:
            detail = json.loads(line).get("detail") or {}
        except (ValueError, AttributeError):
            continue
        if not isinstance(detail, Mapping):
            continue
        for key in ("request_id", "key"):
            if isinstance(detail.get(key), str):
                index.setdefault(detail[key], []).append(n)
    return index


def listed_requests(
    rec: Mapping[str, Any], lines: Sequence[str], most_lines: int = 12
) -> list[Listed]:
    """The lost requests, duplicated keys and never-notified requests, each with the ledger
    lines that name it (at most `most_lines` each)."""
    index = ledger_index(lines)
    out = []
    for what, key in (
        ("lost", "lost_ids"),
        ("duplicated", "duplicated_keys"),
        ("never notified", "never_notified_ids"),
        ("unknown", "unknown_ids"),
    ):
        for ident in rec.get(key) or []:
            numbers = index.get(str(ident), [])[:most_lines]
            entries = tuple(LedgerEntry(n, lines[n - 1]) for n in numbers)
            out.append(Listed(what, str(ident), entries))
    return out
