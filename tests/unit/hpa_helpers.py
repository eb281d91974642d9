"""Small builders for the autoscaler tests: specs in Python, pods and observations by count."""

from __future__ import annotations

from env.autoscaler import Observation, Pod, PodMetric
from env.hpa import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Behavior,
    HPASpec,
    MetricSpec,
    MetricTarget,
    ObjectRef,
    ScalingPolicy,
    ScalingRules,
    parse_quantity,
)

CPU_REQUEST = 0.2  # cores, what the API replicas declare (deploy/base/README.md)


def cpu(percent: int) -> MetricSpec:
    return MetricSpec("Resource", "cpu", MetricTarget("Utilization", average_utilization=percent))


def per_pod(name: str, average: str) -> MetricSpec:
    return MetricSpec(
        "Pods", name, MetricTarget("AverageValue", average_value=parse_quantity(average))
    )


def external(name: str, average: str) -> MetricSpec:
    target = MetricTarget("AverageValue", average_value=parse_quantity(average))
    return MetricSpec("External", name, target)


def rules(window: int | None, select: str = "Max", *policies: tuple[str, int, int]) -> ScalingRules:
    return ScalingRules(window, select, tuple(ScalingPolicy(*p) for p in policies))  # type: ignore[arg-type]


def spec(
    *metrics: MetricSpec,
    lo: int = 1,
    hi: int = 100,
    up: ScalingRules = DEFAULT_SCALE_UP,
    down: ScalingRules = DEFAULT_SCALE_DOWN,
) -> HPASpec:
    target = ObjectRef("Deployment", "app", "apps/v1")
    return HPASpec("app", None, target, lo, hi, metrics or (cpu(70),), Behavior(up, down))


def cpu_pods(now: float, usage: list[float], request: float = CPU_REQUEST) -> Observation:
    """len(usage) ready pods, started long ago, using `usage` cores each."""
    pods = tuple(
        Pod(f"p{i}", requests={"cpu": request}, started_at=-1e6) for i in range(len(usage))
    )
    samples = {f"p{i}": PodMetric(u, now) for i, u in enumerate(usage)}
    return Observation(now, len(usage), pods, {"Resource:cpu": samples})


def backlog(now: float, replicas: int, depth: float, name: str = "queue_depth") -> Observation:
    """`replicas` ready pods and an External metric at `depth`."""
    pods = tuple(Pod(f"w{i}", started_at=-1e6) for i in range(replicas))
    return Observation(now, replicas, pods, values={f"External:{name}": (depth,)})
