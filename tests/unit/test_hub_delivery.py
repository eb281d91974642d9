"""The hub's delivery bookkeeping (`reference_impl.hub.Delivery`), driven through a simulated world.

Event ids come from one sequence inside concurrent transactions: they are allocated in one order
and committed (then published) in another. The simulation plays the hub exactly as
`reference_impl/hub.py` does (replay on connect, live events through the queue, the catch-up after
a pub/sub outage, pings that prove what was heard) against a phone that connects, reads some of
what was sent, loses the rest when its socket drops, and resumes with the last `resume` value it
received. Whatever the interleaving, every event of the phone's device reaches it exactly once.

The world keeps the hub's one assumption: a transaction commits within `MAX_TXN_S` of taking its
id, and a publish reaches the hub within `MAX_PUBLISH_S` of the commit, the two together under the
settle window.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.hub import SETTLE_S, TOKEN_MAX_CHARS, TOKEN_MAX_IDS, Delivery

MAX_TXN_S = SETTLE_S * 0.45
MAX_PUBLISH_S = SETTLE_S * 0.45
PHONE, OTHER = "phone", "other"


@dataclass
class Hub:
    """One socket's state on the hub, as `hub.updates` and `hub.send_loop` hold it."""

    delivery: Delivery
    queue: list[tuple[int, bool]] = field(default_factory=list)
    wire: list[tuple[list[int], str]] = field(default_factory=list)  # messages sent, unread
    closing: bool = False


