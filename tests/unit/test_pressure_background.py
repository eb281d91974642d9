"""`InBackground`: the pressure driver's failure reaches the caller; an unstarted driver cleans
up."""

from __future__ import annotations

import pytest

from scenarios.pressure import InBackground, Tally, _reason, ramp


def test_a_driver_that_failed_says_why_when_stopped(tmp_path):
    missing_ca = str(tmp_path / "no-such-ca.pem")  # the driver fails building its TLS context
    driver = InBackground("https://127.0.0.1:9", missing_ca, "", ramp(10, up_s=1, hold_s=1))
    with driver:
        driver._thread.join(timeout=30)  # it fails at once; joined so stop() sees it ended
        assert not driver._thread.is_alive()
        with pytest.raises(RuntimeError, match=r"pressure driver failed.*FileNotFoundError"):
            driver.stop()
    assert driver._loop.is_closed()


def test_leaving_the_block_on_an_error_keeps_that_error(tmp_path):
    missing_ca = str(tmp_path / "no-such-ca.pem")
    with (
        pytest.raises(KeyError),
        InBackground("https://127.0.0.1:9", missing_ca, "", ramp(10, up_s=1, hold_s=1)),
    ):
        raise KeyError("the caller's own failure")


def test_a_driver_never_started_stops_cleanly():
    driver = InBackground("https://127.0.0.1:9", "", "", ramp(10, up_s=1, hold_s=1))
    assert driver.stop() is None
    assert driver._loop.is_closed()


def test_a_failed_answer_is_counted_with_its_reason():
    tally = Tally()
    api = b'{"error": "unavailable", "detail": "retry"}'
    for body in (api, b"<html>502</html>", api):
        tally.note(f"503: {_reason(body)}")
    assert tally.reasons == {"503: unavailable (retry)": 2, "503: <html>502</html>": 1}
