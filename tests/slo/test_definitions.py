"""Reading OpenSLO and Sloth definitions, and the errors that point at the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from slo.definitions import DEFAULT_DIR, DefinitionError, load, load_file

THRESHOLD = """\
apiVersion: openslo/v1
kind: SLO
metadata:
  name: lat
spec:
  service: s
  indicator:
    metadata: {name: lat}
    spec:
      thresholdMetric:
        metricSource: {type: Prometheus, spec: {query: 'max(x[{{window}}])'}}
  timeWindow: [{duration: 7d, isRolling: true}]
  budgetingMethod: Timeslices
  objectives:
    - {displayName: fast, op: lt, value: 2, targetPercent: 95, timeSliceWindow: 1m}
x-cwh: {key: false, warn: 1.5, noData: ignore}
"""


def write(tmp_path: Path, text: str, name: str = "slo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_definitions_cover_the_seed_and_the_user_facing_slos():
    names = {s.name for s in load(DEFAULT_DIR)}
    seed = {
        "api-replicas-min", "api-replicas-max", "api-scale-up-reaction", "agent-workers-min",
        "worker-scale-up-reaction", "api-scale-down-stabilized", "api-no-flapping",
        "worker-replicas-available", "worker-backlog-drain",
        "agent-workers-max", "replication-lag", "rto", "rpo", "lb-health-check-interval",
        "websocket-heartbeat", "redis-request-ttl:bounded", "redis-response-ttl:bounded",
        "api-replicas-available", "backup-retention", "dead-letter-retention", "archive-after",
    }  # fmt: skip
    users = {
        "submit-availability", "submit-latency-p95", "submit-latency-p99",
        "time-to-result-p99", "requests-lost", "requests-duplicated",
    }  # fmt: skip
    assert seed | users <= names
    by_name = {s.name: s for s in load(DEFAULT_DIR)}
    # Data that only chaos experiments bring: reported as no data, never as a pass.
    assert by_name["rto"].gate.no_data == "ignore"
    assert by_name["requests-lost"].gate.no_data == "fail"


def test_no_shipped_slo_reads_a_declared_setting_instead_of_behaviour():
    """`cw_config` is what a service says it does; an SLO on it passes whatever the system does.
    Retention, jobs, TTLs and the heartbeat read what happened instead."""
    by_name = {s.name: s for s in load(DEFAULT_DIR)}
    readers = sorted(
        n for n, s in by_name.items() if any("cw_config" in q.query for q in s.sources)
    )
    assert not readers, f"SLOs reading declared settings: {readers}"
    for name in ("archive-after", "dead-letter-retention", "backup-retention",
                 "redis-request-ttl:bounded", "redis-response-ttl:bounded",
                 "websocket-heartbeat", "periodic-jobs-succeed", "events-retention",
                 "run-log-retention"):  # fmt: skip
        assert name in by_name, name


def test_an_openslo_threshold_with_timeslices_and_the_extension(tmp_path):
    (slo,) = load_file(write(tmp_path, THRESHOLD))
    assert (slo.kind, slo.op, slo.value, slo.target) == ("threshold", "lt", 2.0, 0.95)
    assert (slo.budgeting, slo.timeslice_s, slo.window_s) == ("Timeslices", 60.0, 7 * 86400)
    assert (slo.gate.key, slo.gate.warn, slo.gate.no_data) == (False, 1.5, "ignore")
    assert slo.line == 15


def test_a_sloth_file_becomes_ratio_slos(tmp_path):
    path = write(
        tmp_path,
        'version: "prometheus/v1"\nservice: svc\nslos:\n  - name: avail\n    objective: 99.5\n'
        "    sli:\n      events:\n        error_query: sum(rate(e[{{.window}}]))\n"
        "        total_query: sum(rate(t[{{.window}}]))\n",
    )
    (slo,) = load_file(path)
    assert (slo.kind, slo.target, slo.origin, slo.service) == ("ratio", 0.995, "sloth", "svc")
    assert slo.bad is not None
    assert slo.bad.query == "sum(rate(e[{{.window}}]))"


@pytest.mark.parametrize(
    ("broken", "line", "message"),
    [
        (THRESHOLD.replace("op: lt", "op: below"), 15, "op 'below'"),
        (THRESHOLD.replace("duration: 7d", "duration: a week"), 12, "not a duration"),
        (THRESHOLD.replace("noData: ignore", "noData: shrug"), 16, "noData 'shrug'"),
        (THRESHOLD.replace("warn: 1.5", "colour: red"), 16, "unknown 'colour'"),
        (
            THRESHOLD.replace("type: Prometheus", "type: Datadog"),
            11,
            "Prometheus, cwh-run or cwh-scaling",
        ),
        (THRESHOLD.replace("  timeWindow:", "  timeWindow: {}\n  x:"), 12, "timeWindow"),
        (THRESHOLD.replace("  name: lat\n", "  name: [lat\n"), 5, "not valid YAML"),
        (THRESHOLD.replace("targetPercent: 95, ", ""), 15, "target or targetPercent"),
    ],
)
def test_a_malformed_definition_names_its_file_and_line(tmp_path, broken, line, message):
    path = write(tmp_path, broken)
    with pytest.raises(DefinitionError) as err:
        load_file(path)
    assert str(err.value).startswith(f"{path}:{line}:"), str(err.value)
    assert message in str(err.value)


def test_two_slos_of_one_name_are_an_error_naming_both_places(tmp_path):
    write(tmp_path, THRESHOLD, "a.yaml")
    write(tmp_path, THRESHOLD, "b.yaml")
    with pytest.raises(
        DefinitionError, match=r"b\.yaml:15: SLO 'lat' is already defined at .*a\.yaml:15"
    ):
        load(tmp_path)
