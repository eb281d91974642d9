"""`make bench-runtime`'s pure parts: its arguments (refused before anything starts, naming the
variable), the figures read from a fleet run and from failovers, the ratios containers / local,
the summary and the verdict."""

from __future__ import annotations

import dataclasses

import pytest

from bench.runtime import (
    FIGURES,
    BenchArgs,
    bench_settings,
    failover_figures,
    load_figures,
    parse_args,
    ratio_table,
    render_markdown,
    verdict,
)


def test_the_defaults_are_make_loads_and_bench_failovers():
    args = parse_args([])
    assert args == BenchArgs(users=50, duration_s=120.0, kills=3)
    assert args.runtimes == ("local", "containers")
    assert parse_args(["--duration", "2m", "--users", "10"]).duration_s == 120.0


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--users", "0"], "USERS=0"),
        (["--duration", "2"], "DURATION=2"),
        (["--duration", "soon"], "'soon' is not a duration"),
        (["--kills", "0"], "KILLS=0"),
        (["--settle", "0"], "SETTLE=0"),
        (["--spawn-rate", "0"], "SPAWN_RATE=0"),
        (["--runtimes", "containers"], "--runtimes='containers'"),
        (["--runtimes", "containers,local"], "local,containers or local"),
    ],
)
def test_a_bad_value_is_refused_with_its_name_and_exit_code_2(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_every_problem_is_named_at_once(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--users", "0", "--kills", "99"])
    err = capsys.readouterr().err
    assert "USERS=0" in err
    assert "KILLS=99" in err


def test_the_fleet_runs_against_the_environments_own_frontend_and_ca():
    status = {
        "urls": {"https": "https://127.0.0.1:22432/"},
        "tls_certificate": "/var/tmp/ca.crt",
        "registration_secret": "s3cret",
    }
    opts = parse_args(["--users", "10", "--duration", "30"]).fleet(status)
    assert (opts.target, opts.ca_file, opts.registration_secret) == (
        "https://127.0.0.1:22432",
        "/var/tmp/ca.crt",
        "s3cret",
    )
    assert (opts.users, opts.duration_s, opts.shape, opts.workers) == (10, 30.0, "steady", 1)
    assert opts.problems() == []


def test_both_runtimes_get_the_same_settings_but_the_runtime():
    got = bench_settings({"CWH_BENCH_BASE_PORT": "22400"})
    local, boxed = got["local"], got["containers"]
    assert (local.runtime, boxed.runtime) == ("local", "containers")
    assert dataclasses.replace(boxed, runtime="local") == local
    assert local.base_port == 22400
    assert not local.autoscale
    assert not local.backups


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CWH_BENCH_BASE_PORT": "high"}, "CWH_BENCH_BASE_PORT='high'"),
        ({"CWH_BENCH_BASE_PORT": "80"}, "CWH_BENCH_BASE_PORT sets"),
        ({"CWH_TIMEOUT_SCALE": "x"}, "CWH_TIMEOUT_SCALE='x'"),
    ],
)
def test_bad_bench_variables_are_named(environ, named):
    with pytest.raises(ValueError, match=named):
        bench_settings(environ)


def _fleet_summary(submits_ok: int, ramp_only: bool = False) -> dict:
    suffix = " (ramp-up)" if ramp_only else ""
    return {
        "options": {"duration_s": 60.0},
        "verdict": "pass",
        "operations": {"submit": {"ok": submits_ok, "fail": 0, "info": 1}},
        "latency": {
            f"submit{suffix}": {"count": submits_ok, "p99_ms": 120.5},
            f"time to result{suffix}": {"count": 40, "p99_ms": 900.0},
            "submit (ramp-up)" if not ramp_only else "other": {"count": 5, "p99_ms": 999.0},
        },
        "reconciliation": {"acknowledged": submits_ok, "lost": 0, "duplicated": 0, "unknown": 0},
    }


def test_load_figures_read_the_steady_phase_and_the_configured_run_time():
    got = load_figures(_fleet_summary(300))
    assert got["submits_per_s"] == 5.0  # 300 over the 60 s of the run
    assert got["submit_p99_ms"] == 120.5  # not the ramp-up's 999
    assert got["ttr_p99_ms"] == 900.0
    assert (got["load_acknowledged"], got["load_lost"], got["load_verdict"]) == (300, 0, "pass")


