"""`autoscaling/v2` HorizontalPodAutoscaler documents, read and checked as the Kubernetes API would.

The files in `deploy/base/` are the one spec of how CloudWatcher scales: a cluster applies them
as they are, and the local autoscaler (`env/autoscaler.py`) reads them through `load`. So this
module accepts what the API server accepts and rejects what it rejects (the rules of
`pkg/apis/autoscaling/validation`, strict field checking included: a misspelt field is an error,
not a silently ignored line), and fills in what the API server defaults
(`SetDefaults_HorizontalPodAutoscaler`): `minReplicas` 1, a CPU 80 % metric when none is given,
and the default `behavior`. Every error starts with `file:line:`, the way SLO definitions report
theirs (`slo/definitions.py`, whose line-aware YAML loader this module shares).

Documents of other kinds in the same files (Deployments, PDBs: the kustomize base will hold
them) are skipped, so `load` can read the whole folder.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import Literal, cast, get_args

import yaml

# One line-aware loader for the repository's YAML specs. It lives in slo/ today (a private name
# there); when slo/ is free to change, it moves to a shared module and both import it from there.
from slo.definitions import Node
from slo.definitions import _Loader as _LineLoader

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "deploy" / "base"
API_VERSION = "autoscaling/v2"

MetricSourceType = Literal["Resource", "ContainerResource", "Pods", "Object", "External"]
TargetType = Literal["Utilization", "Value", "AverageValue"]
PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]

# The member of a MetricSpec that goes with each `type`, and the target types each allows.
_SOURCE_FIELD: dict[str, str] = {
    "Resource": "resource",
    "ContainerResource": "containerResource",
    "Pods": "pods",
    "Object": "object",
    "External": "external",
}
_TARGET_TYPES: dict[str, tuple[TargetType, ...]] = {
    "Resource": ("Utilization", "AverageValue"),
    "ContainerResource": ("Utilization", "AverageValue"),
    "Pods": ("AverageValue",),
    "Object": ("Value", "AverageValue"),
    "External": ("Value", "AverageValue"),
}
_TARGET_FIELD: dict[TargetType, str] = {
    "Utilization": "averageUtilization",
    "Value": "value",
    "AverageValue": "averageValue",
}
MAX_PERIOD_S = 1800
MAX_STABILIZATION_S = 3600
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class SpecError(Exception):
    """A spec the API server would refuse; the message starts with `file:line:`."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line = file, line


# --- quantities ---------------------------------------------------------------------------------

_QUANTITY = re.compile(
    r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<exp>[eE][+-]?\d+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?"
)
_SCALE = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}  # fmt: skip


@dataclass(frozen=True)
class Quantity:
    """A Kubernetes quantity (`"200m"`, `8`, `1.5Gi`), kept as the milli-units the HPA computes in.

    text: as written; milli: the value times 1000, rounded up (`Quantity.MilliValue()`).
    """

    text: str
    milli: int

    @property
    def value(self) -> float:
        return self.milli / 1000


def parse_quantity(raw: object) -> Quantity:
    """A quantity from YAML (a string, or a bare number); ValueError when it is not one."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"not a quantity: {raw!r}")
    text = str(raw).strip()
    m = _QUANTITY.fullmatch(text)
    if m is None:
        raise ValueError(f"not a quantity: {text!r} (like 8, 500m, 1.5, 2Gi)")
    try:
        number = Decimal(m["num"]) * (
            Decimal(f"1{m['exp']}") if m["exp"] else _SCALE[m["suffix"] or ""]
        )
    except InvalidOperation:
        raise ValueError(f"not a quantity: {text!r}") from None
    return Quantity(text, int((number * 1000).to_integral_value(rounding=ROUND_CEILING)))


# --- the typed spec -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    """scaleTargetRef or an Object metric's describedObject."""

    kind: str
    name: str
    api_version: str = ""


@dataclass(frozen=True)
class MetricTarget:
    """What the metric is held at: exactly the field its `type` names is set."""

    type: TargetType
    average_utilization: int | None = None  # percent of the pods' request
    average_value: Quantity | None = None
    value: Quantity | None = None


