"""Reading SLO definitions: OpenSLO v1 `SLO` documents and Sloth `prometheus/v1` files, as teams
already have them, plus the gate's `x-cwh` extension section.

Every error names the file and the line: a release gate that cannot say where a definition is
wrong is a gate people switch off.

OpenSLO (one objective per verdict; several objectives give `name:displayName`):

    apiVersion: openslo/v1
    kind: SLO
    metadata: {name: submit-latency-p95}
    spec:
      service: cloudwatcher
      indicator:
        metadata: {name: submit-latency}
        spec:
          thresholdMetric:
            metricSource: {type: cwh-run, spec: {query: latency.submit.p95_ms}}
      timeWindow: [{duration: 28d, isRolling: true}]
      budgetingMethod: Occurrences
      objectives: [{displayName: p95 under 500 ms, op: lte, value: 500, target: 1}]
    x-cwh: {key: true, warn: 400, minSamples: 50, samples: latency.submit.count}

metricSource types: `Prometheus` (spec.query, `{{window}}` for the evaluation window),
`cwh-run` (spec.query: a dotted path into the run's summary) and `cwh-scaling` (spec.check: an
autoscaling check over Prometheus range data, `slo/scaling.py`, with its parameters beside it:
`{check: scale-up-reaction, hpa: api, threshold: 70}`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import yaml

from slo import scaling
from slo.model import SLO, Gate, NoData, Op, Source

DEFAULT_DIR = Path(__file__).resolve().parent / "definitions"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_OPS = ("lt", "lte", "gt", "gte")


class DefinitionError(Exception):
    """A definition the gate cannot use; the message starts with `file:line:`."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line = file, line