def test_a_run_with_no_steady_phase_falls_back_to_its_ramp_up():
    got = load_figures(_fleet_summary(30, ramp_only=True))
    assert got["submit_p99_ms"] == 120.5
    assert load_figures({**_fleet_summary(30), "latency": {}})["ttr_p99_ms"] is None


def _failover(rto: float, lost: int = 0) -> dict:
    return {"rto_s": rto, "reconciliation": {"acknowledged": 100, "lost": lost}}


def test_failover_figures_take_the_median_and_the_worst():
    got = failover_figures([_failover(9.0), _failover(5.0, lost=1), _failover(7.0)])
    assert got["rto_median_s"] == 7.0
    assert got["rto_max_s"] == 9.0
    assert (got["failover_acknowledged"], got["failover_lost"]) == (300, 1)
    none = failover_figures([])
    assert none["rto_median_s"] is None
    assert none["failover_lost"] == 0


def _figures(**over: float) -> dict:
    base = {f.key: 1.0 for f in FIGURES} | {"load_lost": 0, "failover_lost": 0}
    return base | over


def test_ratios_are_containers_over_local_and_none_where_they_mean_nothing():
    figures = {
        "local": _figures(up_s=40.0, submits_per_s=10.0, rto_median_s=0.0),
        "containers": _figures(up_s=60.0, submits_per_s=8.0, rto_median_s=5.0, ttr_p99_ms=None),
    }
    rows = {r.key: r for r in ratio_table(figures)}
    assert [r.key for r in ratio_table(figures)] == [f.key for f in FIGURES]
    assert rows["up_s"].ratio == 1.5
    assert (rows["up_s"].local, rows["up_s"].containers) == (40.0, 60.0)
    assert rows["submits_per_s"].ratio == 0.8
    assert rows["rto_median_s"].ratio is None  # a baseline of 0
    assert rows["ttr_p99_ms"].ratio is None  # not measured on one side
    assert rows["load_lost"].ratio is None  # a count that must be 0, no ratio


def test_a_run_of_the_baseline_alone_has_no_ratios():
    rows = ratio_table({"local": _figures()})
    assert all(r.ratio is None and r.containers is None for r in rows)


def test_the_verdict_passes_only_complete_runs_that_lost_nothing():
    both = ("local", "containers")
    good = {"local": _figures(), "containers": _figures()}
    assert verdict(good, {}, both) == "pass"
    assert verdict({"local": _figures()}, {}, ("local",)) == "pass"
    assert verdict({"local": _figures()}, {}, both) == "fail"  # containers never measured
    lost = {**good, "containers": _figures(failover_lost=2)}
    assert verdict(lost, {}, both) == "fail"
    unknown = {**good, "local": _figures(load_unknown=1)}
    assert verdict(unknown, {}, both) == "fail"
    missing = {**good, "local": _figures(ttr_p99_ms=None)}
    assert verdict(missing, {}, both) == "fail"
    assert verdict(good, {"containers": ["DeadlineExceeded: ..."]}, both) == "fail"


def test_the_summary_shows_both_runtimes_side_by_side_with_the_ratio():
    figures = {"local": _figures(up_s=40.0), "containers": _figures(up_s=60.0)}
    summary = {
        "args": dataclasses.asdict(BenchArgs(users=10, duration_s=30.0, kills=1)),
        "table": [dataclasses.asdict(r) for r in ratio_table(figures)],
        "problems": {"containers": ["EnvironmentStartError: redis1 did not start"]},
        "verdict": "fail",
    }
    md = render_markdown(summary)
    assert "10 phones, 30 s" in md
    assert "1 postmaster kill(s)" in md
    assert "| environment up, s (lower is better) | 40.0 | 60.0 | 1.50x |" in md
    assert "| load: acknowledged submits lost | 0 | 0 | - |" in md
    assert "**containers**: EnvironmentStartError: redis1 did not start" in md
    assert md.rstrip().endswith("Verdict: fail.")
