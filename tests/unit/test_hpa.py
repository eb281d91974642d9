"""The HPA specs in deploy/base/ and their loader: what the API server accepts, defaults and
refuses."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from env import hpa
from env.hpa import (
    DEFAULT_BEHAVIOR,
    DEFAULT_SCALE_UP,
    ScalingPolicy,
    ScalingRules,
    SpecError,
    parse_quantity,
)

VALID = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: api
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: api
  minReplicas: 3
  maxReplicas: 10
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: 70
"""


def write(tmp_path: Path, text: str, name: str = "hpa.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_shipped_specs_are_the_seeds_bounds_and_targets():
    specs = hpa.load()
    assert set(specs) == {"api", "worker"}
    api, worker = specs["api"], specs["worker"]
    assert (api.target.kind, api.target.name, api.min_replicas, api.max_replicas) == (
        "Deployment",
        "api",
        3,
        10,
    )
    (cpu,) = api.metrics
    assert (cpu.type, cpu.name, cpu.target.type, cpu.target.average_utilization) == (
        "Resource",
        "cpu",
        "Utilization",
        70,
    )
    assert (worker.target.name, worker.min_replicas, worker.max_replicas) == ("worker", 3, 20)
    (depth,) = worker.metrics
    assert (depth.type, depth.name, depth.target.type) == (
        "External",
        "cloudwatcher_queue_depth",
        "AverageValue",
    )
    assert depth.target.average_value is not None
    assert depth.target.average_value.milli == 8000
    assert depth.key == "External:cloudwatcher_queue_depth"


def test_the_shipped_behavior_scales_up_fast_and_down_slowly():
    specs = hpa.load()
    for spec in specs.values():
        up, down = spec.behavior.scale_up, spec.behavior.scale_down
        assert down.stabilization_window_s == 300
        assert (up.stabilization_window_s or 0) <= 30
        assert up.select_policy == down.select_policy == "Max"
    api = specs["api"].behavior
    assert api.scale_up.policies == (ScalingPolicy("Percent", 100, 15),)
    assert api.scale_down.policies == (ScalingPolicy("Pods", 1, 30),)
    worker = specs["worker"].behavior
    assert set(worker.scale_up.policies) == set(DEFAULT_SCALE_UP.policies)
    assert worker.scale_down.policies == (ScalingPolicy("Percent", 50, 60),)


def test_kubernetes_defaults_apply_when_fields_are_left_out(tmp_path):
    text = """\
    apiVersion: autoscaling/v2
    kind: HorizontalPodAutoscaler
    metadata: {name: bare}
    spec:
      scaleTargetRef: {kind: Deployment, name: x}
      maxReplicas: 5
    """
    (spec,) = hpa.load_file(write(tmp_path, text))
    assert spec.min_replicas == 1
    (cpu,) = spec.metrics
    assert (cpu.type, cpu.name, cpu.target.average_utilization) == ("Resource", "cpu", 80)
    assert spec.behavior == DEFAULT_BEHAVIOR
    # The documentation's default behavior: up 100 % or 4 pods per 15 s (Max), no window;
    # down 100 % per 15 s, the controller's 300 s window (None here: the flag's value).
    assert spec.behavior.scale_up == ScalingRules(
        0, "Max", (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15))
    )
    assert spec.behavior.scale_down == ScalingRules(
        None, "Max", (ScalingPolicy("Percent", 100, 15),)
    )


def test_a_partial_behavior_is_merged_field_by_field_with_the_defaults(tmp_path):
    text = VALID + "  behavior:\n    scaleDown:\n      stabilizationWindowSeconds: 60\n"
    (spec,) = hpa.load_file(write(tmp_path, text))
    assert spec.behavior.scale_up == DEFAULT_SCALE_UP
    assert spec.behavior.scale_down == ScalingRules(60, "Max", (ScalingPolicy("Percent", 100, 15),))


def test_other_kinds_in_the_same_folder_are_skipped(tmp_path):
    pdb = """\
    apiVersion: policy/v1
    kind: PodDisruptionBudget
    metadata: {name: api}
    spec: {minAvailable: 2}
    ---
    """
    write(tmp_path, textwrap.dedent(pdb) + VALID, "a.yaml")
    assert list(hpa.load(tmp_path)) == ["api"]


