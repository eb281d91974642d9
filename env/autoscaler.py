"""The Kubernetes HPA algorithm as a pure function: what the controller would scale to, and why.

`decide(spec, observation, history, config)` is one sync of kube-controller-manager's horizontal
pod autoscaler for one HPA (`env/hpa.py` reads the spec): per metric, desired =
ceil(current replicas x current value / target), with the tolerance, the treatment of missing
metrics and not-ready pods, the highest proposal over the metrics; then the stabilization
windows, the scaling policies and the min/max clamps. It returns every step (`Decision`), and
the history the next sync needs. `run` repeats it every sync period over a simulated target.

It follows the documentation (tasks/run-application/horizontal-pod-autoscale, "Algorithm
details" and "Configurable scaling behavior") and, where that is silent or loose, the
controller's source (`pkg/controller/podautoscaler`), so a local run and a cluster decide alike:

- values are milli-units, and utilization an integer percent, truncated, as the controller
  computes them (77.9 % of the request is 77 %); the tolerance band is inclusive;
- on a scale down a pod with no metric counts as using 100 % of its request (or the target
  when that is above 100 %) for utilization, and exactly the target for other metrics; the
  documentation's "100 % of the desired value" is the latter wording for both;
- a not-ready pod (and, for CPU, a pod still in its initialization period whose sample predates
  a full window of readiness) is left out; on a scale up it then counts as 0;
- the first sync records the current replica count as a recommendation, so a freshly started
  controller does not scale down inside the window, as the controller does;
- a scale event counts toward a policy's period while it is strictly younger than the period,
  and a recommendation toward a window while strictly younger than the window.

No I/O and no clock: times are seconds on the caller's clock, passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from env.hpa import HPASpec, MetricSpec, ScalingRules


@dataclass(frozen=True)
class ControllerConfig:
    """kube-controller-manager's HPA flags, with their defaults; seconds.

    sync_period_s: --horizontal-pod-autoscaler-sync-period, how often `run` decides.
    tolerance: --horizontal-pod-autoscaler-tolerance; no change while the ratio is within it.
    cpu_initialization_period_s, initial_readiness_delay_s: when a pod's CPU is start-up CPU.
    downscale_stabilization_s: the scale-down window when the spec gives none.
    """

    sync_period_s: float = 15.0
    tolerance: float = 0.1
    cpu_initialization_period_s: float = 300.0
    initial_readiness_delay_s: float = 30.0
    downscale_stabilization_s: float = 300.0


PodPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class Pod:
    """A pod of the scale target, as the pod lister sees it.

    ready: its Ready condition (None: it has none yet); ready_since: that condition's last
    transition. started_at: status.startTime (None: not started). deleting: a deletion timestamp
    is set (draining). requests: resource -> request summed over its containers, in the
    resource's unit (cores for cpu); a resource absent means no request. For a ContainerResource
    metric, give that container's own request (and its own usage in the samples).
    """

    name: str
    phase: PodPhase = "Running"
    ready: bool | None = True
    ready_since: float = 0.0
    started_at: float | None = 0.0
    deleting: bool = False
    requests: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PodMetric:
    """One pod's value of a metric (cores for cpu), over the `window_s` ending at `timestamp`."""

    value: float
    timestamp: float
    window_s: float = 30.0


@dataclass(frozen=True)
class Observation:
    """What the controller sees at one sync.

    now: the sync's time. replicas: the target's scale.spec.replicas, the current replicas.
    pods: the target's pods. pod_metrics: per-pod values by `MetricSpec.key` (Resource,
    ContainerResource, Pods metrics); a key absent or empty: the metrics API had nothing.
    values: Object and External values by `MetricSpec.key`, already filtered by the metric's
    selector (an External metric's series are summed); absent or empty: the metrics API had
    nothing.
    status_replicas, ready_replicas: scale.status.replicas and readyReplicas; None: counted
    from `pods` (running or pending and not deleting; of those, running and ready).
    """

    now: float
    replicas: int
    pods: tuple[Pod, ...] = ()
    pod_metrics: Mapping[str, Mapping[str, PodMetric]] = field(default_factory=dict)
    values: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    status_replicas: int | None = None
    ready_replicas: int | None = None

    def counted_status_replicas(self) -> int:
        if self.status_replicas is not None:
            return self.status_replicas
        return sum(1 for p in self.pods if not p.deleting and p.phase in ("Pending", "Running"))

    def counted_ready_replicas(self) -> int:
        if self.ready_replicas is not None:
            return self.ready_replicas
        return sum(1 for p in self.pods if not p.deleting and p.phase == "Running" and p.ready)


