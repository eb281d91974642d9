"""scenarios/sockets.py: source addresses, descriptor limits, and binding on real loopback
sockets (every 127.0.0.0/8 address is local on Linux)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import gevent
import pytest
from gevent.pywsgi import WSGIServer
from geventhttpclient import UserAgent

from scenarios.sockets import (
    SPARE_FDS,
    bind_http_client,
    close_idle_connections,
    connect_from,
    fds_needed,
    loopback_sources,
    parse_sources,
    plan_fd_limit,
    rotation,
)


def test_sources_parse_and_count_up_from_127_0_0_2() -> None:
    assert parse_sources("") == ()
    assert parse_sources(" 127.0.0.2, 127.0.0.3 ,") == ("127.0.0.2", "127.0.0.3")
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        parse_sources("127.0.0.x")
    assert loopback_sources(3) == ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert loopback_sources(2, "127.0.0.254") == ("127.0.0.254", "127.0.0.255")
    with pytest.raises(ValueError, match=r"leave 127\.0\.0\.0/8"):
        loopback_sources(2, "127.255.255.255")


def test_phones_take_the_sources_in_turn() -> None:
    take = rotation(("a", "b"))
    assert [take() for _ in range(5)] == ["a", "b", "a", "b", "a"]
    assert rotation(())() is None


def test_descriptors_needed_per_process() -> None:
    assert fds_needed(20_000, 2) == 20_000 + SPARE_FDS  # 10,000 phones, two each
    assert fds_needed(20_000, 2, per_phone=1) == 10_000 + SPARE_FDS
    assert fds_needed(3, 2, per_phone=1) == 2 + SPARE_FDS  # the larger share


@pytest.mark.parametrize(
    ("soft", "hard", "need", "ceiling", "asked"),
    [
        (1024, 20_000, 5_000, 1 << 20, (20_000, 20_000)),  # soft up to hard, whatever the need
        (1024, 20_000, 30_000, 1 << 20, (30_000, 30_000)),  # hard up to the need, if allowed
        (1024, 20_000, 30_000, 25_000, (25_000, 25_000)),  # not past fs.nr_open
        (40_000, 50_000, 10, 1 << 20, (50_000, 50_000)),  # never lower
    ],
)
def test_the_fd_limit_plan(
    soft: int, hard: int, need: int, ceiling: int, asked: tuple[int, int]
) -> None:
    assert plan_fd_limit(soft, hard, need, ceiling) == asked


def listener() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def test_a_connection_leaves_from_its_source_address() -> None:
    server = listener()
    try:
        port = server.getsockname()[1]
        opts = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        for source in ("127.0.0.5", "127.0.0.6"):
            client = connect_from(source, "127.0.0.1", port, 5.0, opts)
            peer, _ = server.accept()
            assert peer.getpeername()[0] == source == client.getsockname()[0]
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            client.close()
            peer.close()
    finally:
        server.close()


def test_an_http_client_binds_and_drops_its_idle_connections() -> None:
    peers: list[str] = []

    def app(environ: dict[str, str], start: object) -> list[bytes]:
        peers.append(environ["REMOTE_ADDR"])
        start("200 OK", [("Content-Length", "2")])  # type: ignore[operator]
        return [b"ok"]

    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    session = SimpleNamespace(client=UserAgent())
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        bind_http_client(session, base, "127.0.0.9")
        for _ in range(2):
            assert session.client.urlopen(f"{base}/x").read() == b"ok"
        assert close_idle_connections(session, base) == 1  # one kept-alive connection
        assert close_idle_connections(session, base) == 0
        assert session.client.urlopen(f"{base}/y").read() == b"ok"  # connects again, bound
        assert peers == ["127.0.0.9"] * 3
    finally:
        session.client.close()
        server.stop()
        gevent.sleep(0)


def test_a_phone_is_budgeted_its_connection_unless_most_thinks_outlast_the_keepalive():
    from scenarios.sockets import descriptors_per_phone

    # The default fleet (mean 2 s, cap 10 s): no think outlasts a 10 s keep-alive.
    assert descriptors_per_phone(2.0, 10.0, 10.0) == 2.0
    # A mean just over the keep-alive: about half the thinks are shorter and keep it.
    assert 1.5 < descriptors_per_phone(15.0, 60.0, 10.0) < 2.0
    # bench-load's idle phones (mean 600 s): nearly all close it, a margin stays.
    assert 1.05 < descriptors_per_phone(600.0, 6000.0, 10.0) < 1.1
    assert fds_needed(20_000, 2, per_phone=1.07) == 10_700 + SPARE_FDS
