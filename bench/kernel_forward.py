"""The cheapest TCP forwarding the kernel offers, as bench-proxy's reference: bytes that never
reach user space.

An eBPF `sk_skb` verdict program (BPF_SK_SKB_VERDICT, Linux 5.13 or later) redirects every
segment a forwarded socket receives to its peer's send side. Two SOCKHASH maps: `peers` holds
each socket's peer under the socket's own cookie, and the program, attached to `forwarded`,
looks the receiving socket's cookie up in `peers`. A pair enters `peers` before either socket
enters `forwarded`, so no segment ever finds its socket forwarded and its peer unknown (which
would hand it to user space, out of order with the redirected ones). The user-space loop here
only accepts, connects upstream, pairs the two sockets and closes them at an end of stream.
Loaded through the `bpf(2)` system call with ctypes (no compiler, no libbpf): root, or CAP_BPF
and CAP_NET_ADMIN.

It is **not** the fault proxy's forwarding as it stands (README, "Benchmarks": bench-proxy): a
redirect to a peer's send side is sent later, from a kernel work queue, so at an end of stream
the bytes before it may not have gone out yet. Closing (or half-closing) the peer then drops
them: in 13 of 20 trials of 4 MiB followed by a half-close, the upstream got less than was sent.
Waiting first until the peer's acknowledged bytes (TCP_INFO `tcpi_bytes_acked`) reach what this
side received (`tcpi_bytes_received`) delivered every byte in 20 of 20; the proxy would need the
same wait before a toxic's first chunk, and a switch to user space for toxics (a one-off probe,
not in the tree). bench-proxy runs it for what it shows without an end of stream (round trips
and bulk): on this machine it took 12-23 % less of the machine's CPU per round trip than the
fault proxy, and 15-16 % less per MB (README).

Run: `python -m bench.kernel_forward UPSTREAM_PORT [LISTEN_PORT]` (prints `ready PORT` once
listening; port 0 or none: one the kernel picks).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import select
import socket
import struct
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
#: x86-64's number of the bpf(2) system call (the only architecture this project runs on).
NR_BPF = 321
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD, BPF_PROG_ATTACH = 0, 2, 5, 8
BPF_MAP_TYPE_SOCKHASH = 18
BPF_PROG_TYPE_SK_SKB = 14
BPF_SK_SKB_VERDICT = 38
#: Helper numbers of <linux/bpf.h>.
FUNC_GET_SOCKET_COOKIE, FUNC_SK_REDIRECT_HASH = 46, 72
SO_COOKIE = 57
#: accept(2)'s errors that a listener left readable would meet again at once.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: How long the listener rests after such an error when no pair closes to free a descriptor.
BACKOFF_S = 1.0
#: sizeof(union bpf_attr) the calls pass: larger than every field used, zero-filled.
ATTR_SIZE = 128


class KernelForwardError(Exception):
    """The kernel refused a bpf(2) call; the message says what to check."""

    def __init__(self, errno_: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_


def bpf(cmd: int, attr: bytes) -> int:
    if platform.machine() != "x86_64":
        raise KernelForwardError(
            errno.ENOSYS, f"bpf(2) is called by x86-64's number, not on {platform.machine()}"
        )
    buf = ctypes.create_string_buffer(attr, ATTR_SIZE)
    r = int(_libc.syscall(ctypes.c_long(NR_BPF), ctypes.c_long(cmd), buf, ctypes.c_uint(ATTR_SIZE)))
    if r < 0:
        e = ctypes.get_errno()
        hint = {
            errno.EPERM: "needs root (or CAP_BPF and CAP_NET_ADMIN)",
            errno.EINVAL: "needs Linux 5.13 or later (BPF_SK_SKB_VERDICT)",
            errno.ENOSYS: "the kernel has no bpf(2) (CONFIG_BPF_SYSCALL)",
        }.get(e, "")
        raise KernelForwardError(e, f"bpf(cmd {cmd}): {os.strerror(e)}; {hint}".rstrip("; "))
    return r


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction (struct bpf_insn)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def verdict_program(map_fd: int) -> bytes:
    """Redirect the segment to the socket stored under the receiving socket's cookie in map
    `map_fd`; pass it (to this socket's own reader) when none is stored."""
    return b"".join(
        [
            insn(0xBF, 6, 1),  # r6 = ctx
            insn(0x85, imm=FUNC_GET_SOCKET_COOKIE),  # r0 = bpf_get_socket_cookie(ctx)
            insn(0x7B, 10, 0, -8),  # *(u64 *)(r10 - 8) = r0
            insn(0xBF, 1, 6),  # r1 = ctx
            insn(0x18, 2, 1, imm=map_fd),  # r2 = the map (BPF_PSEUDO_MAP_FD)
            insn(0x00),  # (the wide load's second half)
            insn(0xBF, 3, 10),  # r3 = r10
            insn(0x07, 3, imm=-8),  # r3 += -8: the key
            insn(0xB7, 4, imm=0),  # r4 = 0: the peer's send side
            insn(0x85, imm=FUNC_SK_REDIRECT_HASH),  # bpf_sk_redirect_hash(ctx, map, &key, 0)
            # SK_PASS either way: with a redirect set it is taken, without one the segment
            # stays with this socket (SK_DROP would lose it).
            insn(0xB7, 0, imm=1),
            insn(0x95),  # exit
        ]
    )


def _sockhash(entries: int) -> int:
    return bpf(BPF_MAP_CREATE, struct.pack("<IIIII", BPF_MAP_TYPE_SOCKHASH, 8, 4, entries, 0))


class Redirect:
    """The maps and the verdict program; `pair(a, b)` makes each forward to the other."""

    def __init__(self, entries: int = 65536) -> None:
        self.fds: list[int] = []
        try:
            self._load(entries)
        except BaseException:
            self.close()
            raise

    def _load(self, entries: int) -> None:
        self.peers_fd = _sockhash(entries)
        self.fds.append(self.peers_fd)
        self.forwarded_fd = _sockhash(entries)
        self.fds.append(self.forwarded_fd)
        prog = verdict_program(self.peers_fd)
        insns = ctypes.create_string_buffer(prog, len(prog))
        lic = ctypes.create_string_buffer(b"GPL")  # sk_redirect_hash is a GPL-only helper
        log = ctypes.create_string_buffer(1 << 16)
        attr = struct.pack(
            "<IIQQIIQ",
            BPF_PROG_TYPE_SK_SKB,
            len(prog) // 8,
            ctypes.addressof(insns),
            ctypes.addressof(lic),
            1,
            len(log),
            ctypes.addressof(log),
        )
        try:
            prog_fd = bpf(BPF_PROG_LOAD, attr)
        except KernelForwardError as exc:
            raise KernelForwardError(exc.errno, f"{exc}; verifier: {log.value.decode()}") from None
        self.fds.append(prog_fd)
        attach = struct.pack("<IIII", self.forwarded_fd, prog_fd, BPF_SK_SKB_VERDICT, 0)
        bpf(BPF_PROG_ATTACH, attach)

    def _put(self, map_fd: int, key_sock: socket.socket, value_sock: socket.socket) -> None:
        key = ctypes.create_string_buffer(key_sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), 8)
        value = ctypes.create_string_buffer(struct.pack("<I", value_sock.fileno()), 4)
        attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0)
        bpf(BPF_MAP_UPDATE_ELEM, attr)

    def pair(self, a: socket.socket, b: socket.socket) -> None:
        """Raises KernelForwardError for a socket the kernel will not take (one no longer
        established: a client that connected and closed at once)."""
        self._put(self.peers_fd, a, b)  # what a receives goes out of b
        self._put(self.peers_fd, b, a)
        self._put(self.forwarded_fd, a, a)  # from here on, the verdict runs on a's segments
        self._put(self.forwarded_fd, b, b)
        # Bytes that arrived before a socket was forwarded wait in its receive queue until
        # the next segment wakes the verdict, which never comes to a client waiting for its
        # answer. Setting SO_RCVLOWAT runs the socket's data-ready callback (tcp_set_rcvlowat),
        # now the verdict's, which sends them on in order.
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _accept(
    server: socket.socket, upstream_port: int, redirect: Redirect
) -> list[socket.socket] | None:
    """The client's connection and its upstream one, paired; [] when this connection was
    dropped; None when none could be accepted (out of descriptors)."""
    try:
        a, _ = server.accept()
    except BlockingIOError:
        return []
    except OSError as exc:
        print(f"accept: {exc}", file=sys.stderr, flush=True)
        return None if exc.errno in OUT_OF_RESOURCES else []
    made = [a]
    try:
        made.append(socket.create_connection(("127.0.0.1", upstream_port), timeout=5))
        for x in made:
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            x.setblocking(False)
        redirect.pair(*made)
    except (OSError, KernelForwardError) as exc:
        print(f"connection dropped: {exc}", file=sys.stderr, flush=True)
        for x in made:
            x.close()
        return []
    return made