@dataclass
class World:
    replay_limit: int
    replay_pages: int
    queue_limit: int
    rng: random.Random
    now: float = 0.0
    next_id: int = 1
    open: dict[int, tuple[str, float]] = field(default_factory=dict)  # id -> device, started
    committed: dict[int, tuple[str, float]] = field(default_factory=dict)
    in_flight: list[tuple[float, int, str]] = field(default_factory=list)  # arrival, id, device
    subscribed: bool = True
    caught_up: bool = True
    heard_until: float = float("-inf")
    conn: Hub | None = None
    token: str = "0"
    received: list[int] = field(default_factory=list)

    # ---- the database and the publishers ------------------------------------------------

    def allocate(self, device: str) -> None:
        self.open[self.next_id] = (device, self.now)
        self.next_id += 1

    def commit(self, event_id: int, delay_s: float) -> None:
        device, started = self.open.pop(event_id)
        self.committed[event_id] = (device, started)
        self.in_flight.append((self.now + delay_s, event_id, device))

    def rows(self, after: int) -> list[tuple[int, bool]]:
        """`SELECT event_id, created_at < now() - settle ... WHERE event_id > after ORDER BY
        event_id LIMIT replay_limit` for the phone's device."""
        ids = sorted(i for i, (d, _) in self.committed.items() if d == PHONE and i > after)
        return [(i, self.committed[i][1] < self.now - SETTLE_S) for i in ids[: self.replay_limit]]

    def advance(self, dt: float) -> None:
        """Time passes; transactions that reach their deadline commit; publishes arrive."""
        target = self.now + dt
        while True:
            deadlines = [(s + MAX_TXN_S, i) for i, (_, s) in self.open.items()]
            arrivals = [(a, i, d) for a, i, d in self.in_flight]
            next_deadline = min(deadlines, default=(float("inf"), 0))
            next_arrival = min(arrivals, default=(float("inf"), 0, ""))
            when = min(next_deadline[0], next_arrival[0])
            if when > target:
                break
            self.now = max(self.now, when)
            if next_deadline[0] <= next_arrival[0]:
                self.commit(next_deadline[1], self.rng.uniform(0, MAX_PUBLISH_S))
            else:
                self.in_flight.remove(next_arrival)
                self.arrive(next_arrival[1], next_arrival[2])
        self.now = target

    # ---- the hub -----------------------------------------------------------------------

    def arrive(self, event_id: int, device: str) -> None:
        """A publish reaches the hub's node: heard only while subscribed."""
        if self.subscribed and device == PHONE and self.conn and not self.conn.closing:
            if len(self.conn.queue) >= self.queue_limit:
                self.conn.closing = True  # too slow: the phone resumes
            else:
                self.conn.queue.append((event_id, False))

    def connect(self) -> None:
        delivery = Delivery.from_token(self.token, self.now)
        conn = self.conn = Hub(delivery)
        conn.wire.append(([], delivery.token()))  # hello
        after = delivery.cursor
        for page in range(self.replay_pages):
            rows = self.rows(after)
            for event_id, settled in rows:
                if delivery.offer(event_id, self.now, settled and page == 0):
                    delivery.settle(self.heard_until, self.now, not conn.queue)
                    conn.wire.append(([event_id], delivery.token()))
            if len(rows) < self.replay_limit:
                return
            after = rows[-1][0]
        conn.wire.append(([], delivery.token()))  # more than one replay: "more", then a close
        conn.closing = True

    def send(self, batch: int) -> None:
        conn = self.conn
        if conn is None or conn.closing or not conn.queue:
            return
        items, conn.queue = conn.queue[:batch], conn.queue[batch:]
        fresh = [i for i, settled in items if conn.delivery.offer(i, self.now, settled)]
        # As `hub.send_loop`: never past an event heard and not offered.
        conn.delivery.settle(self.heard_until, self.now, not conn.queue)
        if fresh:
            conn.wire.append((fresh, conn.delivery.token()))

    def outage(self) -> None:
        self.subscribed = self.caught_up = False

    def resubscribe(self) -> None:
        self.subscribed = True
        conn = self.conn
        if conn is not None and not conn.closing:
            rows = self.rows(conn.delivery.cursor)
            room = self.queue_limit - len(conn.queue)
            if len(rows) == self.replay_limit or len(rows) > room:
                conn.closing = True
            else:
                conn.queue.extend(rows)
        self.caught_up = True

    def ping(self) -> None:
        """A pong came back: everything published before the ping has been heard."""
        if self.subscribed and self.caught_up:
            self.heard_until = self.now

    # ---- the phone ---------------------------------------------------------------------

    def read(self, n: int) -> None:
        if self.conn is None:
            return
        for ids, token in self.conn.wire[:n]:
            self.received.extend(ids)
            self.token = token
        del self.conn.wire[:n]
        if self.conn.closing and not self.conn.wire:
            self.conn = None  # the close frame came after the last message

    def drop(self, n: int) -> None:
        """The network goes: what the phone had not read yet is lost with the socket."""
        self.read(n)
        self.conn = None

    # ---- the end -----------------------------------------------------------------------

    def settle_everything(self) -> None:
        while self.open:
            self.commit(next(iter(self.open)), self.rng.uniform(0, MAX_PUBLISH_S))
        if not self.subscribed:
            self.resubscribe()
        for _ in range(200):
            self.advance(1.0)
            self.ping()
            if self.conn is None:
                self.connect()
            self.send(100)
            self.read(10**6)
            if self.conn is not None and not self.conn.queue and not self.in_flight:
                break


ACTIONS = ("allocate", "commit", "advance", "send", "read", "drop", "connect", "outage", "ping")


def play(w: World, rng: random.Random, action: str) -> None:
    if action == "allocate":
        w.allocate(rng.choice([PHONE, PHONE, OTHER]))
    elif action == "commit" and w.open:
        w.commit(rng.choice(sorted(w.open)), rng.uniform(0, MAX_PUBLISH_S))
    elif action == "advance":
        w.advance(rng.choice([0.1, 0.5, 1.0, SETTLE_S / 2, SETTLE_S, 2 * SETTLE_S]))
    elif action == "send":
        w.send(rng.randint(1, 3))
    elif action == "read":
        w.read(rng.randint(0, 3))
    elif action == "drop":
        w.drop(rng.randint(0, 3))
    elif action == "connect" and w.conn is None:
        w.connect()
    elif action == "outage":
        if w.subscribed:
            w.outage()
        else:
            w.resubscribe()
    elif action == "ping":
        w.ping()


