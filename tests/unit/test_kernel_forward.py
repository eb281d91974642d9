"""bench-proxy's kernel side (bench/kernel_forward.py): an eBPF sockmap redirect between two real
sockets, loaded into this machine's kernel. It needs root and sockmap support; without them the
tests say so and skip (the benchmark then refuses `--kernel` with the same reason)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from bench.kernel_forward import KernelForwardError, Redirect
from env.process import terminate_then_kill, wait_until


@pytest.fixture
def redirect() -> Iterator[Redirect]:
    try:
        r = Redirect(entries=16)
    except KernelForwardError as exc:
        pytest.skip(f"no eBPF sockmap here: {exc}")
    yield r
    r.close()


def pair_of_connections() -> tuple[socket.socket, ...]:
    """client -> a (accepted: the forwarder's side), b -> u (the upstream's side)."""
    front = socket.create_server(("127.0.0.1", 0))
    back = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(front.getsockname())
    a, _ = front.accept()
    b = socket.create_connection(back.getsockname())
    u, _ = back.accept()
    front.close()
    back.close()
    for s in (client, u):
        s.settimeout(5)
    return client, a, b, u


def recv_exactly(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        assert chunk, f"closed after {len(got)} of {n} bytes"
        got += chunk
    return got


def test_paired_sockets_forward_in_the_kernel_both_ways(redirect: Redirect) -> None:
    client, a, b, u = pair_of_connections()
    try:
        # Sent before the pair exists, from both ends: held in a's and b's queues until the
        # pairing sends them on.
        client.sendall(b"early")
        u.sendall(b"greeting")
        redirect.pair(a, b)
        assert recv_exactly(u, 5) == b"early"
        assert recv_exactly(client, 8) == b"greeting"
        for i in range(50):
            out, back = os.urandom(1 + 997 * i), os.urandom(1 + 613 * i)
            client.sendall(out)
            assert recv_exactly(u, len(out)) == out
            u.sendall(back)
            assert recv_exactly(client, len(back)) == back
        # The bytes went from socket to socket inside the kernel: none reached a's or b's reader.
        for s in (a, b):
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in (client, a, b, u):
            s.close()


def exchange(port: int, upstream: socket.socket, ask: bytes, answer: bytes) -> None:
    """One client through the forwarder: `ask` reaches the upstream, `answer` comes back, and
    the client's close reaches the upstream."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(ask)  # at once: the forwarder may not have paired anything yet
        u, _ = upstream.accept()
        with u:
            u.settimeout(5)
            assert recv_exactly(u, len(ask)) == ask
            u.sendall(answer)
            assert recv_exactly(client, len(answer)) == answer
            client.shutdown(socket.SHUT_RDWR)
            assert u.recv(1) == b""


def new_pair_after_an_end(pid: int, port: int, upstream: socket.socket) -> None:
    forwarder = psutil.Process(pid)
    old = socket.create_connection(("127.0.0.1", port), timeout=5)
    u, _ = upstream.accept()
    with u:
        u.settimeout(5)
        old.sendall(b"o")
        assert recv_exactly(u, 1) == b"o"  # paired
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: forwarder.status() == psutil.STATUS_STOPPED, 5, "a stop")
            old.close()  # on loopback its end is at the forwarder's socket at once
            new = socket.create_connection(("127.0.0.1", port), timeout=5)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert u.recv(1) == b""  # the forwarder closed the old pair's upstream side
    with new:
        new.sendall(b"new")
        u, _ = upstream.accept()
        with u:
            u.settimeout(5)
            assert recv_exactly(u, 3) == b"new"
            u.sendall(b"served")
            assert recv_exactly(new, 6) == b"served"


def test_the_forwarder_process_outlives_clients_that_leave_at_once(tmp_path) -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    upstream.settimeout(5)
    log = tmp_path / "forward.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.kernel_forward", str(upstream.getsockname()[1])],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    try:
        said = proc.stdout.readline().decode().split()
        if said[:1] != ["ready"]:  # it exited: its reason is in the log
            reason = log.read_text()
            assert "kernel forwarding unavailable" in reason, reason
            pytest.skip(reason.strip())
        port = int(said[1])
        exchange(port, upstream, b"ping", b"pong")
        # A client that connects and closes at once: its socket is no longer established
        # when the forwarder pairs it, and the kernel will not take it. Dropped, not fatal.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        u, _ = upstream.accept()  # the upstream connection made for it, closed again
        with u:
            u.settimeout(5)
            assert u.recv(1) == b""
        exchange(port, upstream, b"again", b"served")
        # Both ends of a pair closing together: both sockets report in one batch of events.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            u, _ = upstream.accept()
            u.settimeout(5)
            client.sendall(b"paired")  # a round trip first: the pair certainly exists
            assert recv_exactly(u, 6) == b"paired"
            u.sendall(b"yes")
            assert recv_exactly(client, 3) == b"yes"
            client.close()
            u.close()
        # The forwarder is not woken per segment: the verdict takes them, and it watches the
        # pair only for its end (its voluntary context switches count its wake-ups).
        forwarder = psutil.Process(proc.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            u, _ = upstream.accept()
            with u:
                u.settimeout(5)
                client.sendall(b"x")
                assert recv_exactly(u, 1) == b"x"
                before = forwarder.num_ctx_switches().voluntary
                for _ in range(500):
                    client.sendall(b"q" * 100)
                    u.sendall(recv_exactly(u, 100))
                    assert recv_exactly(client, 100) == b"q" * 100
                woken = forwarder.num_ctx_switches().voluntary - before
        assert woken < 50, f"{woken} wake-ups of the forwarder for 1,000 forwarded segments"
        exchange(port, upstream, b"still", b"there")
        # A pair that ends while a new client waits: one batch of events then holds the old
        # pair's ends and the listener, and the new pair may get the old descriptor numbers.
        # Which comes first in the batch varies, so the case is made ten times.
        for _ in range(10):
            new_pair_after_an_end(proc.pid, port, upstream)
        assert proc.poll() is None, log.read_text()
    finally:
        upstream.close()
        terminate_then_kill([proc.pid], grace_s=5)
        wait_until(lambda: proc.poll() is not None, 10, "the forwarder to exit")
        proc.stdout.close()
