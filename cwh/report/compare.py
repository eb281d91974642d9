"""`cwh report compare RUN_A RUN_B`: what changed from run A to run B, and which changes
exceed the noise, judged from repeated measurements, never one number against one number:

- latency quantiles: each run has many operations, so each quantile's noise is estimated by
  resampling them (bootstrap): a change exceeds noise when the 95 % interval of B minus A
  excludes zero;
- RTO and RPO of repeated trials (`bench-chaos` folders): a permutation test on the trials
  (Mann-Whitney's U, exact for small counts): a change exceeds noise when p <= 0.05 one-sided
  (3 trials against 3: every B trial beyond every A trial);
- a figure measured once in each run (the RTO of a single chaos run, an SLO's value) is shown
  with "noise unknown": one number against one number says nothing about noise. An SLO that
  passed in A and failed in B is a regression whatever the noise.

Pure apart from reading the folders (`read_figures`).
"""

from __future__ import annotations

import itertools
import math
import random
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cwh.report import extract as x
from cwh.report.build import PATHS, parse_ledger, read_json

ALPHA = 0.05
RESAMPLES = 1000
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class Change:
    """One figure in A and in B.

    worse: B is worse than A (None: no direction, e.g. a value missing on one side).
    beyond_noise: the change exceeds the noise (None: noise unknown, one number each).
    how: how noise was judged, for the reader.
    """

    figure: str
    a: str
    b: str
    change: str
    worse: bool | None
    beyond_noise: bool | None
    how: str

    @property
    def regression(self) -> bool:
        return bool(self.worse and self.beyond_noise)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "regression": self.regression}


@dataclass
class Figures:
    """What a run folder offers to compare: latency samples in seconds per kind, repeated
    trials per figure (one value each for a single run), and its SLO verdicts by name."""

    name: str
    latency: dict[str, list[float]]
    trials: dict[str, list[float]]
    slos: dict[str, Mapping[str, Any]]


def read_figures(folder: Path) -> Figures:
    problems: list[str] = []
    latency: dict[str, list[float]] = {}
    if (folder / "ledger.jsonl").exists():
        ops = parse_ledger((folder / "ledger.jsonl").read_text().splitlines(), problems)
        for kind, values in x.latency_samples(ops).items():
            label = {"service": "submit", "intended": "session from intended start"}[kind]
            latency[label] = [v for _, v in values]
    trials: dict[str, list[float]] = {}
    bench = read_json(folder / "bench-chaos.json", problems)
    chaos_runs = [(r.get("experiment"), r.get("chaos")) for r in (bench or {}).get("runs") or []]
    single = read_json(folder / "chaos.json", problems)
    if single is not None:  # <UTC>-chaos-<experiment>
        experiment = re.sub(r"^(\d{8}T\d{6}Z-)?chaos-?", "", folder.name) or "chaos"
        chaos_runs.append((experiment, single))
    day = read_json(folder / "gameday.json", problems)
    for trial in (day or {}).get("experiments") or []:  # a game day: every trial it ran
        sub = trial.get("folder") if isinstance(trial, Mapping) else None
        if sub and (chaos := read_json(folder / sub / "chaos.json", problems)) is not None:
            chaos_runs.append((str(trial.get("experiment", "?")).split(" #")[0], chaos))
    for experiment, chaos in chaos_runs:
        if not isinstance(chaos, Mapping):
            continue
        for path in PATHS:
            if (v := x.number(x.dig(chaos, f"rto_s.{path}"))) is not None:
                trials.setdefault(f"RTO {path} ({experiment})", []).append(v)
        if (v := x.number(x.dig(chaos, "rpo_s.max"))) is not None:
            trials.setdefault(f"RPO ({experiment})", []).append(v)
    slo = read_json(folder / "slo.json", problems) or {}
    slos = {str(v.get("name")): v for v in slo.get("verdicts") or [] if isinstance(v, Mapping)}
    return Figures(folder.name, latency, trials, slos)


# ---- noise ---------------------------------------------------------------------------------------


def bootstrap_interval(
    a: Sequence[float], b: Sequence[float], q: float, seed: int = 16
) -> tuple[float, float]:
    """The 95 % interval of quantile `q` of B minus that of A, resampling both."""
    rng = random.Random(seed)
    diffs = sorted(
        x.nearest_rank(rng.choices(b, k=len(b)), q) - x.nearest_rank(rng.choices(a, k=len(a)), q)
        for _ in range(RESAMPLES)
    )
    return diffs[int(0.025 * RESAMPLES)], diffs[int(0.975 * RESAMPLES) - 1]


def _u(a: Sequence[float], b: Sequence[float]) -> float:
    """Mann-Whitney's U for B above A: pairs where b > a, ties counting a half."""
    return sum(1.0 if vb > va else 0.5 if vb == va else 0.0 for va in a for vb in b)


