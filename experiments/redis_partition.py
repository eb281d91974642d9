"""A network partition of a Redis Cluster master: cut off from every other node (the cluster bus
and its replication link) while clients on the host still reach it through its published port.

The minority side of a split brain: the isolated master can no longer reach a majority of the
masters, so after `cluster-node-timeout` it marks the cluster down for itself and refuses
commands (CLUSTERDOWN); meanwhile the majority marks it failed and its replica wins an
election. Until it refuses, it acknowledges writes that reach no replica: when it rejoins, it
finds its slots served by the promoted node with a newer epoch, becomes that node's replica,
and a full resynchronisation discards them. No `min-replicas-to-write` is set
(`env.configs.redis_config`): nothing else stops it sooner.

Measured from a client's side, writing directly to the isolated master (keys with a hash tag
that maps to one of its slots), in seconds from the cut:

- `refused_after_s`: its first refused write (an error reply: CLUSTERDOWN); None when it still
  accepted writes at the heal. `last_ack_after_s`: its last acknowledgement while cut;
- `promoted_after_s`: when its replica first answered `ROLE` as a master;
- `accepted_while_cut`: writes it acknowledged after the cut (and `accepted_after_promotion`,
  those acknowledged once its replica had taken its slots over);
- `lost`: after the heal, with the cluster whole again, every acknowledged key read back one by
  one from the node that now serves its slot: acknowledged and not there (`unknown` when the
  read got no answer: unknown is not lost).

Only the containers runtime can cut one node off from some peers and not others
(`env.containers.partition`); elsewhere it says so.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from env import containers
from env.local import LocalEnvironment
from env.process import DeadlineExceeded, wait_until
from env.state import EnvStatus

#: Slot ranges, inclusive at both ends, as `CLUSTER NODES` lists them.
SlotRanges = list[tuple[int, int]]

#: What the writes' keys start with (the admin user may write any key; the services' `req:*`
#: and friends are left alone).
KEY_PREFIX = "cwh:partition"
#: How long the keys live: long enough to read them back after the heal, gone soon after.
KEY_TTL_S = 3600
#: How long a single write or read may take: past it the outcome is unknown, not refused.
CALL_TIMEOUT_S = 1.0


# ---- pure parts: slots, keys, the summary ---------------------------------------------------


@dataclass(frozen=True)
class NodeLine:
    """One line of `CLUSTER NODES`: the node's id, port, flags, master (None for a master)
    and the slot ranges it serves (migrating slots left out)."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool({"fail", "fail?"} & self.flags)


def parse_nodes(text: str) -> list[NodeLine]:
    """`CLUSTER NODES` as text, line by line."""
    out = []
    for line in text.strip().splitlines():
        parts = line.split()
        slots = []
        for spec in parts[8:]:
            if spec.startswith("["):
                continue  # a slot being migrated or imported
            lo, _, hi = spec.partition("-")
            slots.append((int(lo), int(hi or lo)))
        out.append(
            NodeLine(
                node_id=parts[0],
                port=int(parts[1].split("@")[0].rsplit(":", 1)[1]),
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                slots=tuple(slots),
            )
        )
    return out


def in_ranges(slot: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(lo <= slot <= hi for lo, hi in ranges)


def hash_tag_for(ranges: Iterable[tuple[int, int]], limit: int = 100_000) -> str:
    """A hash tag (`{p<n>}`) whose slot lies in `ranges`: every key that carries it lands on
    the node serving them. ValueError when none of the first `limit` does (empty ranges)."""
    ranges = list(ranges)
    for n in range(limit):
        tag = f"{{p{n}}}"
        if in_ranges(key_slot(tag.encode()), ranges):
            return tag
    raise ValueError(f"no hash tag maps into the slots {ranges}")


def owner_of(nodes: list[NodeLine], slot: int) -> NodeLine | None:
    """The live master serving `slot` in one node's view."""
    return next(
        (n for n in nodes if n.is_master and not n.failed and in_ranges(slot, n.slots)), None
    )


@dataclass(frozen=True)
class Write:
    """One SET sent to the isolated master: `outcome` ok (acknowledged), fail (an error reply:
    certainly not written) or info (no answer: unknown); times monotonic."""

    key: str
    value: str
    outcome: str
    sent_s: float
    done_s: float
    error: str = ""


def error_code(exc: BaseException) -> str:
    """The code of an error reply (`CLUSTERDOWN`, `MOVED`): redis-py strips it from the message
    of the errors it knows and keeps it as `status_code`."""
    return str(getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0])