def serve(upstream_port: int, listen_port: int = 0) -> None:
    """Forward 127.0.0.1:`listen_port` to 127.0.0.1:`upstream_port` until killed."""
    redirect = Redirect()
    server = socket.create_server(("127.0.0.1", listen_port), backlog=1024)
    server.setblocking(False)
    ep = select.epoll()
    ep.register(server.fileno(), select.EPOLLIN)
    listening = True
    socks: dict[int, socket.socket] = {}
    peers: dict[int, int] = {}
    print(f"ready {server.getsockname()[1]}", flush=True)
    while True:
        events = ep.poll(None if listening else BACKOFF_S)
        if not listening and not events:
            ep.register(server.fileno(), select.EPOLLIN)  # rested: try again
            listening = True
        # Descriptor numbers closed in this batch: one the listener's accept reuses later in
        # the batch must not take the closed socket's event (the pair's other socket reports
        # its own end, a little later, from a kernel worker).
        closed: set[int] = set()
        for fd, _ in events:
            if fd in closed:
                continue
            if fd == server.fileno():
                pair = _accept(server, upstream_port, redirect)
                if pair is None:  # out of descriptors: a listener left readable would spin
                    ep.unregister(fd)
                    listening = False
                for x in pair or []:
                    socks[x.fileno()] = x
                    # The end of stream only (hang-ups and errors always come): a forwarded
                    # socket still wakes readers after each segment the verdict took, and
                    # watching for input would wake this loop per segment for nothing.
                    ep.register(x.fileno(), select.EPOLLRDHUP)
                if pair:
                    peers[pair[0].fileno()], peers[pair[1].fileno()] = (
                        pair[1].fileno(),
                        pair[0].fileno(),
                    )
                continue
            if fd not in peers:
                continue  # closed with its peer earlier in this batch of events
            other = peers.pop(fd)
            peers.pop(other, None)
            closed |= {fd, other}
            for closing in (fd, other):
                ep.unregister(closing)
                socks.pop(closing).close()
            if not listening:
                ep.register(server.fileno(), select.EPOLLIN)
                listening = True


if __name__ == "__main__":
    try:
        serve(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    except KernelForwardError as exc:
        print(f"kernel forwarding unavailable: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
