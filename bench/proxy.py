"""`make bench-proxy`: the fault proxy (env/faultproxy.py) with no toxic, against a direct
connection to the same upstream, in the same run.

An upstream server (this module with `--upstream`, its own process, the default asyncio loop) and
the fault proxy (`python -m env.faultproxy --port ... --config ...`, as the environment starts
it) run beside the load generator (this process). Three phases, each in alternated rounds
(direct, proxy, proxy, direct, ...) so that drift on a shared machine falls on both sides:

- `round_trips`: small request/response round trips per second (SIZE bytes out, the same back),
  over CONNS connections at once, as a pool of database connections makes queries;
- `bulk`: MB/s of a large one-way transfer, upstream to client (a query's result, a download);
- `connects`: connections set up per second (connect, one byte each way, close), CONNS at once.

Each figure is a ratio proxy / direct beside the goal (GOAL, 0.8), with the proxy's own CPU per
operation (microseconds of its process per round trip, per MB, per connection: steadier than a
rate on a busy machine, and what a change to the proxy moves) and the whole machine's busy CPU
per operation. Exit 1 when a ratio misses the goal. `--kernel` (KERNEL=1) adds a third side in
the same alternation, the kernel's own redirect (bench/kernel_forward.py: an eBPF sockmap, no
byte in user space) for round trips and bulk: whether forwarding inside the kernel would be
cheaper here than the proxy's, beside it, not judged. `--profile` records the proxy with py-spy
during its rounds and writes the hottest frames of each phase (profile-<phase>.txt: collapsed
stacks; profile.md: the top frames).

Writes reports/<UTC timestamp>-bench-proxy/ (bench.json, bench.md, report.html).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cwh.report import try_write_html
from cwh.report.versions import stamp_versions
from env.process import terminate_then_kill, wait_until

ROOT = Path(__file__).resolve().parent.parent
console = Console()
GOAL = 0.8
PHASES = ("round_trips", "bulk", "connects")
#: What each phase counts, and the unit of its rate.
UNITS = {"round_trips": "round trips/s", "bulk": "MB/s", "connects": "connections/s"}
#: The first byte a client sends names what the upstream does with the connection.
ECHO, BULK, CONNECT = b"E", b"B", b"C"
BLOCK = bytes(1 << 20)


# ---- the upstream: echo, bulk source, connect-and-answer ---------------------------------------


class Upstream(asyncio.Protocol):
    """`E`: echo everything after it; `B` + 8-byte size: send that many bytes, then close; `C`:
    answer one byte, then close."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.mode = b""
        self.left = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.mode == ECHO:
            self.transport.write(data)
            return
        self.mode, rest = data[:1], data[1:]
        if self.mode == ECHO:
            if rest:
                self.transport.write(rest)
        elif self.mode == BULK:
            (self.left,) = struct.unpack("!Q", rest[:8])
            self.send()
        else:
            self.transport.write(b"c")
            self.transport.close()

    def send(self) -> None:
        assert self.transport is not None
        while self.left > 0 and not self.paused and not self.transport.is_closing():
            n = min(self.left, len(BLOCK))
            self.transport.write(BLOCK[:n] if n < len(BLOCK) else BLOCK)
            self.left -= n
        if self.left <= 0:
            self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == BULK:
            self.send()


async def serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


# ---- the clients: protocols, so the generator spends little per operation ---------------------


@dataclass
class Counter:
    """Operations done (round trips, bytes, connections) while `running`."""

    done: int = 0
    running: bool = True
    errors: list[str] = field(default_factory=list)


class PingPong(asyncio.Protocol):
    def __init__(self, counter: Counter, payload: bytes) -> None:
        self.counter, self.payload, self.got = counter, payload, 0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(ECHO + self.payload)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.got += len(data)
        if self.got < len(self.payload):
            return
        self.got -= len(self.payload)
        self.counter.done += 1
        if self.counter.running:
            self.transport.write(self.payload)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Sink(asyncio.BufferedProtocol):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.buffer = memoryview(bytearray(1 << 18))
        self.transport: asyncio.BaseTransport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        assert isinstance(transport, asyncio.Transport)
        transport.write(BULK + struct.pack("!Q", 1 << 50))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.counter.done += nbytes
        if not self.counter.running and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class OneByte(asyncio.Protocol):
    def __init__(self) -> None:
        self.answered = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(CONNECT)

    def data_received(self, data: bytes) -> None:
        if not self.answered.done():
            self.answered.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError(f"closed before the answer: {exc}"))