@dataclass(frozen=True)
class Recommendation:
    """A per-sync recommendation (the highest metric proposal) as stabilization remembers it."""

    at: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    """A rescale the controller made: change > 0 added replicas, < 0 removed them."""

    at: float
    change: int


@dataclass(frozen=True)
class History:
    """What the controller remembers between syncs (in memory, as kube-controller-manager does)."""

    recommendations: tuple[Recommendation, ...] = ()
    events: tuple[ScaleEvent, ...] = ()


@dataclass(frozen=True)
class MetricVerdict:
    """One metric's proposal, and the current value the HPA status would report for it.

    metric: the `MetricSpec.key`. replicas: the proposal, after the tolerance and the
    missing/not-ready adjustment (None: the metric could not be computed; `note` says why).
    ratio: current / target before that adjustment. raw: the proposal before the tolerance and
    the adjustment. utilization (percent of request), average, value: the current metric as
    status.currentMetrics has it, in the metric's unit (cores for cpu).
    """

    metric: str
    replicas: int | None
    ratio: float | None = None
    raw: int | None = None
    utilization: int | None = None
    average: float | None = None
    value: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Decision:
    """One sync's result, step by step.

    current: the replicas it started from. metrics: each metric's verdict. recommendation: the
    highest proposal (what stabilization records; None when no metric was computed).
    stabilized: after the stabilization windows. after_policies: after the scaling policies.
    desired: after the min/max clamps; what the target is to be scaled to.
    reason: why desired is what it is, in the controller's words: DesiredWithinRange,
    ScaleUpLimit, TooManyReplicas, ScaleDownLimit, TooFewReplicas (its ScalingLimited reasons),
    or AboveMax / BelowMin (current outside the bounds: straight to the bound), FailedGetMetrics
    (no scaling this sync), ScalingDisabled (the target is at 0 replicas).
    history: what to remember, without this sync's rescale; `next_history` adds it.
    """

    at: float
    current: int
    metrics: tuple[MetricVerdict, ...]
    recommendation: int | None
    stabilized: int
    after_policies: int
    desired: int
    reason: str
    history: History

    def next_history(self, applied: bool = True) -> History:
        """The history for the next sync; `applied=False` when the rescale did not happen."""
        if not applied or self.desired == self.current:
            return self.history
        event = ScaleEvent(self.at, self.desired - self.current)
        return replace(self.history, events=(*self.history.events, event))


# --- one metric ---------------------------------------------------------------------------------


def _milli(value: float) -> int:
    # Kubernetes' metrics APIs answer in milli-units; floats from a rate() round to them.
    return round(value * 1000)


def _within(ratio: float, tolerance: float) -> bool:
    return (1.0 - tolerance) <= ratio <= (1.0 + tolerance)


def _failed(metric: MetricSpec, note: str) -> MetricVerdict:
    return MetricVerdict(metric.key, None, note=note)


@dataclass(frozen=True)
class _Groups:
    ready: int  # pods with a metric that count
    unready: frozenset[str]  # pending, not ready, or CPU still warming up: left out
    missing: frozenset[str]  # running but no metric
    ignored: frozenset[str]  # finished, failed or being deleted


def _cpu_unready(pod: Pod, sample: PodMetric, now: float, cfg: ControllerConfig) -> bool:
    """Whether a pod's CPU sample is start-up CPU (the controller's rule, groupPods)."""
    if pod.ready is None or pod.started_at is None:
        return True
    if pod.started_at + cfg.cpu_initialization_period_s > now:
        # Still initializing: only a sample covering a full window of readiness counts.
        return pod.ready is False or sample.timestamp < pod.ready_since + sample.window_s
    # Past initialization: left out only when it never became ready.
    return pod.ready is False and pod.started_at + cfg.initial_readiness_delay_s > pod.ready_since


def _group(
    pods: tuple[Pod, ...],
    samples: Mapping[str, PodMetric],
    cpu: bool,
    now: float,
    cfg: ControllerConfig,
) -> _Groups:
    ready = 0
    unready: set[str] = set()
    missing: set[str] = set()
    ignored: set[str] = set()
    for pod in pods:
        if pod.deleting or pod.phase in ("Failed", "Succeeded"):
            ignored.add(pod.name)
        elif pod.phase == "Pending":
            unready.add(pod.name)
        elif (sample := samples.get(pod.name)) is None:
            missing.add(pod.name)
        elif cpu and _cpu_unready(pod, sample, now, cfg):
            unready.add(pod.name)
        else:
            ready += 1
    return _Groups(ready, frozenset(unready), frozenset(missing), frozenset(ignored))


