"""`make bench-dr`'s arithmetic: the straight line through the sizes and the verdict against the
seed's RTO at the extrapolated size."""

from __future__ import annotations

import pytest

from bench.dr import fit, report


def _result(gb: float, primary_s: float) -> dict:
    return {
        "rows": int(gb * 1e6),
        "database_bytes": gb * 1e9,
        "backup_bytes": gb * 1e9,
        "repo_bytes": gb * 2e8,
        "backup_s": 1.0,
        "wal_bytes": gb * 1e8,
        "copy_s": 1.0,
        "replay_s": 1.0,
        "replay_mb_s": 100.0,
        "cluster_primary_s": primary_s,
        "cluster_whole_s": primary_s + 3,
    }


def test_the_line_goes_through_points_on_a_line():
    a, b = fit([0.1, 1.0, 10.0], [11.0, 20.0, 110.0])
    assert a == pytest.approx(10.0)
    assert b == pytest.approx(10.0)


def test_the_verdict_names_whether_the_seeds_rto_holds_at_the_size():
    results = [_result(0.01, 10.1), _result(0.1, 11.0), _result(1.0, 20.0)]  # 10 s + 10 s/GB
    lines, fitted = report(results, 50)
    assert fitted["predicted_s"] == pytest.approx(510.0)
    assert fitted["limit_gb"] == pytest.approx(89.0)  # (900 - 10) / 10
    assert "holds" in lines[-1]
    assert "NOT" not in lines[-1]
    lines, fitted = report(results, 100)
    assert fitted["predicted_s"] == pytest.approx(1010.0)
    assert "does NOT hold" in lines[-1]


def _trial(repeat: int, lost: int, not_carried: int, serving_s: float) -> dict:
    return {
        "experiment": "dr-region-loss",
        "repeat": repeat,
        "baseline_s": 10,
        "code": 0,
        "chaos": {
            "acknowledged": 500,
            "lost": lost,
            "rpo_s": {"max": 0.05 if lost else 0.0},
            "recovered": {"write": True, "read": True, "notification": True},
            "rto_s": {"write": serving_s + 2, "notification": serving_s + 20},
            "region": {
                "failover": {"promoted_s": serving_s - 8, "serving_s": serving_s},
                "divergence": {"committed": 600, "not_carried": not_carried},
            },
        },
    }


def test_region_trials_summarize_the_tail_and_leave_out_what_measured_nothing():
    from bench.dr_region import lines, summarize, trial_figures

    runs = [_trial(1, 0, 0, 28.0), _trial(2, 2, 3, 30.0), _trial(3, 0, 1, 26.0)]
    broken = {**_trial(4, 0, 0, 0.0), "code": 1, "chaos": None}
    figures = [trial_figures(r) for r in [*runs, broken]]
    assert [f["ok"] for f in figures] == [True, True, True, False]
    s = summarize(figures)
    assert (s["trials"], s["measured"]) == (4, 3)
    assert s["lost_total"] == 2
    assert s["trials_losing"] == 1
    assert s["lost"]["max"] == 2
    assert s["not_carried"]["p50"] == 1
    assert s["serving_s"]["max"] == 30.0
    text = "\n".join(lines(s, figures))
    assert "3 measured trials of 4" in text
    assert "| 2 | 0 | 500 | 2 | 0.05 | 3 of 600 |" in text
