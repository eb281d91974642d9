"""bench-proxy's kernel side (bench/kernel_forward.py): an eBPF sockmap redirect between two real
sockets, loaded into this machine's kernel. It needs root and sockmap support; without them the
tests say so and skip (the benchmark then refuses `--kernel` with the same reason)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

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
        # Sent before the pair exists: held in a's queue until the pairing sends it on.
        client.sendall(b"early")
        redirect.pair(a, b)
        assert recv_exactly(u, 5) == b"early"
        for i in range(50):
            out, back = os.urandom(1 + 997 * i), os.urandom(1 + 613 * i)
            client.sendall(out)
            assert recv_exactly(u, len(out)) == out
            u.sendall(back)
            assert recv_exactly(client, len(back)) == back
        # The bytes went from socket to socket inside the kernel: none reached a's reader.
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(1)
    finally:
        for s in (client, a, b, u):
            s.close()


def test_the_forwarder_process_serves_a_client_and_names_what_it_lacks(tmp_path) -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "forward.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.kernel_forward",
                str(port),
                str(upstream.getsockname()[1]),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    try:
        if proc.stdout.readline() != b"ready\n":  # it exited: its reason is in the log
            said = log.read_text()
            assert "kernel forwarding unavailable" in said, said
            pytest.skip(said.strip())
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"ping")  # before the forwarder has paired anything
        upstream.settimeout(5)
        u, _ = upstream.accept()
        u.settimeout(5)
        assert recv_exactly(u, 4) == b"ping"
        u.sendall(b"pong")
        assert recv_exactly(client, 4) == b"pong"
        client.close()
        # An end of stream closes the pair: the upstream sees it.
        assert u.recv(1) == b""
        u.close()
    finally:
        upstream.close()
        terminate_then_kill([proc.pid], grace_s=5)
        wait_until(lambda: proc.poll() is not None, 10, "the forwarder to exit")
        proc.stdout.close()