def _adjust(
    current: int,
    ratio: float,
    groups: _Groups,
    values: dict[str, int],
    ratio_of: Callable[[dict[str, int]], float],
    fallback: Callable[[str], int],
    tolerance: float,
) -> tuple[int, int, str]:
    """Missing metrics and not-ready pods, as the controller weighs them: (replicas, raw, note).

    values: the counted pods' milli-values; ratio_of recomputes the ratio over such values;
    fallback(pod): what a pod without a metric counts as on a scale down.
    """
    raw = math.ceil(ratio * groups.ready)
    with_unready = bool(groups.unready) and ratio > 1.0
    if not with_unready and not groups.missing:
        if _within(ratio, tolerance):
            return current, raw, "within tolerance"
        return raw, raw, ""
    adjusted = dict(values)
    if ratio < 1.0:
        adjusted.update({name: fallback(name) for name in groups.missing})
    elif ratio > 1.0:
        adjusted.update(dict.fromkeys(groups.missing, 0))
    if with_unready:
        adjusted.update(dict.fromkeys(groups.unready, 0))
    new_ratio = ratio_of(adjusted)
    if _within(new_ratio, tolerance):
        return current, raw, "within tolerance once missing and not-ready pods count"
    if ratio < 1.0 < new_ratio or ratio > 1.0 > new_ratio:
        return current, raw, "missing and not-ready pods reverse the direction"
    replicas = math.ceil(new_ratio * len(adjusted))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return current, raw, "counting missing and not-ready pods reverses the direction"
    return replicas, raw, "missing metrics or not-ready pods dampen the change"


def _pod_inputs(
    metric: MetricSpec, obs: Observation, cfg: ControllerConfig
) -> tuple[_Groups, dict[str, int]] | str:
    """The grouped pods and the counted pods' values, or why there are none."""
    samples = obs.pod_metrics.get(metric.key)
    if not samples:
        return f"unable to get metric {metric.key}: no metrics returned"
    if not obs.pods:
        return "no pods returned by selector while calculating replica count"
    cpu = metric.type != "Pods" and metric.name == "cpu"
    groups = _group(obs.pods, samples, cpu, obs.now, cfg)
    left_out = groups.unready | groups.ignored
    values = {name: _milli(s.value) for name, s in samples.items() if name not in left_out}
    if not values:
        return "did not receive metrics for targeted pods (pods might be unready)"
    return groups, values