@pytest.mark.parametrize(
    ("text", "quantity"),
    [
        ("200m", 200),
        ("8", 8000),
        (8, 8000),
        ("1.5", 1500),
        (0.25, 250),
        ("1Ki", 1024000),
        ("1e3", 1000000),
        ("2k", 2000000),
        ("1n", 1),
        ("1.5Gi", 1610612736000),
    ],
)
def test_quantities_read_as_kubernetes_milli_values(text, quantity):
    assert parse_quantity(text).milli == quantity


@pytest.mark.parametrize("text", ["abc", "1.2.3", "5 cores", "", True, None, "1Xi"])
def test_what_is_not_a_quantity_is_refused(text):
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(text)


# (what to change in VALID, the line the error must point at, what it must say)
BAD = [
    (
        "  minReplicas: 3\n",
        "  minReplicas: 12\n",
        11,
        "must be greater than or equal to `minReplicas`",
    ),
    ("  maxReplicas: 10\n", "  maxReplicas: 0\n", 11, "maxReplicas: Invalid value: 0"),
    ("  minReplicas: 3\n", "  minReplicas: 0\n", 10, "minReplicas: Invalid value: 0"),
    ("  maxReplicas: 10\n", "  maxReplicas: ten\n", 11, "must be an integer"),
    ("  maxReplicas: 10\n", "", 6, "spec.maxReplicas: Required value"),
    ("  minReplicas: 3\n", "  minReplica: 3\n", 10, 'unknown field "minReplica"'),
    ("  name: api\n", "  name: API\n", 4, "lowercase RFC 1123 subdomain"),
    ("    kind: Deployment\n", "", 7, "spec.scaleTargetRef.kind: Required value"),
    ("    - type: Resource\n", "    - type: Memory\n", 13, 'Unsupported value: "Memory"'),
    (
        "          type: Utilization\n",
        "          type: Value\n",
        17,
        'Unsupported value: "Value": supported values: Utilization, AverageValue',
    ),
    (
        "          averageUtilization: 70\n",
        "          averageUtilization: 0\n",
        18,
        "averageUtilization: Invalid value: 0",
    ),
    (
        "          averageUtilization: 70\n",
        "          averageValue: 500m\n",
        17,
        "must set `averageUtilization` when `type` is Utilization",
    ),
    (
        "          averageUtilization: 70\n",
        "          averageUtilization: 70\n          averageValue: 500m\n",
        19,
        "may not set `averageValue` when `type` is Utilization",
    ),
    ("      resource:\n", "      external:\n", 14, "external: Forbidden"),
    (
        "kind: HorizontalPodAutoscaler\n",
        "kind: HorizontalPodAutoscaler\nfoo: 1\n",
        3,
        'unknown field "foo"',
    ),
    ("apiVersion: autoscaling/v2\n", "apiVersion: autoscaling/v1\n", 1, "autoscaling/v2 only"),
]


@pytest.mark.parametrize(("old", "new", "line", "message"), BAD)
def test_a_field_the_api_server_refuses_is_reported_with_its_line(
    tmp_path, old, new, line, message
):
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(SpecError) as caught:
        hpa.load(path)
    assert caught.value.file == str(path)
    assert caught.value.line == line, str(caught.value)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{path}:{line}: ")


BEHAVIOR = """\
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
      selectPolicy: Max
      policies:
        - type: Percent
          value: 10
          periodSeconds: 60
"""