def summarize(
    writes: list[Write],
    cut_at: float,
    promoted_at: float | None,
    healed_at: float,
    lost: Iterable[str] = (),
    unknown: Iterable[str] = (),
    cut_done: float | None = None,
) -> dict[str, Any]:
    """What the isolated master did while cut (times in seconds from `cut_at`, when the cut
    began; `cut_done` when every drop rule was in place), and which of its acknowledged writes
    were lost, by when they were acknowledged. A write in flight as the cut began may still
    have reached the replica: only those sent after `cut_done` certainly could not."""

    def since(t: float | None) -> float | None:
        return round(t - cut_at, 3) if t is not None else None

    cut = [w for w in writes if cut_at <= w.done_s <= healed_at]
    acked = [w for w in cut if w.outcome == "ok"]
    refused = [w for w in cut if w.outcome == "fail"]
    first_refusal = min((w.done_s for w in refused), default=None)
    after_promotion = [w for w in acked if promoted_at is not None and w.done_s >= promoted_at]
    lost_set = set(lost)
    lost_writes = [w for w in writes if w.key in lost_set]
    sent_after = [w for w in acked if cut_done is not None and w.sent_s >= cut_done]
    return {
        "writes": len(writes),
        "acknowledged": sum(1 for w in writes if w.outcome == "ok"),
        "accepted_while_cut": len(acked),
        "accepted_sent_after_cut": len(sent_after),
        "accepted_after_promotion": len(after_promotion),
        "accepted_after_refusal": sum(
            1 for w in acked if first_refusal is not None and w.done_s > first_refusal
        ),
        "refused_while_cut": len(refused),
        "unanswered_while_cut": sum(1 for w in cut if w.outcome == "info"),
        "refusals": dict(Counter(w.error for w in refused)),
        "refused_after_s": since(first_refusal),
        "last_ack_after_s": since(max((w.done_s for w in acked), default=None)),
        "promoted_after_s": since(promoted_at),
        "healed_after_s": since(healed_at),
        "lost": len(lost_writes),
        "lost_acked_before_cut": sum(1 for w in lost_writes if w.done_s < cut_at),
        "lost_acked_after_promotion": sum(
            1 for w in lost_writes if promoted_at is not None and w.done_s >= promoted_at
        ),
        "lost_keys": sorted(lost_set)[:200],
        "unknown": len(set(unknown)),
        "acked_while_cut_keys": [w.key for w in acked][:1000],
        "acked_sent_after_cut_keys": [w.key for w in sent_after][:1000],
    }


# ---- the cluster, through each node's published port ----------------------------------------


class Nodes:
    """Admin clients to every Redis node of the environment on 127.0.0.1 (not cluster-routed:
    one command to one node), and the node ids by replica name."""

    def __init__(self, status: EnvStatus) -> None:
        url = urlsplit(str(status.urls["redis"]))
        self._user = unquote(url.username or "")
        self._password = unquote(url.password or "")
        self._ca = status.tls_certificate
        self.ports = {c.name: c.port("redis") for c in status.of_kind("redis")}
        self.ids = {name: str(self.call(name, "CLUSTER", "MYID")) for name in self.ports}
        self.names = {node_id: name for name, node_id in self.ids.items()}

    def client(self, name: str) -> redis.Redis:
        """A client of node `name` that answers within `CALL_TIMEOUT_S` and never retries:
        a retried write's outcome and time would not be one write's."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.ports[name],
            socket_timeout=CALL_TIMEOUT_S,
            socket_connect_timeout=CALL_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            username=self._user,
            password=self._password,
            ssl=True,
            ssl_ca_certs=self._ca,
        )

    def call(self, name: str, *args: Any) -> Any:
        with self.client(name) as c:
            return c.execute_command(*args)

    def view(self, name: str) -> list[NodeLine]:
        return parse_nodes(str(self.call(name, "CLUSTER", "NODES")))

    def role(self, name: str) -> str:
        """`master` or `slave`, as the node itself says (`ROLE`)."""
        return str(self.call(name, "ROLE")[0])


class IsolatedWrites:
    """SETs at a fixed rate to one node, each key carrying `tag` (so in one of its slots), each
    recorded with its outcome and times (`Write`); keys `KEY_PREFIX:<tag>:<run>:<n>`."""

    def __init__(self, nodes: Nodes, name: str, tag: str, rate_per_s: float) -> None:
        self.writes: list[Write] = []
        self._client = nodes.client(name)
        self._prefix = f"{KEY_PREFIX}:{tag}:{int(time.time())}"
        self._interval_s = 1.0 / rate_per_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="isolated-writes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start, n = time.monotonic(), 0
        while not self._stop.is_set():
            self.writes.append(self._write(f"{self._prefix}:{n}", str(n)))
            n += 1
            # The next write at its slot in the schedule: a slow answer is not made up for.
            self._stop.wait(max(0.0, start + n * self._interval_s - time.monotonic()))

    def _write(self, key: str, value: str) -> Write:
        sent = time.monotonic()
        try:
            self._client.set(key, value, ex=KEY_TTL_S)
            return Write(key, value, "ok", sent, time.monotonic())
        except redis.ResponseError as exc:  # an answer: CLUSTERDOWN, or a redirect
            return Write(key, value, "fail", sent, time.monotonic(), error_code(exc))
        except redis.RedisError as exc:  # no answer: it may or may not have been written
            return Write(key, value, "info", sent, time.monotonic(), type(exc).__name__)

    def acknowledged(self) -> bool:
        return any(w.outcome == "ok" for w in self.writes)

    def stop(self) -> list[Write]:
        """Stop writing (idempotent); the writes so far."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=5 * CALL_TIMEOUT_S)
            self._client.close()
        return list(self.writes)