def permutation_p(a: Sequence[float], b: Sequence[float], seed: int = 16) -> float:
    """One-sided p-value that B's trials lie as far above (or below, whichever they do) A's as
    observed, if A and B were exchangeable: exact over every split when there are at most
    20,000 of them, else 20,000 random splits."""
    pooled, n = [*a, *b], len(b)
    observed = _u(a, b)
    centre = len(a) * len(b) / 2
    above = observed >= centre

    def as_extreme(idx: Sequence[int]) -> bool:
        chosen = set(idx)
        bb = [pooled[i] for i in chosen]
        aa = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        u = _u(aa, bb)
        return u >= observed if above else u <= observed

    if math.comb(len(pooled), n) <= 20_000:
        splits = list(itertools.combinations(range(len(pooled)), n))
    else:
        rng = random.Random(seed)
        splits = [tuple(rng.sample(range(len(pooled)), n)) for _ in range(20_000)]
    return sum(1 for s in splits if as_extreme(s)) / len(splits)


def _pct(a: float, b: float) -> str:
    if a == 0:
        return f"{b - a:+.3g}"
    return f"{b - a:+.3g} ({(b - a) / abs(a) * 100:+.0f} %)"


# ---- comparisons ---------------------------------------------------------------------------------


def latency_changes(a: Figures, b: Figures) -> list[Change]:
    out = []
    for kind in sorted(set(a.latency) & set(b.latency)):
        va, vb = a.latency[kind], b.latency[kind]
        if len(va) < 20 or len(vb) < 20:  # too few to resample into anything meaningful
            continue
        for q in QUANTILES:
            qa, qb = x.nearest_rank(va, q), x.nearest_rank(vb, q)
            low, high = bootstrap_interval(va, vb, q)
            beyond = low > 0 or high < 0
            out.append(
                Change(
                    f"{kind} p{q * 100:g}",
                    f"{qa:.3g} s",
                    f"{qb:.3g} s",
                    _pct(qa, qb),
                    qb > qa,
                    beyond,
                    f"bootstrap 95 % interval of B-A {low:+.3g} to {high:+.3g} s "
                    f"({len(va)} vs {len(vb)} operations)",
                )
            )
    return out


def trial_changes(a: Figures, b: Figures) -> list[Change]:
    out = []
    for name in sorted(set(a.trials) & set(b.trials)):
        va, vb = a.trials[name], b.trials[name]
        ma, mb = x.nearest_rank(va, 0.5), x.nearest_rank(vb, 0.5)
        label = f"{name} median"
        if len(va) < 2 or len(vb) < 2:
            label = name
            beyond, how = None, "noise unknown: one trial each side, repeat them (bench-chaos)"
        else:
            p = permutation_p(va, vb)
            beyond = p <= ALPHA and mb != ma
            how = f"permutation test on {len(va)} vs {len(vb)} trials, p = {p:.3g}"
        out.append(Change(label, f"{ma:.3g} s", f"{mb:.3g} s", _pct(ma, mb), mb > ma, beyond, how))
    return out


def _lower_is_better(objective: str) -> bool | None:
    m = re.match(r"\s*([<>≤≥])", objective)
    return None if m is None else m[1] in "<≤"


def slo_changes(a: Figures, b: Figures) -> list[Change]:
    out = []
    for name in sorted(set(a.slos) & set(b.slos)):
        va, vb = a.slos[name], b.slos[name]
        sa, sb = str(va.get("status")), str(vb.get("status"))
        ma, mb = x.number(va.get("measured")), x.number(vb.get("measured"))
        lower = _lower_is_better(str(vb.get("objective", "")))
        worse: bool | None = None
        if ma is not None and mb is not None and lower is not None and ma != mb:
            worse = (mb > ma) == lower
        flipped = sa == "pass" and sb == "fail"
        if flipped:
            worse = True
        out.append(
            Change(
                f"SLO {name}",
                f"{sa} {x.fmt(ma)}",
                f"{sb} {x.fmt(mb)}",
                _pct(ma, mb) if ma is not None and mb is not None else "—",
                worse,
                True if flipped else None,
                "passed in A, failed in B" if flipped else "noise unknown: one value each",
            )
        )
    return out


def compare(a: Figures, b: Figures) -> list[Change]:
    return latency_changes(a, b) + trial_changes(a, b) + slo_changes(a, b)


def verdict_word(c: Change) -> str:
    if c.beyond_noise is None:
        return "noise unknown" + (", worse" if c.worse else "")
    if not c.beyond_noise:
        return "within noise"
    return "WORSE, beyond noise" if c.worse else "better, beyond noise"


def text_table(changes: Sequence[Change], a: str, b: str, width: int = 80) -> str:
    """The changes in a table that fits `width` columns (CI logs), then how noise was judged."""
    head = ("figure", "A", "B", "change", "judged")
    rows = [(c.figure, c.a, c.b, c.change, verdict_word(c)) for c in changes]
    cols = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    # The figure's name gives way first: it is the widest and the least needed to read it.
    spare = width - (sum(cols) + 2 * 4)
    if spare < 0:
        cols[0] = max(12, cols[0] + spare)
    lines = [*textwrap.wrap(f"A: {a}", width), *textwrap.wrap(f"B: {b}", width), ""]
    for row in [head, *rows]:
        cells = [_clip(cell, w) for cell, w in zip(row, cols, strict=True)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, cols, strict=True)).rstrip())
    lines.append("")
    for c in changes:
        lines += textwrap.wrap(f"{c.figure}: {c.how}", width, subsequent_indent="    ")
    if not changes:
        lines.append("nothing to compare: the two runs share no figure")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
