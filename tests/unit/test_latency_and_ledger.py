from __future__ import annotations

import dataclasses
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scenarios.latency import LatencyRecorder, latency_kind, merged
from slo.ledger import Operation, merge, read_jsonl, write_jsonl

latencies = st.lists(st.floats(min_value=0.000_001, max_value=120.0), min_size=1, max_size=300)


@given(latencies, st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=99))
def test_merging_worker_histograms_equals_recording_in_one_process(values, workers, seed):
    rng = random.Random(seed)
    single, parts = LatencyRecorder(), [LatencyRecorder() for _ in range(workers)]
    for v in values:
        single.record("submit", v)
        rng.choice(parts).record("submit", v)
    assert merged(parts).summary() == single.summary()


def test_open_arrivals_count_from_the_intended_start():
    r = LatencyRecorder()
    # Intended at t=10.0, sent at t=12.0 (the generator stalled), answered in 5 ms.
    r.record("submit", 0.005, intended_start_s=10.0, started_s=12.0)
    assert r.summary()["submit"]["max_ms"] == pytest.approx(2005, rel=1e-3)


def op(i: int, wall: float, kind: str = "submit") -> Operation:
    return Operation(f"id{i}", kind, wall, wall + 0.1, wall, "ok", "api1")


@given(
    st.lists(st.floats(min_value=0, max_value=1e9), min_size=1, max_size=100),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=99),
)
def test_ledger_merge_is_the_whole_in_invocation_order(walls, workers, seed):
    rng = random.Random(seed)
    ops = [op(i, w) for i, w in enumerate(walls)]
    parts: list[list[Operation]] = [[] for _ in range(workers)]
    for o in ops:
        rng.choice(parts).append(o)
    assert merge(parts) == sorted(ops, key=lambda o: (o.invoked_wall, o.op_id))


def test_ledger_merge_refuses_an_id_in_two_ledgers():
    with pytest.raises(ValueError, match="in two ledgers"):
        merge([[op(1, 1.0)], [op(1, 2.0)]])


def test_ledger_roundtrip_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ops = [op(i, float(i)) for i in range(5)]
    assert write_jsonl(path, ops) == 5
    assert read_jsonl(path) == ops
    with open(path, "a") as f:
        f.write(json.dumps({"op_id": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"ledger.jsonl:6"):
        read_jsonl(path)


def test_operations_started_before_the_ramp_ended_are_measured_apart():
    assert latency_kind("submit", 100.0, None) == "submit (ramp-up)"  # still arriving
    assert latency_kind("submit", 99.9, 100.0) == "submit (ramp-up)"
    assert latency_kind("submit", 100.0, 100.0) == "submit"
    assert latency_kind("time to result", 130.0, 100.0) == "time to result"


def test_an_operation_as_json_is_every_field_as_asdict_gives_it():
    # to_json is written out field by field (asdict was too slow for a flat-out phone): a field
    # added to Operation and forgotten there fails here.
    full = Operation("k", "submit", 1.0, 1.5, 1e9, "info", "api2", "503", {"key": "k", "n": 1})
    for operation in (full, op(1, 5.0)):
        assert operation.to_json() == dataclasses.asdict(operation)
        assert Operation(**operation.to_json()) == operation


def test_a_kind_keeps_its_histogram_between_records():
    r = LatencyRecorder()
    r.record("read", 0.001)
    first = r.histograms["read"]
    r.record("read", 0.002)
    assert r.histograms["read"] is first
    assert r.summary()["read"]["count"] == 2