def _utilization_verdict(
    metric: MetricSpec, obs: Observation, cfg: ControllerConfig
) -> MetricVerdict:
    inputs = _pod_inputs(metric, obs, cfg)
    if isinstance(inputs, str):
        return _failed(metric, inputs)
    groups, values = inputs
    requests: dict[str, int] = {}
    for pod in obs.pods:
        if (request := pod.requests.get(metric.name)) is None:
            return _failed(metric, f"missing request for {metric.name} in pod {pod.name}")
        requests[pod.name] = _milli(request)
    target = metric.target.average_utilization
    assert target is not None

    def utilization(vals: dict[str, int]) -> tuple[int, int, int]:
        counted = [(v, requests[n]) for n, v in vals.items() if n in requests]
        used, requested = sum(v for v, _ in counted), sum(r for _, r in counted)
        return used * 100 // requested if requested else -1, used, len(counted)

    percent, used, n = utilization(values)
    if percent < 0:
        return _failed(metric, "no metrics returned matched known pods")
    ratio = percent / target
    # A pod without a metric counts as its whole request, or the target when that is higher.
    fallback_pct = max(100, target)
    replicas, raw, note = _adjust(
        obs.replicas,
        ratio,
        groups,
        values,
        lambda vals: utilization(vals)[0] / target,
        lambda name: requests[name] * fallback_pct // 100,
        cfg.tolerance,
    )
    return MetricVerdict(metric.key, replicas, ratio, raw, percent, used // n / 1000, note=note)


def _average_verdict(metric: MetricSpec, obs: Observation, cfg: ControllerConfig) -> MetricVerdict:
    """Pods metrics, and Resource metrics with an AverageValue target."""
    inputs = _pod_inputs(metric, obs, cfg)
    if isinstance(inputs, str):
        return _failed(metric, inputs)
    groups, values = inputs
    assert metric.target.average_value is not None
    target = metric.target.average_value.milli

    def usage(vals: dict[str, int]) -> int:
        return sum(vals.values()) // len(vals)

    ratio = usage(values) / target
    replicas, raw, note = _adjust(
        obs.replicas,
        ratio,
        groups,
        values,
        lambda vals: usage(vals) / target,
        lambda _name: target,
        cfg.tolerance,
    )
    return MetricVerdict(metric.key, replicas, ratio, raw, average=usage(values) / 1000, note=note)


def _value_verdict(metric: MetricSpec, obs: Observation, cfg: ControllerConfig) -> MetricVerdict:
    """Object and External metrics: one value (an External metric's series summed)."""
    series = obs.values.get(metric.key)
    if not series:
        return _failed(metric, f"unable to get metric {metric.key}: no metrics returned")
    used = sum(_milli(v) for v in series)
    if metric.target.type == "Value":
        assert metric.target.value is not None
        ratio = used / metric.target.value.milli
        raw = math.ceil(ratio * obs.counted_ready_replicas())
        within = _within(ratio, cfg.tolerance)
        replicas, note = (obs.replicas, "within tolerance") if within else (raw, "")
        return MetricVerdict(metric.key, replicas, ratio, raw, value=used / 1000, note=note)
    assert metric.target.average_value is not None
    per_pod = metric.target.average_value.milli
    status = obs.counted_status_replicas()
    raw = math.ceil(used / per_pod)
    ratio = used / (per_pod * status) if status else math.inf
    if _within(ratio, cfg.tolerance):
        # The controller keeps status.replicas here (pods that exist), not spec.replicas.
        return MetricVerdict(
            metric.key,
            status,
            ratio,
            raw,
            average=math.ceil(used / status) / 1000,
            note="within tolerance",
        )
    average = math.ceil(used / status) / 1000 if status else None
    return MetricVerdict(metric.key, raw, ratio, raw, average=average)


def evaluate(metric: MetricSpec, obs: Observation, cfg: ControllerConfig) -> MetricVerdict:
    """One metric's proposal (computeReplicasForMetric)."""
    if metric.type in ("Object", "External"):
        return _value_verdict(metric, obs, cfg)
    if metric.type in ("Resource", "ContainerResource") and metric.target.type == "Utilization":
        return _utilization_verdict(metric, obs, cfg)
    return _average_verdict(metric, obs, cfg)


# --- the whole spec -----------------------------------------------------------------------------


def _combine(verdicts: tuple[MetricVerdict, ...], current: int) -> int | None:
    """The highest proposal; None (no scaling) when every metric failed, or some failed and the
    rest would scale down: a metric that cannot be read may be the one that is high."""
    proposals = [v.replicas for v in verdicts if v.replicas is not None]
    failed = len(verdicts) - len(proposals)
    highest = max(proposals, default=0)
    if failed >= len(verdicts) or (failed and highest < current):
        return None
    return highest


def _down_window(rules: ScalingRules, cfg: ControllerConfig) -> float:
    window = rules.stabilization_window_s
    return cfg.downscale_stabilization_s if window is None else float(window)


def _stabilize(
    proposal: int,
    current: int,
    recs: tuple[Recommendation, ...],
    spec: HPASpec,
    now: float,
    cfg: ControllerConfig,
) -> int:
    """Scale up to the lowest recommendation of the up window, down to the highest of the down
    window (the proposal itself is in both)."""
    up_cutoff = now - float(spec.behavior.scale_up.stabilization_window_s or 0)
    down_cutoff = now - _down_window(spec.behavior.scale_down, cfg)
    up = min([proposal, *(r.replicas for r in recs if r.at > up_cutoff)])
    down = max([proposal, *(r.replicas for r in recs if r.at > down_cutoff)])
    return min(max(current, up), down)


def _period_start(current: int, events: tuple[ScaleEvent, ...], period_s: int, now: float) -> int:
    """The replica count at the start of a policy's period: the changes within it undone."""
    return current - sum(e.change for e in events if e.at > now - period_s)


def scale_up_limit(
    current: int, events: tuple[ScaleEvent, ...], rules: ScalingRules, now: float
) -> int:
    """The most replicas the scale-up policies allow now (calculateScaleUpLimitWithScalingRules)."""
    if rules.select_policy == "Disabled":
        return current
    limits = []
    for p in rules.policies:
        start = _period_start(current, events, p.period_s, now)
        # Rounded up, or a small Percent would never add a pod.
        limits.append(
            start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
        )
    return min(limits) if rules.select_policy == "Min" else max(limits)


def scale_down_limit(
    current: int, events: tuple[ScaleEvent, ...], rules: ScalingRules, now: float
) -> int:
    """The fewest replicas the scale-down policies allow now
    (calculateScaleDownLimitWithBehaviors)."""
    if rules.select_policy == "Disabled":
        return current
    limits = []
    for p in rules.policies:
        start = _period_start(current, events, p.period_s, now)
        limits.append(start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100)))
    # Min selects the policy that changes least: on the way down, the highest floor.
    return max(limits) if rules.select_policy == "Min" else min(limits)