async def run_round(phase: str, port: int, counter: Counter, conns: int, size: int) -> None:
    """Drive `phase` against 127.0.0.1:`port` until `counter.running` is cleared."""
    loop = asyncio.get_running_loop()
    if phase == "round_trips":
        payload = b"q" * size
        made = [
            await loop.create_connection(lambda: PingPong(counter, payload), "127.0.0.1", port)
            for _ in range(conns)
        ]
        await asyncio.gather(*(p.closed for _, p in made))
    elif phase == "bulk":
        _, sink = await loop.create_connection(lambda: Sink(counter), "127.0.0.1", port)
        await sink.closed
    else:

        async def connects() -> None:
            while counter.running:
                transport, proto = await loop.create_connection(OneByte, "127.0.0.1", port)
                try:
                    await asyncio.wait_for(proto.answered, 5)
                finally:
                    transport.close()
                counter.done += 1

        await asyncio.gather(*(connects() for _ in range(conns)))


# ---- rounds, the proxy's CPU, the figures ----------------------------------------------------


@dataclass
class Tally:
    """One side of one phase, summed over its rounds."""

    ops: int = 0
    seconds: float = 0.0
    proxy_cpu_s: float = 0.0
    #: The upstream's and this generator's CPU together: the two ends' cost.
    ends_cpu_s: float = 0.0
    #: Every core's busy time: what the kernel spends forwarding is in no process's account.
    machine_cpu_s: float = 0.0

    def units(self, phase: str) -> float:
        """Operations in the phase's unit: round trips, MB (from bytes), connections."""
        return self.ops / 1e6 if phase == "bulk" else float(self.ops)

    def rate(self, phase: str) -> float:
        return self.units(phase) / self.seconds if self.seconds else 0.0


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def machine_busy_s() -> float:
    """Busy seconds of all cores (softirq included: loopback TCP and the sockmap's redirects
    run there or in kernel workers)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq)


async def measure(
    phase: str,
    port: int,
    seconds: float,
    conns: int,
    size: int,
    show: Callable[[Counter, float], None],
) -> tuple[int, float]:
    """One round: (operations, seconds it took)."""
    counter = Counter()
    started = time.monotonic()
    task = asyncio.ensure_future(run_round(phase, port, counter, conns, size))
    while time.monotonic() - started < seconds and not task.done():
        await asyncio.sleep(0.25)  # the progress display's period, not a synchronisation
        show(counter, time.monotonic() - started)
    counter.running = False
    took = time.monotonic() - started
    done = counter.done  # what finished inside the round's time
    await asyncio.wait_for(task, 10)  # raises what the round raised
    return done, took


@dataclass
class Bench:
    args: argparse.Namespace
    proxy_pid: int
    upstream_pid: int
    direct_port: int
    proxy_port: int
    #: The kernel redirect's listener (0: no such side).
    kernel_port: int = 0
    tallies: dict[tuple[str, str], Tally] = field(default_factory=dict)
    profiles: dict[str, Path] = field(default_factory=dict)

    async def phase(self, phase: str, live: Live, out: Path) -> None:
        proxy = psutil.Process(self.proxy_pid)
        ends = (psutil.Process(self.upstream_pid), psutil.Process())
        # The kernel redirect loses bytes at an end of stream (bench/kernel_forward.py), and
        # the connects phase is all ends of stream.
        sides = ["direct", "proxy"] + (
            ["kernel"] if self.kernel_port and phase != "connects" else []
        )
        ports = {"direct": self.direct_port, "proxy": self.proxy_port, "kernel": self.kernel_port}
        for i in range(self.args.rounds):
            # Mirrored every other round (d p k, k p d), so that drift over the rounds falls
            # evenly on every side.
            order = sides if i % 2 == 0 else sides[::-1]
            for side in order:
                tally = self.tallies.setdefault((phase, side), Tally())
                port = ports[side]

                def show(c: Counter, t: float, side: str = side, i: int = i) -> None:
                    live.update(
                        self.table(phase, f"{side}, round {i + 1}", c.done, t), refresh=True
                    )

                spy = self.spy(phase, i, out) if side == "proxy" else None
                before, ends_before = cpu_s(proxy), sum(map(cpu_s, ends))
                machine_before = machine_busy_s()
                ops, took = await measure(
                    phase, port, self.args.seconds, self.args.conns, self.args.size, show
                )
                tally.machine_cpu_s += machine_busy_s() - machine_before
                tally.proxy_cpu_s += cpu_s(proxy) - before
                tally.ends_cpu_s += sum(map(cpu_s, ends)) - ends_before
                if spy is not None:
                    spy.wait(30)
                tally.ops += ops
                tally.seconds += took

    def spy(self, phase: str, i: int, out: Path) -> subprocess.Popen[bytes] | None:
        """py-spy on the proxy for one round (collapsed stacks, appended per phase)."""
        if not self.args.profile:
            return None
        path = out / f"profile-{phase}-{i}.txt"
        self.profiles.setdefault(phase, out / f"profile-{phase}.txt")
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        cmd = [exe, "record", "--pid", str(self.proxy_pid), "--format", "raw", "--rate", "250"]
        # By function, with native frames: under uvloop the loop and the syscalls are C.
        cmd += ["--function", "--native"]
        cmd += ["--duration", str(max(1, int(self.args.seconds))), "--output", str(path)]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def table(self, phase: str, what: str, done: int, t: float) -> Table:
        table = Table(title=f"bench-proxy: {phase}, {what} ({t:.1f} s of {self.args.seconds:g})")
        for col in ("phase", "direct", "proxy", "ratio", "goal"):
            table.add_column(col)
        for p in PHASES:
            row = self.figures().get(p)
            if row:
                table.add_row(
                    p, f"{row['direct']:.1f}", f"{row['proxy']:.1f}", f"{row['ratio']:.2f}", "0.8"
                )
        scale = 1e6 if phase == "bulk" else 1.0
        table.caption = f"now: {done / scale / max(t, 1e-9):.1f} {UNITS[phase]}"
        return table

    def figures(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for phase in PHASES:
            d, p = self.tallies.get((phase, "direct")), self.tallies.get((phase, "proxy"))
            if not d or not p or not d.rate(phase) or not p.seconds:
                continue
            per, per_d = p.units(phase), d.units(phase)  # per MB, round trip, connection
            machine: dict[str, float] = {}  # every core's busy time per operation, by side
            out[phase] = {
                "unit": UNITS[phase],
                "direct": round(d.rate(phase), 1),
                "proxy": round(p.rate(phase), 1),
                "ratio": round(p.rate(phase) / d.rate(phase), 3),
                "goal": GOAL,
                "proxy_cpu_us_per_op": round(p.proxy_cpu_s / per * 1e6, 1) if per else None,
                "proxy_cpu_percent": round(100 * p.proxy_cpu_s / p.seconds, 1),
                # What the ends (upstream and generator) spend per operation, direct: a proxy
                # as costly as both ends halves a CPU-bound rate on a machine they share.
                "ends_cpu_us_per_op": round(d.ends_cpu_s / per_d * 1e6, 1) if per_d else None,
                # The ratio CPU alone allows when the three processes share the cores (the
                # direct rounds' CPU per operation over the proxied rounds'): the figure cannot
                # beat it by forwarding faster in the ends, only by a cheaper proxy.
                "cpu_bound_ratio": (
                    round(d.ends_cpu_s / per_d / ((p.ends_cpu_s + p.proxy_cpu_s) / per), 3)
                    if per_d and per and p.ends_cpu_s + p.proxy_cpu_s
                    else None
                ),
                "machine_cpu_us_per_op": machine,
            }
            for side in ("direct", "proxy", "kernel"):
                t = self.tallies.get((phase, side))
                if t and t.ops:
                    machine[side] = round(t.machine_cpu_s / t.units(phase) * 1e6, 1)
            k = self.tallies.get((phase, "kernel"))
            if k and k.seconds:
                out[phase]["kernel"] = round(k.rate(phase), 1)
                out[phase]["kernel_ratio"] = round(k.rate(phase) / d.rate(phase), 3)
        return out


def top_frames(collapsed: str, n: int = 15) -> list[tuple[str, float, float]]:
    """(frame, self %, total %) of the `n` frames with the most self time, from py-spy's raw
    (collapsed) output: `frame;frame;frame count` per line."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        samples += int(count)
        own[frames[-1]] += int(count)
        for f in set(frames):
            total[f] += int(count)
    if not samples:
        return []
    return [(f, 100 * c / samples, 100 * total[f] / samples) for f, c in own.most_common(n)]