class PromotionWatch:
    """When one of the isolated master's replicas first says it is a master (`ROLE`), polled
    every tenth of a second over the host's path to it (which the cut leaves alone)."""

    def __init__(self, nodes: Nodes, replicas: list[str]) -> None:
        self.promoted: str | None = None
        self.promoted_at: float | None = None
        self._nodes, self._replicas = nodes, replicas
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="promotion-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.promoted_at is None:
            for name in self._replicas:
                try:
                    if self._nodes.role(name) == "master":
                        self.promoted, self.promoted_at = name, time.monotonic()
                        return
                except redis.RedisError:
                    pass  # no answer is no verdict: asked again next round
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def cluster_whole(nodes: Nodes, old_master: str, promoted: bool = True) -> bool:
    """Every node says the cluster is ok with all 16384 slots served by live masters, and the
    old master is a replica again with its link to its master up (`promoted`), or still the
    master (no replica was promoted while it was cut off)."""
    for name in nodes.ports:
        info = str(nodes.call(name, "CLUSTER", "INFO"))
        if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
            return False
    repl = nodes.call(old_master, "INFO", "replication")
    replica_again = repl.get("role") == "slave" and repl.get("master_link_status") == "up"
    # With no promotion seen, either: one may have finished just after the watch stopped.
    return bool(replica_again or (not promoted and repl.get("role") == "master"))


def read_back(nodes: Nodes, writes: list[Write], slot: int) -> tuple[list[str], list[str]]:
    """(lost, unknown) among the acknowledged writes: each key read from the node serving
    `slot` now (the whole cluster's view, from each node in turn until one answers)."""
    owner = None
    for name in nodes.ports:
        try:
            owner = owner_of(nodes.view(name), slot)
        except redis.RedisError:
            continue
        if owner is not None:
            break
    acked = [w for w in writes if w.outcome == "ok"]
    if owner is None:
        return [], [w.key for w in acked]
    lost, unknown = [], []
    with nodes.client(nodes.names[owner.node_id]) as c:
        for w in acked:
            try:
                value = c.get(w.key)
            except redis.RedisError:
                unknown.append(w.key)
                continue
            if value != w.value:
                lost.append(w.key)
    return lost, unknown


def pick_master(status: EnvStatus) -> str:
    """The first live master by name."""
    masters = sorted(c.name for c in status.of_kind("redis") if c.role == "master" and c.healthy)
    if not masters:
        raise RuntimeError("no live Redis master to cut off")
    return masters[0]