@dataclass(frozen=True)
class MetricSpec:
    """One entry of `spec.metrics`.

    name: the resource (`cpu`) for Resource and ContainerResource, else the metric's name.
    container: ContainerResource only. selector: the metric's `matchLabels`, sorted.
    described_object: Object only. line: where the entry starts in its file.
    """

    type: MetricSourceType
    name: str
    target: MetricTarget
    container: str | None = None
    selector: tuple[tuple[str, str], ...] = ()
    described_object: ObjectRef | None = None
    line: int = 0

    @property
    def key(self) -> str:
        """How samples for this metric are keyed (`Resource:cpu`, `External:queue_depth`)."""
        name = f"{self.container}/{self.name}" if self.container else self.name
        return f"{self.type}:{name}"


@dataclass(frozen=True)
class ScalingPolicy:
    """At most `value` pods (Pods) or percent (Percent) of change per `period_s` seconds."""

    type: PolicyType
    value: int
    period_s: int


@dataclass(frozen=True)
class ScalingRules:
    """One direction of `behavior`.

    stabilization_window_s: None on scaleDown when not given: the controller's
    `--horizontal-pod-autoscaler-downscale-stabilization` applies (300 s by default).
    """

    stabilization_window_s: int | None
    select_policy: SelectPolicy
    policies: tuple[ScalingPolicy, ...]


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules
    scale_down: ScalingRules


DEFAULT_SCALE_UP = ScalingRules(
    0, "Max", (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15))
)
DEFAULT_SCALE_DOWN = ScalingRules(None, "Max", (ScalingPolicy("Percent", 100, 15),))
DEFAULT_BEHAVIOR = Behavior(DEFAULT_SCALE_UP, DEFAULT_SCALE_DOWN)


@dataclass(frozen=True)
class HPASpec:
    """A HorizontalPodAutoscaler, defaults applied. file and line: where its document starts."""

    name: str
    namespace: str | None
    target: ObjectRef
    min_replicas: int
    max_replicas: int
    metrics: tuple[MetricSpec, ...]
    behavior: Behavior
    file: str = ""
    line: int = 0


# --- reading ------------------------------------------------------------------------------------