def collect_profiles(bench: Bench, out: Path) -> list[str]:
    lines = []
    for phase, path in bench.profiles.items():
        parts = sorted(out.glob(f"profile-{phase}-*.txt"))
        path.write_text("".join(p.read_text() for p in parts))
        for p in parts:
            p.unlink()
        lines += [f"## proxy profile, {phase} (py-spy, self time)", ""]
        lines += ["| frame | self % | total % |", "|---|---|---|"]
        lines += [f"| {f} | {s:.1f} | {t:.1f} |" for f, s, t in top_frames(path.read_text())]
        lines.append("")
    return lines


def report_lines(args: argparse.Namespace, figures: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "# bench-proxy",
        "",
        f"The fault proxy with no toxic against a direct connection to the same upstream, "
        f"{args.rounds} alternated rounds of {args.seconds:g} s per side and phase; "
        f"round trips of {args.size} B over {args.conns} connections, one bulk connection, "
        f"{args.conns} connecting at once. Proxy CPU: microseconds of the proxy process per "
        f"round trip, per MB, per connection; the ends' CPU: the upstream's and the "
        f"generator's together, in the direct rounds; CPU-bound ratio: CPU per operation "
        f"direct / proxied (all three processes), the ratio the CPU alone allows when they "
        f"share the cores.",
        "",
        "| phase | unit | direct | proxy | ratio | goal | proxy CPU us/op | proxy CPU % "
        "| ends' CPU us/op (direct) | CPU-bound ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, f in figures.items():
        mark = "" if f["ratio"] >= GOAL else " (missed)"
        lines.append(
            f"| {phase} | {f['unit']} | {f['direct']} | {f['proxy']} | **{f['ratio']}**{mark} | "
            f"{GOAL} | {f['proxy_cpu_us_per_op']} | {f['proxy_cpu_percent']} | "
            f"{f['ends_cpu_us_per_op']} | {f['cpu_bound_ratio']} |"
        )
    if figures:
        lines += ["", "Machine CPU per operation (every core's busy time over the rounds' "]
        lines[-1] += "operations; py-spy's own, with PROFILE=1, in the proxy's rounds):"
        lines += ["", "| phase | direct us/op | proxy us/op | kernel redirect us/op |"]
        lines += ["|---|---|---|---|"]
    for phase, f in figures.items():
        m = f.get("machine_cpu_us_per_op", {})
        cells = " | ".join(str(m.get(side, "-")) for side in ("direct", "proxy", "kernel"))
        lines.append(f"| {phase} | {cells} |")
    kernel = {phase: f for phase, f in figures.items() if "kernel" in f}
    if kernel:
        lines += [
            "",
            "The kernel's redirect (an eBPF sockmap, bench/kernel_forward.py), in the same "
            "alternation: forwarding with no byte in user space, beside the proxy's, not judged. "
            "It loses bytes at an end of stream, so it is no fault proxy, and the connects phase "
            "is not run through it.",
            "",
            "| phase | unit | direct | kernel redirect | ratio | fault proxy ratio |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {phase} | {f['unit']} | {f['direct']} | {f['kernel']} | {f['kernel_ratio']} | "
            f"{f['ratio']} |"
            for phase, f in kernel.items()
        ]
    return [*lines, ""]


# ---- processes ---------------------------------------------------------------------------------


def time_wait() -> tuple[int, int]:
    """(TCP sockets in TIME_WAIT, ephemeral ports): runs back to back leave tens of thousands
    of closed connections for 60 s, and connects slow down when they near the port range."""
    tw = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                fields = line.split()
                tw = int(fields[fields.index("tw") + 1])
    low, high = 32768, 60999
    with contextlib.suppress(OSError, ValueError):
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return tw, high - low + 1


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def proxy_ready(api: str, name: str) -> bool:
    try:
        return name in requests.get(f"{api}/proxies", timeout=1).json()
    except (requests.RequestException, ValueError):
        return False


def listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


async def run(args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    up_port, proxy_port, api_port, kernel_port = (args.port + i for i in range(4))
    config = out / "proxies.json"
    config.write_text(
        json.dumps(
            [{"name": "bench", "listen": f"127.0.0.1:{proxy_port}",
              "upstream": f"127.0.0.1:{up_port}", "enabled": True}]
        )
    )  # fmt: skip
    procs = [
        start([sys.executable, "-m", "bench.proxy", "--upstream", str(up_port)], out / "up.log"),
        start(
            [sys.executable, "-m", "env.faultproxy", "--port", str(api_port),
             "--config", str(config), "--loop", args.proxy_loop],
            out / "faultproxy.log",
        ),
    ]  # fmt: skip
    try:
        if args.kernel:
            cmd = [sys.executable, "-m", "bench.kernel_forward", str(up_port), str(kernel_port)]
            procs.append(start(cmd, out / "kernel-forward.log"))
        wait_until(lambda: listening(up_port), 15, "the upstream to listen")
        api = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: proxy_ready(api, "bench"), 15, "the fault proxy's API")
        if args.kernel:
            forwarder = procs[2]

            def kernel_up() -> bool:
                if forwarder.poll() is not None:  # refused: say why, in its own words
                    console.print(
                        f"bench-proxy: {(out / 'kernel-forward.log').read_text()}", markup=False
                    )
                    raise SystemExit(2)
                return listening(kernel_port)

            wait_until(kernel_up, 15, "the kernel redirect to listen")
        bench = Bench(
            args, procs[1].pid, procs[0].pid, up_port, proxy_port, kernel_port if args.kernel else 0
        )
        with Live(console=console, auto_refresh=False) as live:
            for phase in args.phases:
                await bench.phase(phase, live, out)
        figures = bench.figures()
        if args.profile:
            (out / "profile.md").write_text("\n".join(collect_profiles(bench, out)))
        return figures
    finally:
        terminate_then_kill([p.pid for p in procs], grace_s=5)
        for p in procs:
            p.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    port = int(os.environ.get("CWH_BENCH_PROXY_PORT", "21540"))
    parser.add_argument(
        "--port", type=int, default=port, help="upstream; +1 proxy, +2 API, +3 kernel redirect"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side and phase")
    parser.add_argument("--conns", type=int, default=8, help="connections at once")
    parser.add_argument("--size", type=int, default=100, help="bytes per message, round trips")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--profile", action="store_true", help="py-spy on the proxy's rounds")
    parser.add_argument("--proxy-loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--kernel", action="store_true", help="a third side: the kernel's eBPF redirect (root)"
    )
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # the upstream process
    args = parser.parse_args()
    if args.upstream:
        asyncio.run(serve_upstream(args.upstream))
        return
    out = ROOT / "reports" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-bench-proxy"
    out.mkdir(parents=True)
    stamp_versions(out)  # the versions that run, before anything changes
    tw, ports = time_wait()
    if tw > ports // 3:
        console.print(
            f"[yellow]{tw} TCP connections in TIME_WAIT against {ports} ephemeral ports[/yellow]: "
            "the connects figure may be low (a run leaves thousands for 60 s)"
        )
    figures = asyncio.run(run(args, out))
    met = all(f["ratio"] >= GOAL for f in figures.values()) and len(figures) == len(args.phases)
    verdict = "pass" if met else "fail"
    data = {
        "verdict": verdict,
        "goal": GOAL,
        "options": vars(args),
        "time_wait_at_start": tw,
        "figures": figures,
    }
    (out / "bench.json").write_text(json.dumps(data, indent=2))
    lines = report_lines(args, figures)
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    try_write_html(out, "", console)
    console.print("\n".join(lines))
    if args.profile:
        console.print((out / "profile.md").read_text())
    console.print(f"report: {out}  verdict: {verdict}")
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