def measure_redis_partition(
    env: LocalEnvironment,
    rate_per_s: float = 20.0,
    hold_s: float = 10.0,
    timeout_s: float = 60.0,
    on_cut: Callable[[dict[str, Any]], None] | None = None,
    on_heal: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """A write loop to a Redis master's own port, the master cut off from every other node
    for at least `hold_s` and until it refused writes and its replica was promoted (or
    `timeout_s`, scaled), then healed (always) and the cluster whole again (within `timeout_s`,
    scaled); every acknowledged key read back. `on_cut` is told what was cut once it is (the
    journal's inject), `on_heal` once it is healed.

    Raises:
        containers.NeedsContainers: on any runtime but containers (before anything is done).
        DeadlineExceeded: the cluster was not whole again in time after the heal.
    """
    if env.settings.runtime != "containers":
        raise containers.NeedsContainers("a partition of a Redis master")
    status = env.state()
    nodes = Nodes(status)
    name = pick_master(status)
    view = nodes.view(name)
    me = next(n for n in view if n.node_id == nodes.ids[name])
    replicas = sorted(nodes.names[n.node_id] for n in view if n.master_id == me.node_id)
    peers = sorted(n for n in nodes.ports if n != name)
    tag = hash_tag_for(me.slots)
    slot = key_slot(tag.encode())
    timeout = env.settings.timeout(timeout_s)
    writer = IsolatedWrites(nodes, name, tag, rate_per_s)
    watch: PromotionWatch | None = None
    try:
        wait_until(writer.acknowledged, timeout, f"a write acknowledged by {name}")
        # From the moment the cut begins, as RTO counts from the fault.
        cut_at, cut_wall = time.monotonic(), time.time()
        try:
            cut = containers.partition(env.settings, name, peers)
            cut_done = time.monotonic()
            watch = PromotionWatch(nodes, replicas)
            seen_cut = containers.partitioned_from(env.settings, name)
            if on_cut is not None:
                on_cut({"master": name, "cut_from": cut["peers"], "cut_wall": cut_wall})
            _hold(writer, watch, cut_at, hold_s, max(hold_s, timeout))
            # Who serves its slots now, in the majority's view, before the heal.
            slot_owner = _owner_name(nodes, peers, slot)
        finally:
            writes = writer.stop()
            # Always, also when the cut failed halfway: a partial cut is still a cut.
            containers.heal(env.settings, name)
            healed_at = time.monotonic()
            if watch is not None:
                watch.stop()
            if on_heal is not None:
                on_heal()
    finally:
        writer.stop()  # when no write was ever acknowledged
    promoted = watch is not None and watch.promoted_at is not None
    wait_until(
        lambda: cluster_whole(nodes, name, promoted), timeout, "the Redis cluster whole again", 0.5
    )
    lost, unknown = read_back(nodes, writes, slot)
    return {
        "master": name,
        "node_id": me.node_id,
        "replicas": replicas,
        "cut_from": cut["peers"],
        "cut_ips": cut["ips"],
        "partitioned_from_during_cut": seen_cut,
        "partitioned_from_after_heal": containers.partitioned_from(env.settings, name),
        "cut_wall": cut_wall,
        "cut_took_s": round(cut_done - cut_at, 3),
        "hash_tag": tag,
        "slot": slot,
        "rate_per_s": rate_per_s,
        "cluster_node_timeout_s": env.settings.timing.redis_node_timeout_ms / 1000,
        "promoted": watch.promoted,
        "slot_owner_during_cut": slot_owner,
        "role_after": nodes.role(name),
        **summarize(writes, cut_at, watch.promoted_at, healed_at, lost, unknown, cut_done),
    }


def _hold(
    writer: IsolatedWrites, watch: PromotionWatch, cut_at: float, hold_s: float, limit_s: float
) -> None:
    """Until `hold_s` from the cut has passed and the isolated master refused a write and its
    replica was promoted; at most `limit_s` from the cut (then the figures say what did not
    happen)."""

    def moved_on() -> bool:
        refused = any(w.outcome == "fail" and w.sent_s >= cut_at for w in writer.writes)
        held = time.monotonic() >= cut_at + hold_s
        return held and refused and watch.promoted_at is not None

    with contextlib.suppress(DeadlineExceeded):
        wait_until(moved_on, max(0.0, cut_at + limit_s - time.monotonic()), "moved on", 0.2)


def _owner_name(nodes: Nodes, ask: list[str], slot: int) -> str | None:
    """The name of the node serving `slot` in the view of the first of `ask` that answers."""
    for name in ask:
        try:
            owner = owner_of(nodes.view(name), slot)
        except redis.RedisError:
            continue
        return nodes.names.get(owner.node_id) if owner else None
    return None