class _Reader:
    """Typed access to one document; every error names the file and the line."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: Node, key: str | None, message: str) -> SpecError:
        return SpecError(self.file, node.line_of(key) if key else node.line, message)

    def known(self, node: Node, path: str, keys: set[str]) -> None:
        for key in node:
            if key not in keys:
                raise self.fail(
                    node, key, f'{path}: unknown field "{key}" (known: {", ".join(sorted(keys))})'
                )

    def map(self, node: Node, key: str, path: str) -> Node:
        value = node.get(key)
        if value is None:
            raise self.fail(node, None, f"{path}.{key}: Required value")
        if not isinstance(value, Node):
            raise self.fail(node, key, f"{path}.{key}: must be a mapping")
        return value

    def text(self, node: Node, key: str, path: str) -> str:
        value = node.get(key)
        if value is None or value == "":
            raise self.fail(node, None, f"{path}.{key}: Required value")
        if not isinstance(value, str):
            raise self.fail(node, key, f"{path}.{key}: must be a string, not {value!r}")
        return value

    def integer(self, node: Node, key: str, path: str, lo: int, hi: int | None = None) -> int:
        value = node.get(key)
        if value is None:
            raise self.fail(node, None, f"{path}.{key}: Required value")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(node, key, f"{path}.{key}: must be an integer, not {value!r}")
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise self.fail(node, key, f"{path}.{key}: Invalid value: {value}: must be {bound}")
        return value

    def choice(self, node: Node, key: str, path: str, allowed: tuple[str, ...]) -> str:
        value = self.text(node, key, path)
        if value not in allowed:
            raise self.fail(
                node,
                key,
                f'{path}.{key}: Unsupported value: "{value}": '
                f"supported values: {', '.join(allowed)}",
            )
        return value

    def items(self, node: Node, key: str, path: str) -> list[tuple[str, Node]]:
        value = node.get(key)
        if not isinstance(value, list):
            raise self.fail(node, key, f"{path}.{key}: must be a list")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, Node):
                raise self.fail(node, key, f"{path}.{key}[{i}]: must be a mapping")
            out.append((f"{path}.{key}[{i}]", item))
        return out

    def quantity(self, node: Node, key: str, path: str) -> Quantity:
        try:
            q = parse_quantity(node.get(key))
        except ValueError as exc:
            raise self.fail(node, key, f"{path}.{key}: {exc}") from None
        if q.milli <= 0:
            raise self.fail(node, key, f"{path}.{key}: Invalid value: {q.text}: must be positive")
        return q


def _ref(r: _Reader, node: Node, path: str) -> ObjectRef:
    r.known(node, path, {"apiVersion", "kind", "name"})
    api_version = node.get("apiVersion", "")
    if not isinstance(api_version, str):
        raise r.fail(node, "apiVersion", f"{path}.apiVersion: must be a string")
    return ObjectRef(r.text(node, "kind", path), r.text(node, "name", path), api_version)


def _target(r: _Reader, node: Node, path: str, allowed: tuple[TargetType, ...]) -> MetricTarget:
    r.known(node, path, {"type", *_TARGET_FIELD.values()})
    kind = cast(TargetType, r.choice(node, "type", path, allowed))
    wanted = _TARGET_FIELD[kind]
    if wanted not in node:
        raise r.fail(
            node,
            "type",
            f"{path}.{wanted}: Required value: must set `{wanted}` when `type` is {kind}",
        )
    for other in set(_TARGET_FIELD.values()) - {wanted}:
        if other in node:
            raise r.fail(
                node,
                other,
                f"{path}.{other}: Forbidden: may not set `{other}` when `type` is {kind}",
            )
    if kind == "Utilization":
        return MetricTarget(kind, average_utilization=r.integer(node, wanted, path, 1))
    quantity = r.quantity(node, wanted, path)
    if kind == "Value":
        return MetricTarget(kind, value=quantity)
    return MetricTarget(kind, average_value=quantity)


def _identifier(r: _Reader, node: Node, path: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A MetricIdentifier: the name and the selector's matchLabels."""
    r.known(node, path, {"name", "selector"})
    name = r.text(node, "name", path)
    if "selector" not in node or node["selector"] is None:
        return name, ()
    selector = r.map(node, "selector", path)
    r.known(selector, f"{path}.selector", {"matchLabels", "matchExpressions"})
    if selector.get("matchExpressions"):
        raise r.fail(
            selector,
            "matchExpressions",
            f"{path}.selector.matchExpressions: the local autoscaler reads matchLabels only",
        )
    labels = selector.get("matchLabels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise r.fail(selector, "matchLabels", f"{path}.selector.matchLabels: string values")
    return name, tuple(sorted(labels.items()))


def _metric(r: _Reader, node: Node, path: str) -> MetricSpec:
    r.known(node, path, {"type", *_SOURCE_FIELD.values()})
    kind = cast(MetricSourceType, r.choice(node, "type", path, tuple(_SOURCE_FIELD)))
    field = _SOURCE_FIELD[kind]
    for other in set(_SOURCE_FIELD.values()) - {field}:
        if other in node:
            raise r.fail(
                node,
                other,
                f"{path}.{other}: Forbidden: must populate the given "
                f"metric source only ({field} for type {kind})",
            )
    src = r.map(node, field, path)
    at = f"{path}.{field}"
    allowed = _TARGET_TYPES[kind]
    if kind in ("Resource", "ContainerResource"):
        r.known(src, at, {"name", "target"} | ({"container"} if kind != "Resource" else set()))
        container = r.text(src, "container", at) if kind == "ContainerResource" else None
        target = _target(r, r.map(src, "target", at), f"{at}.target", allowed)
        return MetricSpec(kind, r.text(src, "name", at), target, container, line=node.line)
    keys = {"metric", "target"} | ({"describedObject"} if kind == "Object" else set())
    r.known(src, at, keys)
    name, selector = _identifier(r, r.map(src, "metric", at), f"{at}.metric")
    described = (
        _ref(r, r.map(src, "describedObject", at), f"{at}.describedObject")
        if (kind == "Object")
        else None
    )
    target = _target(r, r.map(src, "target", at), f"{at}.target", allowed)
    return MetricSpec(kind, name, target, None, selector, described, node.line)


def _rules(r: _Reader, node: Node | None, path: str, default: ScalingRules) -> ScalingRules:
    """One direction of behavior; what is left out comes from the default, field by field."""
    if node is None:
        return default
    r.known(node, path, {"stabilizationWindowSeconds", "selectPolicy", "policies"})
    window = default.stabilization_window_s
    if "stabilizationWindowSeconds" in node:
        key = "stabilizationWindowSeconds"
        window = r.integer(node, key, path, 0, MAX_STABILIZATION_S)
    select = default.select_policy
    if "selectPolicy" in node:
        select = cast(SelectPolicy, r.choice(node, "selectPolicy", path, get_args(SelectPolicy)))
    policies = default.policies
    if node.get("policies") is not None:
        policies = tuple(_policy(r, item, at) for at, item in r.items(node, "policies", path))
        if not policies:
            raise r.fail(
                node,
                "policies",
                f"{path}.policies: Required value: must specify at least one Policy",
            )
    return ScalingRules(window, select, policies)


def _policy(r: _Reader, node: Node, path: str) -> ScalingPolicy:
    r.known(node, path, {"type", "value", "periodSeconds"})
    kind = cast(PolicyType, r.choice(node, "type", path, get_args(PolicyType)))
    value = r.integer(node, "value", path, 1)
    return ScalingPolicy(kind, value, r.integer(node, "periodSeconds", path, 1, MAX_PERIOD_S))


def _behavior(r: _Reader, spec: Node) -> Behavior:
    if spec.get("behavior") is None:
        return DEFAULT_BEHAVIOR
    node = r.map(spec, "behavior", "spec")
    r.known(node, "spec.behavior", {"scaleUp", "scaleDown"})
    up, down = node.get("scaleUp"), node.get("scaleDown")
    for key, value in (("scaleUp", up), ("scaleDown", down)):
        if value is not None and not isinstance(value, Node):
            raise r.fail(node, key, f"spec.behavior.{key}: must be a mapping")
    return Behavior(
        _rules(r, cast(Node | None, up), "spec.behavior.scaleUp", DEFAULT_SCALE_UP),
        _rules(r, cast(Node | None, down), "spec.behavior.scaleDown", DEFAULT_SCALE_DOWN),
    )


def _default_metrics(line: int) -> tuple[MetricSpec, ...]:
    # The v2 API's default when spec.metrics is empty: CPU at 80 % of the request.
    target = MetricTarget("Utilization", average_utilization=80)
    return (MetricSpec("Resource", "cpu", target, line=line),)


def _hpa(r: _Reader, root: Node) -> HPASpec:
    r.known(root, "", {"apiVersion", "kind", "metadata", "spec", "status"})
    meta = r.map(root, "metadata", "")
    name = r.text(meta, "name", "metadata")
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise r.fail(
            meta, "name", f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain'
        )
    namespace = meta.get("namespace")
    if namespace is not None and not (
        isinstance(namespace, str) and len(namespace) <= 63 and _DNS_LABEL.fullmatch(namespace)
    ):
        raise r.fail(meta, "namespace", f"metadata.namespace: Invalid value: {namespace!r}")
    spec = r.map(root, "spec", "")
    r.known(spec, "spec", {"scaleTargetRef", "minReplicas", "maxReplicas", "metrics", "behavior"})
    target = _ref(r, r.map(spec, "scaleTargetRef", "spec"), "spec.scaleTargetRef")
    # minReplicas 0 needs the HPAScaleToZero feature gate (alpha): off, as on most clusters.
    low = r.integer(spec, "minReplicas", "spec", 1) if "minReplicas" in spec else 1
    high = r.integer(spec, "maxReplicas", "spec", 1)
    if high < low:
        raise r.fail(
            spec,
            "maxReplicas",
            f"spec.maxReplicas: Invalid value: {high}: must be "
            "greater than or equal to `minReplicas`",
        )
    metrics: tuple[MetricSpec, ...] = ()
    if spec.get("metrics") is not None:
        metrics = tuple(_metric(r, item, at) for at, item in r.items(spec, "metrics", "spec"))
    return HPASpec(
        name=name,
        namespace=namespace,
        target=target,
        min_replicas=low,
        max_replicas=high,
        metrics=metrics or _default_metrics(spec.line),
        behavior=_behavior(r, spec),
        file=r.file,
        line=root.line,
    )


def _documents(path: Path) -> Iterator[Node]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(str(path), 0, f"cannot read: {exc.strerror}") from None
    try:
        documents = list(yaml.load_all(text, Loader=_LineLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(str(path), line, f"not valid YAML: {problem}") from None
    for root in documents:
        if root is None:
            continue
        if not isinstance(root, Node):
            raise SpecError(str(path), 1, "a document must be a mapping")
        yield root


def load_file(path: Path) -> tuple[HPASpec, ...]:
    """The HorizontalPodAutoscalers in one YAML file (other kinds are skipped)."""
    r = _Reader(str(path))
    out = []
    for root in _documents(path):
        if root.get("kind") != "HorizontalPodAutoscaler":
            continue
        if root.get("apiVersion") != API_VERSION:
            raise r.fail(
                root,
                "apiVersion",
                f"apiVersion {root.get('apiVersion')!r}: "
                f"{API_VERSION} only (behavior and External metrics need it)",
            )
        out.append(_hpa(r, root))
    return tuple(out)


def load(path: Path = DEFAULT_DIR) -> dict[str, HPASpec]:
    """Every HPA in a file or a folder (its *.yaml and *.yml, sorted), by name; names unique.

    Raises SpecError (`file:line: ...`) on bad YAML, a field the API would refuse, or an HPA
    named twice; a folder without any HPA is an error too (a wrong path should not look empty).
    """
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    out: dict[str, HPASpec] = {}
    for f in files:
        for hpa in load_file(f):
            if (first := out.get(hpa.name)) is not None:
                raise SpecError(
                    hpa.file,
                    hpa.line,
                    f"HorizontalPodAutoscaler {hpa.name!r} is "
                    f"already defined at {first.file}:{first.line}",
                )
            out[hpa.name] = hpa
    if not out:
        raise SpecError(str(path), 0, "no HorizontalPodAutoscaler here")
    return out


def write_fast_scale_down(out: Path, window_s: int, period_s: int, src: Path = DEFAULT_DIR) -> Path:
    """`src`'s HPA files copied to `out` with every scale-down stabilization window set to
    `window_s` and every scale-down policy period to `period_s`; the rest as shipped. A test or
    a benchmark sees a scale-out and its way back in minutes, not the seed's five-minute window.
    """
    if out.resolve() == src.resolve():
        raise ValueError(f"{out}: the fast copies would replace the specs they are made from")
    # Written beside, then swapped in: a reader of `out` sees the old set or the new one, never
    # a half-written folder, and no file of a spec since removed stays.
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in sorted(src.glob("hpa-*.yaml")):
        doc = yaml.safe_load(f.read_text())
        # An HPA without scale-down rules gets them: the defaults' policies, made fast.
        behavior = doc["spec"].setdefault("behavior", {})
        down = behavior.setdefault("scaleDown", {})
        down["stabilizationWindowSeconds"] = window_s
        policies = down.setdefault("policies", [{"type": "Percent", "value": 100}])
        for policy in policies:
            policy["periodSeconds"] = period_s
        (staging / f.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    load(staging)  # what a run would refuse, refused here
    retired = out.with_name(out.name + ".old")
    shutil.rmtree(retired, ignore_errors=True)
    if out.exists():
        out.rename(retired)
    staging.rename(out)
    shutil.rmtree(retired, ignore_errors=True)
    return out
