"""Pure parts of the supervisor's controllers: when a liveness probe restarts, and which
servers the load balancer lost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from env.liveness import FailureCounter
from env.probes import haproxy_registrations, haproxy_server_ports
from reference_impl.stores import RedisBreaker
from reference_impl.worker import llm_content

SHOW_SERVERS_STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight \
srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state \
srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl \
srv_check_port srv_check_addr srv_agent_addr srv_agent_port
5 api 1 api1 127.0.0.1 2 4 1 1 96 15 3 3 6 0 0 0 - 19110 - 0 0 - - 0
5 api 2 api2 127.0.0.1 0 5 1 1 540 1 0 0 14 0 0 0 - 1 - 0 0 - - 0
5 api 3 api3 127.0.0.1 0 12 1 1 540 1 0 0 14 0 0 0 - 19112 - 0 0 - - 0

"""


def test_show_servers_state_gives_each_slot_its_port():
    assert haproxy_server_ports(SHOW_SERVERS_STATE) == {"api1": 19110, "api2": 1, "api3": 19112}
    assert haproxy_server_ports("") == {}


def test_only_slots_that_lost_their_replica_are_registered_again():
    have = haproxy_server_ports(SHOW_SERVERS_STATE)
    want = {"api/api1": 19110, "api/api2": 19111, "api/api3": 19112}
    # api2 points nowhere (a restarted HAProxy); api3 is drained (admin state 12) by an
    # operator: its slot is right, so it is left alone.
    assert haproxy_registrations(have, want) == [
        "set server api/api2 addr 127.0.0.1 port 19111",
        "set server api/api2 state ready",
    ]
    assert haproxy_registrations(have, {"api/api1": 19110}) == []


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5))
def test_a_restart_comes_exactly_after_threshold_failures_in_a_row_once_live(results, threshold):
    counter = FailureCounter(threshold, grace_s=10, started=0.0)
    streak = 0
    for i, live in enumerate(results):
        now = 100.0 + i  # past the start-up grace
        fired = counter.record(live, now)
        streak = 0 if live else streak + 1
        assert fired == (not live and streak >= threshold)
        if fired:
            break


def test_failures_during_start_up_do_not_count_until_the_grace_ends_or_it_was_live():
    counter = FailureCounter(2, grace_s=30, started=0.0)
    assert not counter.record(False, 5)
    assert not counter.record(False, 10)  # still starting: not counted
    assert not counter.record(False, 31)
    assert counter.record(False, 32)
    counter = FailureCounter(2, grace_s=30, started=0.0)
    assert not counter.record(True, 1)
    assert not counter.record(False, 2)
    assert counter.record(False, 3)  # live once: failures count at once


def test_the_redis_breaker_skips_calls_after_a_failure_and_lets_one_trial_through():
    breaker = RedisBreaker(cooldown_s=60)
    assert breaker.allow()
    breaker.record(False)
    assert not breaker.allow()
    breaker.open_until = 0.5  # the cool-down has passed (monotonic clock long past 0.5)
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # others wait while the trial runs
    breaker.record(True)
    assert breaker.allow()
    assert breaker.allow()


def test_llm_content_accepts_only_an_openai_style_answer():
    ok = b'{"choices": [{"message": {"role": "assistant", "content": "hi"}}]}'
    assert llm_content(ok) == "hi"
    for bad in (
        b"not json",
        b"[]",
        b'{"choices": []}',
        b'{"choices": [{}]}',
        b'{"choices": [{"message": null}]}',
        b'{"choices": [{"message": {"content": 3}}]}',
        b"\xff\xfe",
    ):
        assert llm_content(bad) is None, bad