BAD_BEHAVIOR = [
    (
        "periodSeconds: 60",
        "periodSeconds: 0",
        26,
        "periodSeconds: Invalid value: 0: must be between 1 and 1800",
    ),
    (
        "periodSeconds: 60",
        "periodSeconds: 1801",
        26,
        "Invalid value: 1801: must be between 1 and 1800",
    ),
    (
        "stabilizationWindowSeconds: 300",
        "stabilizationWindowSeconds: 3601",
        21,
        "Invalid value: 3601: must be between 0 and 3600",
    ),
    ("stabilizationWindowSeconds: 300", "stabilizationWindowSeconds: -1", 21, "Invalid value: -1"),
    (
        "selectPolicy: Max",
        "selectPolicy: Maximum",
        22,
        'Unsupported value: "Maximum": supported values: Max, Min, Disabled',
    ),
    (
        "- type: Percent",
        "- type: Replicas",
        24,
        'Unsupported value: "Replicas": supported values: Pods, Percent',
    ),
    ("value: 10", "value: 0", 25, "value: Invalid value: 0: must be at least 1"),
    ("scaleDown:", "scaleDownn:", 20, 'unknown field "scaleDownn"'),
]


@pytest.mark.parametrize(("old", "new", "line", "message"), BAD_BEHAVIOR)
def test_behavior_is_validated_as_the_api_server_does(tmp_path, old, new, line, message):
    path = write(tmp_path, VALID + BEHAVIOR.replace(old, new, 1))
    with pytest.raises(SpecError) as caught:
        hpa.load(path)
    assert caught.value.line == line, str(caught.value)
    assert message in str(caught.value)


def test_an_empty_policy_list_is_refused_not_defaulted(tmp_path):
    text = VALID + "  behavior:\n    scaleUp:\n      policies: []\n"
    with pytest.raises(SpecError, match="must specify at least one Policy"):
        hpa.load(write(tmp_path, text))


def test_bad_yaml_names_its_line(tmp_path):
    path = write(tmp_path, VALID.replace("  maxReplicas: 10\n", "  maxReplicas: [10\n"))
    with pytest.raises(SpecError, match="not valid YAML") as caught:
        hpa.load(path)
    assert caught.value.line == 12


def test_an_hpa_defined_twice_points_at_both(tmp_path):
    first = write(tmp_path, VALID, "a.yaml")
    write(tmp_path, VALID, "b.yaml")
    with pytest.raises(SpecError, match=rf"'api' is already defined at {first}:1"):
        hpa.load(tmp_path)


def test_a_folder_without_any_hpa_is_an_error(tmp_path):
    with pytest.raises(SpecError, match="no HorizontalPodAutoscaler here"):
        hpa.load(tmp_path)


def test_external_and_object_metrics_read_their_identifier_and_selector(tmp_path):
    metrics = """\
      metrics:
        - type: External
          external:
            metric:
              name: queue_depth
              selector: {matchLabels: {queue: jobs, tier: b}}
            target: {type: Value, value: "30"}
        - type: Object
          object:
            describedObject: {apiVersion: v1, kind: Service, name: api}
            metric: {name: requests_per_second}
            target: {type: AverageValue, averageValue: 500m}
    """
    text = VALID.split("  metrics:\n")[0] + textwrap.indent(textwrap.dedent(metrics), "  ")
    (spec,) = hpa.load_file(write(tmp_path, text))
    external, obj = spec.metrics
    assert external.selector == (("queue", "jobs"), ("tier", "b"))
    assert external.target.value is not None
    assert external.target.value.milli == 30000
    assert obj.described_object == hpa.ObjectRef("Service", "api", "v1")
    assert obj.target.average_value is not None
    assert obj.target.average_value.milli == 500
    assert (external.line, obj.line) == (13, 19)


def test_fast_scale_down_copies_get_rules_even_without_behavior_and_no_leftovers(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    write(src, VALID, "hpa-api.yaml")  # no behavior at all
    write(out, VALID.replace("name: api", "name: gone"), "hpa-gone.yaml")  # an earlier run's
    hpa.write_fast_scale_down(out, 20, 10, src=src)
    specs = hpa.load(out)
    assert set(specs) == {"api"}
    down = specs["api"].behavior.scale_down
    assert down.stabilization_window_s == 20
    assert [p.period_s for p in down.policies] == [10]


def test_fast_scale_down_copies_never_replace_their_source(tmp_path):
    write(tmp_path, VALID, "hpa-api.yaml")
    with pytest.raises(ValueError, match="would replace the specs"):
        hpa.write_fast_scale_down(tmp_path, 20, 10, src=tmp_path)
    assert hpa.load(tmp_path)["api"].behavior.scale_down.stabilization_window_s is None