@settings(max_examples=200)
@given(
    seed=st.integers(0, 2**32 - 1),
    steps=st.integers(1, 150),
    weights=st.lists(st.integers(0, 4), min_size=len(ACTIONS), max_size=len(ACTIONS)),
    replay_limit=st.integers(2, 6),
    replay_pages=st.integers(1, 3),
    queue_limit=st.integers(2, 6),
)
def test_every_event_reaches_the_phone_exactly_once(
    seed, steps, weights, replay_limit, replay_pages, queue_limit
):
    """Hypothesis chooses how often each thing happens and how long the run is; a seeded random
    walk plays it (many interleavings per example, still reproducible from the report)."""
    rng = random.Random(seed)
    w = World(replay_limit, replay_pages, queue_limit, rng)
    w.connect()
    for _ in range(steps):
        play(w, rng, rng.choices(ACTIONS, [x + 0.01 for x in weights])[0])
    w.settle_everything()
    mine = {i for i, (d, _) in w.committed.items() if d == PHONE}
    assert Counter(w.received) == dict.fromkeys(mine, 1)


# ---- the token and the bookkeeping on their own ------------------------------------------------


def test_the_token_names_the_cursor_and_what_was_delivered_above_it():
    d = Delivery.from_token("10", now=0.0)
    assert d.offer(12, now=0.0)
    assert not d.offer(12, now=0.0), "a duplicate is not sent twice"
    assert not d.offer(9, now=0.0), "the phone said it has everything up to 10"
    assert d.offer(11, now=0.0), "a late commit below the largest id is still delivered"
    assert d.token() == "10,1,1", "the cursor, then each id as a step from the one before"
    again = Delivery.from_token(d.token(), now=1.0)
    assert not again.offer(11, now=1.0)
    assert not again.offer(12, now=1.0)
    assert again.offer(13, now=1.0)


def test_the_resume_value_round_trips_and_fits_in_a_url():
    d = Delivery.from_token("5", now=0.0)
    ids = [5 + 37 * k + k * k for k in range(1, TOKEN_MAX_IDS + 1)]  # ever further apart
    for i in ids:
        d.offer(i, now=0.0)
    token = d.token()
    assert len(token) <= TOKEN_MAX_CHARS
    again = Delivery.from_token(token, now=0.0)
    remembered = [i for i in ids if not again.offer(i, now=0.0)]
    # What fits is remembered exactly; what did not is sent again, never skipped.
    assert remembered == ids[: len(remembered)]
    assert len(remembered) > TOKEN_MAX_IDS // 2


def test_the_cursor_moves_only_over_what_has_settled_and_been_heard():
    d = Delivery.from_token("0", now=0.0)
    d.offer(5, now=0.0)
    d.settle(heard_until=SETTLE_S - 1, now=SETTLE_S)
    assert d.cursor == 0, "an id below 5 may still commit"
    d.settle(heard_until=SETTLE_S, now=SETTLE_S)
    assert d.cursor == 5
    assert d.token() == "5"
    # A row the database says has settled moves the cursor at once.
    d.offer(7, now=SETTLE_S, settled=True)
    assert d.token() == "7"


def test_the_memory_of_a_socket_is_bounded():
    d = Delivery.from_token("0", now=0.0)
    for i in range(1, 20_001):
        d.offer(i, now=float(i))
        # Pub/sub has been silent all along: nothing can settle, yet memory stays bounded.
        d.settle(heard_until=float("-inf"), now=float(i))
    assert d.tracked() <= 2 * Delivery.MAX_TRACKED
    assert len(d.token().split(",")) <= TOKEN_MAX_IDS + 1


@pytest.mark.parametrize(
    "raw", ["", "x", "-1", "1,", ",1", "1,,2", "1;2", "1,A", "1" * 19, ",".join(["1"] * 1100)]
)
def test_a_malformed_token_is_refused(raw):
    with pytest.raises(ValueError, match="not a resume value"):
        Delivery.from_token(raw, now=0.0)
