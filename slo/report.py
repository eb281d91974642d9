"""The gate's outputs, in the formats pipelines already read: a terminal table, `slo.json`,
JUnit XML (one test case per SLO) and a Markdown summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from rich.console import Console
from rich.table import Table

from slo.gate import Verdict

STYLE = {"pass": "green", "warn": "yellow", "fail": "red", "no_data": "magenta"}


def fmt(x: float | None, ratio: bool = False) -> str:
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞"
    if ratio:
        return f"{x * 100:.3f} %"
    return f"{x:.4g}"


def table(verdicts: list[Verdict], title: str) -> Table:
    t = Table(title=title, show_lines=False)
    t.add_column("SLO", no_wrap=True)  # names are what people search for: never cut them
    for col in ("status", "measured", "objective", "margin", "budget used", "key"):
        t.add_column(col)
    for v in verdicts:
        r = v.fraction
        t.add_row(
            v.name,
            f"[{STYLE[v.status]}]{v.status.replace('_', ' ')}[/{STYLE[v.status]}]",
            fmt(v.measured, r),
            v.objective,
            fmt(v.margin, r),
            fmt(v.budget_consumed, True),
            "yes" if v.key else "no",
        )
    return t


def print_verdicts(verdicts: list[Verdict], title: str, console: Console) -> None:
    console.print(table(verdicts, title))
    for v in verdicts:
        if v.status in ("fail", "no_data", "warn"):
            console.print(f"[{STYLE[v.status]}]{v.name}[/]: {v.reason}  ({v.file}:{v.line})")
            for q in v.queries:
                console.print(f"    query: {q}", soft_wrap=True)


def junit(verdicts: list[Verdict], suite: str) -> str:
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(verdicts)),
        failures=str(sum(1 for v in verdicts if v.status == "fail" and v.key)),
        skipped=str(sum(1 for v in verdicts if v.status == "no_data")),
    )
    for v in verdicts:
        case = ET.SubElement(root, "testcase", classname=f"slo.{suite}", name=v.name, file=v.file)
        case.set("line", str(v.line))
        detail = f"{v.reason}\nobjective: {v.objective}\n" + "\n".join(
            f"query: {q}" for q in v.queries
        )
        if v.status == "fail" and v.key:
            ET.SubElement(case, "failure", message=v.reason, type="SLOViolation").text = detail
        elif v.status == "no_data":
            ET.SubElement(case, "skipped", message=f"no data: {v.reason}").text = detail
        else:
            ET.SubElement(case, "system-out").text = detail
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def markdown(verdicts: list[Verdict], result: dict[str, Any]) -> str:
    w = result["window"]
    lines = [
        f"# SLO gate: {result['verdict'].upper()} (exit code {result['exit_code']})",
        "",
        f"Window {w['start']} to {w['end']} ({w['seconds']:.0f} s).",
        "",
        "| SLO | status | measured | objective | margin | budget used | key |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        r = v.fraction
        lines.append(
            f"| {v.name} | {v.status.replace('_', ' ')} | {fmt(v.measured, r)} | {v.objective} "
            f"| {fmt(v.margin, r)} | {fmt(v.budget_consumed, True)} | {'yes' if v.key else 'no'} |"
        )
    notes = [v for v in verdicts if v.status != "pass"]
    if notes:
        lines += ["", "## Not passing", ""]
        for v in notes:
            lines.append(f"- **{v.name}** ({v.status.replace('_', ' ')}): {v.reason}")
            lines += [f"  - query: `{q}`" for q in v.queries]
            lines.append(f"  - defined at {v.file}:{v.line}")
    return "\n".join(lines) + "\n"


def write(folder: Path, verdicts: list[Verdict], result: dict[str, Any], suite: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slo.json").write_text(json.dumps(result, indent=2, default=str))
    (folder / "slo-junit.xml").write_text(junit(verdicts, suite))
    (folder / "slo.md").write_text(markdown(verdicts, result))