class Node(dict[str, Any]):
    """A YAML mapping that remembers its line and the lines of its keys."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    out = Node({str(k): v for k, v in loader.construct_mapping(node, deep=True).items()})
    out.line = node.start_mark.line + 1
    out.key_lines = {
        str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)
    }
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_duration(text: object) -> float:
    """`28d`, `1h`, `5m`, `30s`, `2w` (or a number of seconds) in seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (like 5m, 1h, 28d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Doc:
    """Typed access to one document, with errors that point at the line."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: Node | None, key: str | None, message: str) -> DefinitionError:
        line = 0 if node is None else (node.line_of(key) if key else node.line)
        return DefinitionError(self.file, line, message)

    def map(self, node: Node, key: str, path: str, required: bool = True) -> Node | None:
        value = node.get(key)
        if value is None:
            if required:
                raise self.fail(node, None, f"{path}.{key} is required")
            return None
        if not isinstance(value, Node):
            raise self.fail(node, key, f"{path}.{key} must be a mapping")
        return value

    def str_(self, node: Node, key: str, path: str, default: str | None = None) -> str:
        value = node.get(key, default)
        if value is None:
            raise self.fail(node, None, f"{path}.{key} is required")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.fail(node, key, f"{path}.{key} must be a string")
        return str(value)

    def num(self, node: Node, key: str, path: str, default: float | None = None) -> float:
        value = node.get(key, default)
        if value is None:
            raise self.fail(node, None, f"{path}.{key} is required")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(node, key, f"{path}.{key} must be a number, not {value!r}")
        return float(value)

    def duration(self, node: Node, key: str, path: str) -> float:
        try:
            return parse_duration(node.get(key))
        except ValueError as exc:
            raise self.fail(node, key, f"{path}.{key}: {exc}") from None


def _source(doc: _Doc, holder: Node, path: str) -> Source:
    ms = doc.map(holder, "metricSource", path)
    assert ms is not None
    kind = doc.str_(ms, "type", f"{path}.metricSource")
    spec = doc.map(ms, "spec", f"{path}.metricSource")
    assert spec is not None
    if kind.lower() == "cwh-scaling":
        return _scaling(doc, spec, f"{path}.metricSource.spec")
    query = doc.str_(spec, "query", f"{path}.metricSource.spec")
    if kind.lower() == "prometheus":
        return Source("prometheus", query)
    if kind.lower() == "cwh-run":
        return Source("run", query)
    raise doc.fail(
        ms, "type", f"{path}.metricSource.type {kind!r}: Prometheus, cwh-run or cwh-scaling"
    )


_SCALING_TEXT = ("hpa", "namespace", "deployment", "metric", "metricTargetType", "query")


def _scaling(doc: _Doc, spec: Node, path: str) -> Source:
    check = doc.str_(spec, "check", path)
    if check not in scaling.CHECKS:
        raise doc.fail(spec, "check", f"{path}.check {check!r}: one of {', '.join(scaling.CHECKS)}")
    params: list[tuple[str, str | float]] = []
    for key in spec:
        if key == "check":
            continue
        if key in scaling.NUMERIC:
            params.append((key, doc.duration(spec, key, path)))
        elif key in _SCALING_TEXT:
            params.append((key, doc.str_(spec, key, path)))
        else:
            known = sorted(("check", *_SCALING_TEXT, *scaling.NUMERIC))
            raise doc.fail(spec, key, f"{path}: unknown {key!r} (known: {known})")
    try:
        scaling.queries(check, dict(params))
    except ValueError as exc:
        raise doc.fail(spec, None, f"{path}: {exc}") from None
    values = dict(params)
    window, slack = values.get("window"), values.get("slack", 20.0)
    if check == "early-scale-down" and (
        not isinstance(window, float) or not isinstance(slack, float) or window <= 2 * slack
    ):
        # [t - window + slack, t - slack] would be empty: every scale-down would pass.
        raise doc.fail(spec, "window", f"{path}.window must be more than twice the slack")
    text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params)
    return Source("scaling", f"{check}({text})", check, tuple(params))


def _gate(doc: _Doc, node: Node | None, path: str) -> Gate:
    if node is None:
        return Gate()
    known = {"key", "warn", "minSamples", "samples", "noData", "baseline", "quantile"}
    if unknown := sorted(set(node) - known):
        raise doc.fail(node, unknown[0], f"{path}: unknown {unknown[0]!r} (known: {sorted(known)})")
    no_data = doc.str_(node, "noData", path, "inconclusive")
    if no_data not in ("fail", "inconclusive", "ignore"):
        raise doc.fail(node, "noData", f"{path}.noData {no_data!r}: fail, inconclusive or ignore")
    key = node.get("key", True)
    if not isinstance(key, bool):
        raise doc.fail(node, "key", f"{path}.key must be true or false")
    baseline = doc.map(node, "baseline", path, required=False)
    samples = node.get("samples")
    quantile = node.get("quantile")
    if quantile is not None and not (isinstance(quantile, float) and 0 < quantile < 1):
        raise doc.fail(node, "quantile", f"{path}.quantile must be between 0 and 1")
    return Gate(
        key=key,
        warn=doc.num(node, "warn", path) if "warn" in node else None,
        min_samples=doc.num(node, "minSamples", path, 0),
        samples=Source("run", str(samples)) if samples is not None else None,
        no_data=cast(NoData, no_data),
        max_regression_pct=(
            doc.num(baseline, "maxRegressionPercent", f"{path}.baseline") if baseline else None
        ),
        quantile=quantile,
    )


def _target(doc: _Doc, obj: Node, path: str) -> float:
    if "target" in obj:
        target = doc.num(obj, "target", path)
    elif "targetPercent" in obj:
        target = doc.num(obj, "targetPercent", path) / 100
    else:
        raise doc.fail(obj, None, f"{path}: target or targetPercent is required")
    if not 0 < target <= 1:
        raise doc.fail(obj, "target", f"{path}: the target must be in (0, 1] (or (0, 100] %)")
    return target


def _openslo(doc: _Doc, root: Node) -> Iterator[SLO]:
    meta = doc.map(root, "metadata", "")
    spec = doc.map(root, "spec", "")
    assert meta is not None
    assert spec is not None
    name = doc.str_(meta, "name", "metadata")
    if "indicatorRef" in spec:
        raise doc.fail(spec, "indicatorRef", "spec.indicatorRef: inline the indicator instead")
    indicator = doc.map(spec, "indicator", "spec")
    assert indicator is not None
    ispec = doc.map(indicator, "spec", "spec.indicator")
    assert ispec is not None
    windows = spec.get("timeWindow")
    if not isinstance(windows, list) or not windows or not isinstance(windows[0], Node):
        raise doc.fail(spec, "timeWindow", "spec.timeWindow: a list with one {duration: ...}")
    window_s = doc.duration(windows[0], "duration", "spec.timeWindow[0]")
    budgeting = doc.str_(spec, "budgetingMethod", "spec", "Occurrences")
    if budgeting not in ("Occurrences", "Timeslices"):
        raise doc.fail(spec, "budgetingMethod", f"budgetingMethod {budgeting!r}: "
                       "Occurrences or Timeslices")  # fmt: skip
    gate = _gate(doc, doc.map(root, "x-cwh", "", required=False), "x-cwh")
    kind: str
    good = bad = total = metric = None
    if (ratio := doc.map(ispec, "ratioMetric", "spec.indicator.spec", required=False)) is not None:
        kind = "ratio"
        path = "spec.indicator.spec.ratioMetric"
        for key in ("good", "bad"):
            if key in ratio:
                src = _source(doc, doc.map(ratio, key, path) or Node(), f"{path}.{key}")
                good, bad = (src, bad) if key == "good" else (good, src)
        if (good is None) == (bad is None):
            raise doc.fail(ratio, None, f"{path}: exactly one of good and bad")
        total = _source(doc, doc.map(ratio, "total", path) or Node(), f"{path}.total")
    elif (thr := doc.map(ispec, "thresholdMetric", "spec.indicator.spec", False)) is not None:
        kind = "threshold"
        metric = _source(doc, thr, "spec.indicator.spec.thresholdMetric")
    else:
        raise doc.fail(ispec, None, "spec.indicator.spec: ratioMetric or thresholdMetric")
    objectives = spec.get("objectives")
    if not isinstance(objectives, list) or not objectives:
        raise doc.fail(spec, "objectives", "spec.objectives: a list of at least one objective")
    for i, obj in enumerate(objectives):
        path = f"spec.objectives[{i}]"
        if not isinstance(obj, Node):
            raise doc.fail(spec, "objectives", f"{path} must be a mapping")
        op: Op | None = None
        value: float | None = None
        if kind == "threshold":
            op_text = doc.str_(obj, "op", path)
            if op_text not in _OPS:
                raise doc.fail(obj, "op", f"{path}.op {op_text!r}: one of {', '.join(_OPS)}")
            op, value = cast(Op, op_text), doc.num(obj, "value", path)
        slice_s = slice_target = None
        if budgeting == "Timeslices":
            slice_s = doc.duration(obj, "timeSliceWindow", path)
            if kind == "ratio":
                slice_target = doc.num(obj, "timeSliceTarget", path)
        label = obj.get("displayName")
        yield SLO(
            name=name if len(objectives) == 1 else f"{name}:{label or i}",
            description=str(spec.get("description") or label or ""),
            service=str(spec.get("service") or ""),
            file=doc.file,
            line=obj.line,
            kind=cast(Any, kind),
            target=_target(doc, obj, path),
            window_s=window_s,
            budgeting=cast(Any, budgeting),
            good=good,
            bad=bad,
            total=total,
            metric=metric,
            op=op,
            value=value,
            timeslice_s=slice_s,
            timeslice_target=slice_target,
            unit=str((meta.get("annotations") or {}).get("cwh/unit", "")),
            origin="openslo",
            gate=gate,
        )


def _sloth(doc: _Doc, root: Node) -> Iterator[SLO]:
    service = doc.str_(root, "service", "")
    slos = root.get("slos")
    if not isinstance(slos, list) or not slos:
        raise doc.fail(root, "slos", "slos: a list of at least one SLO")
    for i, item in enumerate(slos):
        path = f"slos[{i}]"
        if not isinstance(item, Node):
            raise doc.fail(root, "slos", f"{path} must be a mapping")
        sli = doc.map(item, "sli", path)
        assert sli is not None
        objective = doc.num(item, "objective", path)
        if not 0 < objective <= 100:
            raise doc.fail(item, "objective", f"{path}.objective: a percentage in (0, 100]")
        if (events := doc.map(sli, "events", f"{path}.sli", required=False)) is not None:
            bad = Source("prometheus", doc.str_(events, "error_query", f"{path}.sli.events"))
            total = Source("prometheus", doc.str_(events, "total_query", f"{path}.sli.events"))
        elif (raw := doc.map(sli, "raw", f"{path}.sli", required=False)) is not None:
            # An error ratio already: over a total of one.
            bad = Source("prometheus", doc.str_(raw, "error_ratio_query", f"{path}.sli.raw"))
            total = Source("prometheus", "vector(1)")
        else:
            raise doc.fail(sli, None, f"{path}.sli: events or raw (plugins are not supported)")
        yield SLO(
            name=doc.str_(item, "name", path),
            description=str(item.get("description") or ""),
            service=service,
            file=doc.file,
            line=item.line,
            kind="ratio",
            target=objective / 100,
            window_s=30 * 86400.0,  # Sloth's default period
            bad=bad,
            total=total,
            origin="sloth",
            gate=_gate(doc, doc.map(item, "x-cwh", path, required=False), f"{path}.x-cwh"),
        )


def load_file(path: Path) -> list[SLO]:
    doc = _Doc(str(path))
    try:
        text = path.read_text()
    except OSError as exc:
        raise DefinitionError(str(path), 0, f"cannot read: {exc.strerror}") from None
    try:
        documents = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError(str(path), line, f"not valid YAML: {problem}") from None
    out: list[SLO] = []
    for root in documents:
        if root is None:
            continue
        if not isinstance(root, Node):
            raise DefinitionError(str(path), 1, "a document must be a mapping")
        if root.get("apiVersion") == "openslo/v1":
            kind = root.get("kind")
            if kind == "SLO":
                out.extend(_openslo(doc, root))
            elif kind not in ("Service", "AlertPolicy", "AlertCondition", "DataSource"):
                raise doc.fail(root, "kind", f"kind {kind!r}: the gate reads SLO documents")
        elif root.get("version") == "prometheus/v1":
            out.extend(_sloth(doc, root))
        else:
            raise doc.fail(
                root, None, "neither OpenSLO (apiVersion: openslo/v1) nor Sloth "
                "(version: prometheus/v1)"
            )  # fmt: skip
    return out


def load(path: Path = DEFAULT_DIR) -> list[SLO]:
    """Every SLO in a file or a folder (its *.yaml and *.yml, sorted); names must be unique."""
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    if not files:
        raise DefinitionError(str(path), 0, "no *.yaml definitions here")
    out: list[SLO] = []
    seen: dict[str, SLO] = {}
    for f in files:
        for slo in load_file(f):
            if slo.name in seen:
                first = seen[slo.name]
                raise DefinitionError(
                    slo.file, slo.line, f"SLO {slo.name!r} is already defined at "
                    f"{first.file}:{first.line}"
                )  # fmt: skip
            seen[slo.name] = slo
            out.append(slo)
    return out
