"""The config-to-RTO model (env/failover_model.py) and its place in bench-chaos's report."""

from __future__ import annotations

from bench.chaos import distribution, model_markdown, model_rows, soak_line, soak_result
from env import configs, failover_model


def test_the_node_loss_bound_is_the_readmes_worst_case_plus_the_clients_retries():
    bound = failover_model.bounds()["pg-lose-primary-node"]["write"]
    names = [t.name for t in bound.terms]
    assert names == [
        "ttl",
        "loop_wait",
        "promote",
        "rise x inter",
        "server_login_retry",
        "phone retry",
    ]
    clients = configs.PGBOUNCER_SERVER_LOGIN_RETRY_S + failover_model.CLIENT_RETRY_S
    assert bound.seconds == configs.worst_case_failover_s() + clients
    assert bound.formula().endswith(f"= {bound.seconds:g} s")


def test_a_crash_fails_over_faster_than_a_lost_node_by_the_leader_keys_ttl():
    b = failover_model.bounds()
    crash, node = b["pg-kill-primary"]["write"], b["pg-lose-primary-node"]["write"]
    assert node.seconds - crash.seconds == configs.PATRONI_TTL_S


def test_every_goal_is_about_a_path_the_model_predicts():
    b = failover_model.bounds()
    for experiment, path in failover_model.GOALS_P95_S:
        assert path in b[experiment]


def _entry(write: list[float], notification: list[float]) -> dict:
    return {
        "rto_write": distribution(write),
        "rto_read": distribution([]),
        "rto_notification": distribution(notification),
    }


def test_the_report_says_whether_each_run_stayed_within_its_bound_and_met_its_goal():
    crash = failover_model.bounds()["pg-kill-primary"]["write"].seconds
    summary = {
        "pg-kill-primary": _entry([1.0, 2.0, crash + 0.5], []),
        "redis-kill-master": _entry([0.5], [1.0, 1.5]),
        "not-modelled": _entry([1.0], []),
    }
    rows = {(r["experiment"], r["path"]): r for r in model_rows(summary)}
    assert set(rows) == {
        ("pg-kill-primary", "write"),
        ("redis-kill-master", "write"),
        ("redis-kill-master", "notification"),
    }
    pg = rows["pg-kill-primary", "write"]
    assert (pg["n"], pg["max_s"], pg["within_bound"]) == (3, crash + 0.5, False)
    assert (pg["goal_p95_s"], pg["goal_met"]) == (3.0, False)  # p95 of 3 runs is the worst
    note = rows["redis-kill-master", "notification"]
    assert (note["within_bound"], note["goal_met"]) == (True, True)
    assert rows["redis-kill-master", "write"]["goal_met"] is None  # no goal for it
    md = "\n".join(model_markdown(list(rows.values())))
    assert "| pg-kill-primary | write |" in md
    assert "NO" in md
    assert "loop_wait 2" in md


def test_a_path_that_never_recovered_has_no_verdict():
    rows = model_rows({"pg-switchover": _entry([], [])})
    assert rows[0]["n"] == 0
    assert (rows[0]["within_bound"], rows[0]["goal_met"]) == (None, None)


def test_the_redis_bound_counts_the_ping_phase_and_the_services_breaker():
    from reference_impl.stores import REDIS_COOLDOWN_S

    terms = {t.name: t.seconds for t in failover_model.bounds()["redis-kill-master"]["write"].terms}
    assert terms["cluster-node-timeout"] == configs.REDIS_NODE_TIMEOUT_MS / 1000
    assert terms["ping phase"] == configs.REDIS_NODE_TIMEOUT_MS / 2000
    assert terms["breaker cooldown"] == REDIS_COOLDOWN_S


def test_the_no_fault_soaks_failovers_decide_bench_chaos_line() -> None:
    roles = {
        "pg_leader_changes": 1, "pg_timeline_changes": 1, "pg_demotions": 1,
        "redis_master_changes": 0, "redis_epoch_bumps": 0, "pg_samples": 180, "total": 1,
    }  # fmt: skip
    goal = {"name": "spurious failovers (no fault injected)", "ok": False, "measured": "..."}
    bad = soak_result(1800, 1, 1, {"roles": roles, "goals": [goal], "noise": {"cpu_s": 1650.0}})
    assert bad["spurious"] == 1
    line = soak_line(bad)
    assert "1800 s no-fault soak with 1 busy processes (1650 CPU s): 1 (MISSED" in line
    assert "PostgreSQL 1 leader changes" in line
    calm = {**roles, "pg_leader_changes": 0, "total": 0}
    good = soak_result(1800, 1, 0, {"roles": calm, "goals": [{**goal, "ok": True}]})
    assert good["spurious"] == 0
    assert "0 (met: goal none)" in soak_line(good)
    # None seen, but the soak was not sampled throughout (cut short): not measured, not zero.
    short = soak_result(1800, 1, 1, {"roles": calm, "goals": [{**goal, "ok": None}]})
    assert short["spurious"] is None
    assert "not measured" in soak_line(short)
    # No role ever sampled (the soak's environment did not come up): not measured, not zero.
    none = soak_result(1800, 1, 2, {})
    assert none["spurious"] is None
    assert "not measured" in soak_line(none)