def _limit(
    stabilized: int, current: int, spec: HPASpec, events: tuple[ScaleEvent, ...], now: float
) -> tuple[int, int, str]:
    """(after the policies, after the min/max clamps, reason), as the controller's
    convertDesiredReplicasWithBehaviorRate decides them."""
    if stabilized > current:
        # A period whose events exceed the policy must not turn into a scale down.
        limit = max(scale_up_limit(current, events, spec.behavior.scale_up, now), current)
        after = min(stabilized, limit)
        desired = min(after, spec.max_replicas)
        if stabilized <= desired:
            return after, desired, "DesiredWithinRange"
        return after, desired, "ScaleUpLimit" if limit < spec.max_replicas else "TooManyReplicas"
    if stabilized < current:
        limit = min(scale_down_limit(current, events, spec.behavior.scale_down, now), current)
        after = max(stabilized, limit)
        desired = max(after, spec.min_replicas)
        if stabilized >= desired:
            return after, desired, "DesiredWithinRange"
        return after, desired, "ScaleDownLimit" if limit > spec.min_replicas else "TooFewReplicas"
    return stabilized, stabilized, "DesiredWithinRange"


def _remembered(history: History, spec: HPASpec, now: float, cfg: ControllerConfig) -> History:
    """Drop what no later sync can use: recommendations older than both windows, events older
    than every policy's period."""
    windows = (
        float(spec.behavior.scale_up.stabilization_window_s or 0),
        _down_window(spec.behavior.scale_down, cfg),
    )
    rules = (spec.behavior.scale_up, spec.behavior.scale_down)
    longest = max(p.period_s for r in rules for p in r.policies)
    recs = history.recommendations
    # The newest stays even when old: the controller seeds only a history it never had.
    kept = tuple(r for r in recs[:-1] if r.at > now - max(windows)) + recs[-1:]
    return History(kept, tuple(e for e in history.events if e.at > now - longest))


def decide(
    spec: HPASpec,
    obs: Observation,
    history: History | None = None,
    cfg: ControllerConfig | None = None,
) -> Decision:
    """One sync of the HPA controller for `spec` (reconcileAutoscaler), as a pure function.

    history: what earlier syncs of this HPA left (`Decision.next_history`); None at the start.
    Deterministic: the same arguments give the same Decision.
    """
    history = history or History()
    cfg = cfg or ControllerConfig()
    now, current = obs.now, obs.replicas
    # The first sync remembers the current count, so no scale down before a window has passed.
    recs = history.recommendations or (Recommendation(now, current),)
    kept = _remembered(History(recs, history.events), spec, now, cfg)

    def straight(desired: int, reason: str, verdicts: tuple[MetricVerdict, ...] = ()) -> Decision:
        return Decision(now, current, verdicts, None, desired, desired, desired, reason, kept)

    if current == 0:
        return straight(0, "ScalingDisabled")  # scaled to zero by hand: the HPA stands aside
    if current > spec.max_replicas:
        return straight(spec.max_replicas, "AboveMax")
    if current < spec.min_replicas:
        return straight(spec.min_replicas, "BelowMin")
    verdicts = tuple(evaluate(m, obs, cfg) for m in spec.metrics)
    proposal = _combine(verdicts, current)
    if proposal is None:
        return straight(current, "FailedGetMetrics", verdicts)
    stabilized = _stabilize(proposal, current, recs, spec, now, cfg)
    after, desired, reason = _limit(stabilized, current, spec, kept.events, now)
    recorded = replace(kept, recommendations=(*kept.recommendations, Recommendation(now, proposal)))
    return Decision(now, current, verdicts, proposal, stabilized, after, desired, reason, recorded)


