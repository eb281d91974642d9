"""The partition's fencing watch (experiments/pg_partition.py) against real HTTP servers that
answer as Patroni's `/primary` does: 200 while a member claims the primary role, 503 after."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from env.process import wait_until
from experiments.pg_partition import FencingWatch


class Member:
    """A `/primary` endpoint whose answer a test switches."""

    def __init__(self, claims: bool) -> None:
        self.claims = claims
        member = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if member.claims else 503)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def members() -> Iterator[tuple[Member, Member]]:
    old, new = Member(claims=True), Member(claims=False)
    yield old, new
    old.close()
    new.close()


def promoted_then_healed(old: Member, new: Member) -> dict:
    """The watch's timings when `new` is promoted and the partition heals, `old` as it is."""
    watch = FencingWatch(old.port, [new.port], time.monotonic())
    new.claims = True
    wait_until(lambda: watch.promoted_at, 5, "promotion seen")
    watch.healed()
    return watch.timings()


def test_fenced_after_promoted_gives_the_two_primary_window(members) -> None:
    old, new = members
    watch = FencingWatch(old.port, [new.port], time.monotonic())
    new.claims = True  # promoted first: a split brain while the old one still claims it
    wait_until(lambda: watch.promoted_at, 5, "promotion seen")
    old.claims = False
    wait_until(lambda: watch.fenced_at, 5, "fencing seen")
    watch.healed()
    t = watch.timings()
    assert t["promoted_after_s"] is not None
    assert t["fenced_after_s"] is not None
    assert t["fenced_after_s"] >= t["promoted_after_s"]
    assert t["both_primary_s"] == pytest.approx(
        t["fenced_after_s"] - t["promoted_after_s"], abs=0.01
    )
    assert t["both_primary_s"] > 0


def test_never_fenced_counts_both_primaries_up_to_the_heal(members) -> None:
    t = promoted_then_healed(*members)
    assert t["fenced_after_s"] is None
    assert t["fencing_known"] is True
    assert t["both_primary_s"] == pytest.approx(
        t["healed_after_s"] - t["promoted_after_s"], abs=0.01
    )


def test_a_member_that_does_not_answer_is_not_taken_for_fenced(members) -> None:
    old, new = members
    old.close()  # no answer at all: unknown, not a refusal
    t = promoted_then_healed(old, new)
    assert t["fenced_after_s"] is None
    assert t["fencing_known"] is False
    assert t["both_primary_s"] is None  # not "both to the heal": nothing was seen