def run(
    spec: HPASpec,
    observe: Callable[[float, int], Observation],
    replicas: int,
    start: float,
    until: float,
    cfg: ControllerConfig | None = None,
    history: History | None = None,
) -> Iterator[Decision]:
    """Sync every `cfg.sync_period_s` from `start` while before `until`, over a simulated target
    that starts at `replicas` and takes each desired count at once: `observe(now, replicas)`
    says what the controller sees then. Pure when `observe` is; the local autoscaler's loop does
    the same against real processes, which take time to start and become ready."""
    cfg = cfg or ControllerConfig()
    now = start
    while now < until:
        decision = decide(spec, replace(observe(now, replicas), replicas=replicas), history, cfg)
        yield decision
        history, replicas = decision.next_history(), decision.desired
        now += cfg.sync_period_s


# --- kube-state-metrics -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedSample:
    """One gauge sample, labels in kube-state-metrics' order."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


_TARGET_TYPE_LABEL = {"Value": "value", "Utilization": "utilization", "AverageValue": "average"}
_HPA = "kube_horizontalpodautoscaler_"
Labels = tuple[tuple[str, str], ...]


def _target_value(metric: MetricSpec) -> float:
    t = metric.target
    if t.average_utilization is not None:
        return float(t.average_utilization)
    quantity = t.value or t.average_value
    assert quantity is not None
    return quantity.value


def _metric_samples(
    spec: HPASpec, hpa_labels: Labels, decision: Decision | None
) -> Iterator[ExportedSample]:
    """spec_target_metric per metric, and status_target_metric per current value known."""
    plain = [m for m in spec.metrics if m.type in ("Resource", "Pods", "External")]
    for m in plain:
        kind = _TARGET_TYPE_LABEL[m.target.type]
        labels = (*hpa_labels, ("metric_name", m.name), ("metric_target_type", kind))
        yield ExportedSample(f"{_HPA}spec_target_metric", labels, _target_value(m))
    verdicts = {v.metric: v for v in decision.metrics} if decision else {}
    for m in plain:
        if (v := verdicts.get(m.key)) is None:
            continue
        for kind, value in (
            ("value", v.value),
            ("utilization", v.utilization),
            ("average", v.average),
        ):
            if value is not None:
                labels = (*hpa_labels, ("metric_name", m.name), ("metric_target_type", kind))
                yield ExportedSample(f"{_HPA}status_target_metric", labels, float(value))


def kube_state_samples(
    spec: HPASpec,
    current: int,
    desired: int,
    available: int,
    *,
    ready: int | None = None,
    namespace: str | None = None,
    decision: Decision | None = None,
) -> list[ExportedSample]:
    """The samples kube-state-metrics would expose for this HPA and its Deployment.

    current, desired: the HPA's status.currentReplicas and desiredReplicas (desired is what it
    wrote to the Deployment's spec.replicas). available, ready: the Deployment's available and
    ready replicas (ready defaults to available). decision: the last sync, for the current
    metric values (`..._status_target_metric`); none given, none exported.
    Names and labels as kube-state-metrics v2 has them (docs/metrics/workload/
    horizontalpodautoscaler-metrics.md and deployment-metrics.md); the target metrics cover
    Resource, Pods and External metrics (Object and ContainerResource metrics have families of
    their own there, not exported here).
    """
    ns = namespace or spec.namespace or "default"
    hpa: Labels = (("namespace", ns), ("horizontalpodautoscaler", spec.name))
    ref = spec.target
    info = (*hpa, ("scaletargetref_api_version", ref.api_version)) if ref.api_version else hpa
    info = (*info, ("scaletargetref_kind", ref.kind), ("scaletargetref_name", ref.name))
    out = [
        ExportedSample(f"{_HPA}info", info, 1.0),
        ExportedSample(f"{_HPA}spec_min_replicas", hpa, float(spec.min_replicas)),
        ExportedSample(f"{_HPA}spec_max_replicas", hpa, float(spec.max_replicas)),
        ExportedSample(f"{_HPA}status_current_replicas", hpa, float(current)),
        ExportedSample(f"{_HPA}status_desired_replicas", hpa, float(desired)),
        *_metric_samples(spec, hpa, decision),
    ]
    if ref.kind == "Deployment":
        dep = (("namespace", ns), ("deployment", ref.name))
        ready = available if ready is None else ready
        out += [
            ExportedSample("kube_deployment_spec_replicas", dep, float(desired)),
            ExportedSample("kube_deployment_status_replicas", dep, float(current)),
            ExportedSample("kube_deployment_status_replicas_available", dep, float(available)),
            ExportedSample("kube_deployment_status_replicas_ready", dep, float(ready)),
        ]
    return out
