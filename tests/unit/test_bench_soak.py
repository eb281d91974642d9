"""`make bench-soak`'s pure parts: DURATION's forms, the least-squares growth that tells a leak
from noise and from a warm-up, descriptor growth, restarts, the latency windows of short and
long runs, the goals and the exit code from samples and a ledger."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from bench.roles import RoleSample, role_changes
from bench.soak import (
    MEMORY_CAPS_MIB,
    MIB,
    OUTSIDE,
    POOL_GROWTH,
    T_MIN,
    Sample,
    Sampler,
    Service,
    SoakSettings,
    _goals_cell,
    analyse,
    auto_warmup_s,
    descriptor_change,
    descriptors_grow,
    etcd_applied_index,
    fit_growth,
    goals,
    latency_windows,
    live_view,
    load_end_wall,
    memory_grows,
    p99_ok,
    parse_args,
    peer_names,
    phone_ops,
    process_table,
    relation_files,
    report,
    service_figures,
    services_of,
    shared_segments,
    verdict,
    window_s,
)
from env.settings import SERVICE_SLOTS
from slo.ledger import Operation, write_jsonl
from tests.helpers import poll

HOUR = 3600.0
PG = {"pg0": "leader", "pg1": "sync_standby", "pg2": "replica"}
# Every 10 s over 30 minutes: the sampler's period for a 30-minute soak.
STEADY = [RoleSample(float(t), PG, 1, ("7300", "7301", "7302"), 6) for t in range(0, 1800, 10)]


def series(
    name: str,
    level_mib: float,
    growth_per_hour: float,
    duration_s: float = 1800,
    every_s: float = 10,
    noise: float = 0.0,
    fds: int = 20,
    fds_per_hour: float = 0.0,
    pid: int = 100,
    seed: int = 1,
) -> list[Sample]:
    """A service's samples: memory rising by `growth_per_hour` (a ratio) with gaussian noise
    (`noise`, a ratio of the level), descriptors rising by `fds_per_hour`."""
    rng = random.Random(seed)
    out = []
    for i in range(int(duration_s / every_s) + 1):
        t = i * every_s
        mem = level_mib * MIB * (1 + growth_per_hour * t / HOUR + rng.gauss(0, noise))
        fd = fds + int(fds_per_hour * t / HOUR)
        out.append(Sample(t, 1e9 + t, name, "api", pid, 1, int(mem * 1.3), int(mem), fd))
    return out


# ---- DURATION ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("90s", 90), ("1h", 3600)])
def test_duration_takes_the_forms_people_type(text, seconds):
    assert parse_args(["--duration", text]).duration_s == seconds


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--duration", "soon"], "'soon' is not a duration"),
        (["--duration", "30s"], "DURATION=30 s: a soak runs 1m to 24h"),
        (["--duration", "2d"], "'2d' is not a duration"),
        (["--users", "0"], "USERS=0"),
        (["--spawn-rate", "0"], "SPAWN_RATE=0"),
    ],
)
def test_bad_input_is_refused_naming_the_variable(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_warm_up_and_windows_are_five_minutes_or_a_fifth_of_a_short_run():
    assert window_s(1800) == 300
    assert window_s(180) == 36
    assert SoakSettings(duration_s=180).warmup_s == 36
    assert SoakSettings(duration_s=7200).warmup_s == 300
    # About 180 samples, 2 to 10 s apart.
    assert SoakSettings(duration_s=1800).sample_every_s == 10
    assert SoakSettings(duration_s=180).sample_every_s == 2


def test_a_warm_up_before_the_duration_lengthens_the_run_and_moves_the_first_window():
    s = parse_args(["--duration", "30m", "--warmup", "45m"])
    assert (s.lead_s, s.warmup_s, s.run_s, s.auto_warmup) == (2700, 2700, 4500, False)
    assert s.latency_start_s == 2700  # the first latency window is the judged part's
    assert s.sample_every_s == 10
    auto = parse_args(["--warmup", "auto"])
    assert (auto.auto_warmup, auto.lead_s, auto.run_s) == (True, 0, 1800)
    plain = parse_args([])
    assert (plain.lead_s, plain.warmup_s, plain.run_s, plain.latency_start_s) == (0, 300, 1800, 10)
    assert parse_args(["--warmup", "0"]).run_s == 1800


@pytest.mark.parametrize("text", ["soon", "-5m", "25h"])
def test_a_bad_warm_up_is_refused_naming_the_variable(text, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([f"--warmup={text}"])
    assert exc.value.code == 2
    assert "WARMUP=" in capsys.readouterr().err


def test_the_automatic_warm_up_lasts_until_redis_and_etcd_are_full():
    # A fresh environment: etcd at index 300 of the 6,000 it keeps, Patroni at 2.3 writes/s.
    w = auto_warmup_s(300, 2.3, snapshot_count=1000, response_ttl_s=1800)
    assert w.etcd_full_index == 6000
    assert w.etcd_s == pytest.approx(5700 / 2.3, abs=0.1)
    assert w.lead_s == round(5700 / 2.3 + 120)  # etcd is the last to fill
    # An etcd already full: Redis's 30 minutes of responses decide.
    assert auto_warmup_s(9000, 2.3, 1000, 1800).lead_s == 1800 + 120
    # Patroni writing faster fills etcd sooner; a rate not measured takes Patroni's usual one.
    assert auto_warmup_s(0, 4.6, 1000, 600).etcd_s == pytest.approx(6000 / 4.6, abs=0.1)
    assert auto_warmup_s(None, None, 1000, 600).etcd_s == pytest.approx(6000 / 2.3, abs=0.1)
    assert auto_warmup_s(9000, 2.3, 1000, 60).lead_s == 300 + 120  # never under 5 minutes


def test_an_automatic_warm_up_is_bounded_and_says_what_it_assumed():
    slow = auto_warmup_s(0, 0.05, 1000, 1800)  # a rate measured absurdly low
    assert slow.lead_s == 7200
    assert any("capped at 7200 s" in p for p in slow.problems)
    blind = auto_warmup_s(None, None, 1000, 1800)
    assert blind.assumed_writes_per_s == 2.3
    assert any("could not be measured" in p for p in blind.problems)
    assert auto_warmup_s(300, 2.3, 1000, 1800).problems == []


def test_etcds_applied_index_is_read_from_its_metrics():
    import http.server
    import threading

    body = b"# HELP x\netcd_server_proposals_applied_total 4217\netcd_other 1\n"

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert etcd_applied_index(server.server_address[1]) == 4217
        body = b"etcd_other 1\n"
        assert etcd_applied_index(server.server_address[1]) is None  # no such gauge
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert etcd_applied_index(port, timeout_s=1) is None  # nothing listening


def test_the_response_ttl_the_warm_up_waits_for_is_the_services_own():
    from bench.soak import RESPONSE_TTL_S
    from reference_impl import api, worker

    assert RESPONSE_TTL_S == api.RESPONSE_TTL_S == worker.RESPONSE_TTL_S


def test_shared_memory_segments_are_found_with_their_size_and_pss():
    import mmap

    seg = mmap.mmap(-1, 8 * MIB, flags=mmap.MAP_SHARED)  # as PostgreSQL maps its buffers
    try:
        seg[: 2 * MIB] = b"x" * (2 * MIB)  # touch a quarter of it
        pss, sizes = shared_segments(os.getpid())
        assert 8 * MIB in sizes.values()
        assert pss >= 2 * MIB
    finally:
        seg.close()
    assert shared_segments(2**22 + 12345) == (0, {})  # no such process


def test_postgresql_relation_files_are_told_from_other_descriptors(tmp_path: Path, monkeypatch):
    data = tmp_path / "data"  # PostgreSQL's working directory is its data directory
    for d in ("base/16387", "global", "pg_wal", "base/pgsql_tmp"):
        (data / d).mkdir(parents=True)
    elsewhere = tmp_path / "repo" / "base" / "16387"  # a backup repository's copy
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(data)
    relations = ["base/16387/16456", "base/16387/16456_fsm", "base/16387/16537.1", "global/1262"]
    others = [
        "base/16387/t3_16460",  # a temporary relation: judged
        "base/16387/16456_fsmx",
        "base/16387/pg_filenode.map",
        "base/pgsql_tmp/pgsql_tmp123.0",
        "pg_wal/000000010000000000000003",
    ]
    files = [(data / n).open("w") for n in relations + others]
    files.append((elsewhere / "16456").open("w"))
    dropped = data / "base/16387/16999"
    files.append(dropped.open("w"))
    dropped.unlink()  # a dropped relation still held open: "(deleted)", judged
    try:
        counted = relation_files(os.getpid())
        assert counted is not None
        total, rel = counted
        assert rel == len(relations)
        assert total >= len(relations) + len(others) + 2
    finally:
        for f in files:
            f.close()
    assert relation_files(2**22 + 12345) is None  # no such process


def test_relation_files_a_member_keeps_open_are_not_descriptor_growth():
    """A standby's startup process keeps open each relation file it replays into (its file
    cache bounds them at max_files_per_process): growth made of them is not judged; the same
    growth in other descriptors (pipes, files of no relation) is still a leak."""

    def member(relations_per_h: float, others_per_h: float = 0.0) -> list[Sample]:
        out = []
        for x in series("pg0/postgres", 30, 0.0, seed=4):
            grown = int(relations_per_h * x.t_s / HOUR)
            others = int(others_per_h * x.t_s / HOUR)
            out.append(
                dataclasses.replace(
                    x, kind="postgres", fds=700 + grown + others, relation_files=400 + grown
                )
            )
        return out

    [files] = service_figures(member(200.0), 300, 1800, 0.10)
    assert files.fds_ok is True
    assert (files.fds_start, files.fds_end, files.relation_files) == (300, 300, 500)
    assert "416->500 relation files not counted" in _goals_cell(files)
    [leak] = service_figures(member(200.0, others_per_h=60.0), 300, 1800, 0.10)
    assert leak.fds_ok is False
    # The same samples counted whole: a miss, as the 2026-12-07 soak's standbys were.
    whole = [dataclasses.replace(x, relation_files=0) for x in member(200.0)]
    assert service_figures(whole, 300, 1800, 0.10)[0].fds_ok is False


def test_shared_buffers_touched_are_not_growth_but_a_new_segment_and_private_memory_are():
    """A PostgreSQL member's PSS rises as its backends touch more of the shared buffers (a
    fixed segment): judged on the memory outside it, flat here, so met. A leak in the
    backends' own memory is missed, and so is a segment made during the run."""

    def member(private_growth: float, touched_per_h: float, new_segment_at: float = 1e9):
        out = []
        for x in series("pg0/postgres", 40, private_growth, noise=0.002, seed=4):
            shm_pss = int((20 + touched_per_h * x.t_s / HOUR) * MIB)
            size = 144 * MIB + (16 * MIB if x.t_s >= new_segment_at else 0)
            out.append(
                dataclasses.replace(
                    x,
                    kind="postgres",
                    pss_bytes=x.pss_bytes + shm_pss,
                    shm_pss_bytes=shm_pss,
                    shm_bytes=size,
                )
            )
        return out

    [buffers] = service_figures(member(0.0, 60.0), 300, 1800, 0.10, MEMORY_CAPS_MIB)
    assert buffers.memory_ok is True
    assert buffers.memory_start_mib == pytest.approx(40, abs=0.5)
    assert buffers.shared_mib == 144
    # The same PSS judged whole would have missed: 20 -> 50 MiB of buffers touched.
    whole = [dataclasses.replace(x, shm_pss_bytes=0, shm_bytes=0) for x in member(0.0, 60.0)]
    assert service_figures(whole, 300, 1800, 0.10)[0].memory_ok is False
    [leak] = service_figures(member(0.3, 60.0), 300, 1800, 0.10, MEMORY_CAPS_MIB)
    assert leak.memory_ok is False
    [segment] = service_figures(member(0.0, 0.0, 1500.0), 300, 1800, 0.10, MEMORY_CAPS_MIB)
    assert segment.memory_ok is False


# ---- growth -----------------------------------------------------------------------------------


def test_the_line_of_a_perfect_series_is_exact():
    g = fit_growth([(t, 100 + 2 * t) for t in range(10)])
    assert g is not None
    assert g.per_hour == pytest.approx(7200)
    assert (g.start, g.end) == (pytest.approx(100), pytest.approx(118))
    assert g.ratio_per_hour == pytest.approx(72)
    assert g.t_stat == math.inf
    flat = fit_growth([(t, 5.0) for t in range(10)])
    assert flat is not None
    assert flat.t_stat == 0
    assert flat.per_hour == 0


def test_too_few_points_or_no_time_span_is_no_line():
    assert fit_growth([(0, 1), (1, 2)]) is None
    assert fit_growth([(5, 1), (5, 2), (5, 3)]) is None
    assert memory_grows(None, 0.1) is None
    assert descriptors_grow(None) is None


def test_a_leaking_service_is_flagged_and_a_flat_noisy_one_is_not():
    samples = series("api1", 60, growth_per_hour=0.25, noise=0.01) + series(
        "api2", 60, growth_per_hour=0.0, noise=0.02, seed=2
    )
    figures = {f.service: f for f in service_figures(samples, 300, 1800, memory_goal=0.10)}
    leak, flat = figures["api1"], figures["api2"]
    assert leak.memory_ok is False
    assert leak.memory_growth_per_hour == pytest.approx(0.25, rel=0.2)
    assert flat.memory_ok is True
    assert abs(flat.memory_growth_per_hour or 0) < 0.10
    assert leak.samples == flat.samples == 151  # from the warm-up's end (300 s) to 1800 s


def test_growth_below_the_goal_passes_however_clearly_it_is_measured():
    # 5 % per hour with no noise at all: measurable, and within the goal.
    [f] = service_figures(series("hub1", 60, 0.05), 300, 1800, memory_goal=0.10)
    assert f.memory_ok is True
    assert f.memory_growth_per_hour == pytest.approx(0.05, rel=0.1)


def test_noise_on_a_short_run_is_not_growth():
    # 3 minutes, 2 s apart, 5 % noise: per hour, the fitted slope swings far past 10 %, but it
    # does not stand out of the noise.
    for seed in range(20):
        [f] = service_figures(
            series("api1", 60, 0.0, duration_s=180, every_s=2, noise=0.05, seed=seed),
            36,
            180,
            memory_goal=0.10,
        )
        assert f.memory_ok is True, seed


def test_a_warm_up_is_not_a_leak():
    # Caches filling for the first 5 minutes (+30 %), flat afterwards.
    samples = [
        Sample(t, 0, "worker1", "worker", 7, 1, 0, int(MIB * (50 + 15 * min(t, 300) / 300)), 12)
        for t in range(0, 1801, 10)
    ]
    [f] = service_figures(samples, 300, 1800, memory_goal=0.10)
    assert f.memory_ok is True
    assert f.memory_growth_per_hour == 0
    # Counted from the start, the line rises past the goal; its last half is flat, so the
    # judgment still sees a warm-up.
    [g] = service_figures(samples, 0, 1800, memory_goal=0.10)
    assert (g.memory_growth_per_hour or 0) > 0.10
    assert g.memory_late_growth_per_hour == 0
    assert g.memory_ok is True


def test_growth_that_levels_off_is_not_a_leak_and_a_steady_one_is():
    """A worker whose arenas fill for 15 minutes (+20 % in all, levelling off): over the whole
    window its line rises more than 10 % per hour, over the last half it is flat. A leak of the
    same size keeps rising: missed, whatever half is looked at."""

    def sample(t: int, mib: float) -> Sample:
        return Sample(t, 0, "worker1", "worker", 7, 1, 0, int(MIB * mib), 12)

    settling = [sample(t, 50 + 10 * (1 - math.exp(-t / 300))) for t in range(0, 1801, 10)]
    [f] = service_figures(settling, 300, 1800, memory_goal=0.10)
    assert (f.memory_growth_per_hour or 0) > 0.10  # the whole line alone would call it growth
    assert abs(f.memory_late_growth_per_hour or 0) < 0.10
    assert f.memory_ok is True
    # The goals line shows the whole window's figure, and says the last half excused it.
    memory = goals([f], latency_windows([]), SoakSettings(duration_s=1800))[0]
    assert memory.ok is True
    assert "worst worker1 +" in memory.measured
    assert "levelled off in the last half: worker1 (" in memory.measured
    # Growth too noisy to measure is met for want of evidence, not levelled off (the review's
    # case: +12 %/h whole, +27.5 %/h in the last half).
    noisy = service_figures(series("api1", 50, 0.15, noise=0.08, seed=10), 300, 1800, 0.10)
    assert noisy[0].memory_ok is True
    assert (noisy[0].memory_t or 0) < T_MIN
    line = goals(noisy, latency_windows([]), SoakSettings(duration_s=1800))[0].measured
    assert "levelled off" not in line
    leak = [sample(t, 50 + 10 * t / 1800) for t in range(0, 1801, 10)]
    [g] = service_figures(leak, 300, 1800, memory_goal=0.10)
    # The same slope in MiB per hour, over a higher level: a slightly smaller ratio.
    assert (g.memory_late_growth_per_hour or 0) > 0.30
    assert g.memory_ok is False


def test_descriptor_growth_is_flagged_and_jitter_is_not():
    leak = series("hub1", 60, 0.0, fds_per_hour=120)  # one more every 30 s
    rng = random.Random(3)
    jitter = [
        Sample(t, 0, "pg0/postgres", "postgres", 9, 14, MIB, MIB, 230 + rng.choice((-8, 0, 8)))
        for t in range(0, 1801, 10)
    ]
    figures = {f.service: f for f in service_figures(leak + jitter, 300, 1800, 0.10)}
    assert figures["hub1"].fds_ok is False
    assert figures["hub1"].fds_per_hour == pytest.approx(120, rel=0.05)
    assert figures["pg0/postgres"].fds_ok is True


def test_a_noisy_leak_is_flagged_however_its_last_half_looks():
    """The last half measures its slope less precisely: a real leak must not be excused by that
    noise. 15 %/h and 1 MiB of noise on a 50 MiB worker, and a descriptor every 15 minutes;
    while a settling curve with a little noise is still excused."""
    for seed in range(50):
        [f] = service_figures(
            series("worker1", 50, 0.15, noise=0.02, seed=seed), 300, 1800, memory_goal=0.10
        )
        assert f.memory_ok is False, (seed, f)
    rng = random.Random(5)
    settling = [
        Sample(
            t, 0, "worker1", "worker", 7, 1, 0,
            int(MIB * (50 + 10 * (1 - math.exp(-t / 300)) + rng.gauss(0, 0.05))), 20 + t // 900,
        )
        for t in range(0, 1801, 10)
    ]  # fmt: skip
    [g] = service_figures(settling, 300, 1800, memory_goal=0.10)
    assert g.memory_ok is True
    assert g.fds_ok is False  # one more descriptor at 900 s and at 1800 s: not flat


def pooled(service: str, counts: list[tuple[int, int]], files: int = 10) -> list[Sample]:
    """Samples of a service whose descriptors are `files` descriptors that are no sockets, 10
    other sockets, and the given count of connections it opened to one peer (port 6432)."""
    return [
        Sample(
            t, 0, service, "api", 7, 1, 0, 50 * MIB, n + 10 + files,
            sockets=n + 10, peers={"6432": n},
        )
        for t, n in counts
    ]  # fmt: skip


def test_a_pool_that_opens_connections_early_is_not_descriptor_growth():
    # 24 descriptors, two more pooled connections by 15 minutes in (a pool reaching its
    # working size), then flat; the same growth in files (flat too) looks like a leak and is
    # not excused: a leak tied to events stops with them.
    counts = [(t, 4 + (t >= 400) + (t >= 900)) for t in range(0, 1801, 10)]
    [f] = service_figures(pooled("api2", counts), 300, 1800, 0.10)
    assert (f.fds_per_hour or 0) > 1  # the whole line alone would call it growth
    assert f.fds_late_per_hour == 0
    assert (f.fds_ok, f.fds_excused) == (True, "levelled off")
    files = [dataclasses.replace(x, sockets=14, peers={"6432": 4}) for x in pooled("api2", counts)]
    [g] = service_figures(files, 300, 1800, 0.10)
    assert g.fds_late_per_hour == 0
    assert "no TCP/UDP sockets" in (g.fds_change or "")
    assert (g.fds_ok, g.fds_excused) == (False, None)


def test_a_pool_that_made_no_new_high_in_the_last_half_is_met_and_a_steady_leak_is_not():
    """A pool that ratcheted up to its size in the first half of the fit, then closed an idle
    connection and opened it again (never above its size), is met and said to have levelled
    off: connections to a peer it already used, and no new high over the level it held. A
    leak of one connection to that same peer every 10 minutes in jitter of one or two either
    way, or every 5 minutes in jitter of two, is missed in every draw; so is a leak that began
    with a burst, and growth of other descriptors that stopped without its last half being
    exactly flat."""

    def size(t: int) -> int:
        # 10 at the warm-up's end, 13 by 15 minutes in; one idle connection closed for 5
        # minutes in the last half, then opened again.
        return 10 + (t >= 500) + (t >= 700) + (t >= 900) - (1200 <= t < 1500)

    ts = range(0, 1801, 10)
    [f] = service_figures(pooled("api2", [(t, size(t)) for t in ts]), 300, 1800, 0.10)
    assert (f.fds_per_hour or 0) > 1
    assert (f.fds_late_per_hour or 0) != 0  # not exactly flat: the rule before missed it
    assert (f.fds_ok, f.fds_excused) == (True, "levelled off")
    line = goals([f], latency_windows([]), SoakSettings(duration_s=1800))[1]
    assert line.ok is True
    assert line.measured == (
        "levelled off in the last half: api2 (+3: connections opened +3 (port 6432 +3), "
        "other TCP/UDP sockets +0, other descriptors +0; connection pools to peers already in use)"
    )
    assert _goals_cell(f) == "met (descriptors levelled off)"
    for seed in range(50):
        rng = random.Random(seed)
        for every_s, jitter in ((600, 1), (300, 2), (600, 2)):
            counts = [(t, 20 + t // every_s + rng.randint(-jitter, jitter)) for t in ts]
            [g] = service_figures(pooled("hub1", counts), 300, 1800, 0.10)
            assert (g.fds_ok, g.fds_excused) == (False, None), (seed, every_s, jitter)
    # The review's case: a burst of 30 at 405 s, then one more a minute (sampled every 15 s).
    burst = pooled("api1", [(t, 20 + 30 * (t >= 405) + t // 60) for t in range(0, 1801, 15)])
    [b] = service_figures(burst, 300, 1800, 0.10)
    assert (b.fds_ok, b.fds_excused) == (False, None)
    # The third review's case: a 30-second surge of 5 at 500 s sets a level the count held,
    # and a leak of one every 5 minutes grows into it by the end without a new high.
    surge = pooled("api1", [(t, 20 + t // 300 + 5 * (500 <= t < 530)) for t in ts])
    [u] = service_figures(surge, 300, 1800, 0.10)
    assert (u.fds_ok, u.fds_excused) == (False, None)
    # Files, three more by 15 minutes in, one closed and opened again in the last half.
    files = [
        dataclasses.replace(x, fds=x.fds + size(int(x.t_s)) - 10)
        for x in pooled("worker1", [(t, 10) for t in ts])
    ]
    [w] = service_figures(files, 300, 1800, 0.10)
    assert "no TCP/UDP sockets" in (w.fds_change or "")
    assert (w.fds_ok, w.fds_excused) == (False, None)


def test_a_restart_is_counted_and_the_line_goes_through_the_last_process_only():
    before = series("api3", 60, 2.0, duration_s=900, pid=1)
    after = [
        Sample(s.t_s + 910, 0, "api3", "api", 2, 1, 0, 60 * MIB, 20)
        for s in series("api3", 60, 0, duration_s=890)
    ]
    [f] = service_figures(before + after, 300, 1800, 0.10)
    assert f.restarts == 1
    assert f.memory_ok is True  # the new process is flat
    assert f.samples == len(after)


def test_samples_after_the_load_do_not_count():
    # The read-back after the fleet: memory released, descriptors closed.
    load = series("api1", 60, 0.0)
    after = [Sample(1800 + t, 0, "api1", "api", 100, 1, 0, 10 * MIB, 2) for t in range(10, 90, 10)]
    [f] = service_figures(load + after, 300, 1800, 0.10)
    assert f.memory_end_mib == pytest.approx(60, rel=0.01)
    assert f.fds_end == 20


# ---- latency windows --------------------------------------------------------------------------


def ops(duration_s: float, per_s: float, latency_s, t0: float = 1e9) -> list[Operation]:
    """Phone operations spread evenly over `duration_s`, each of latency `latency_s(t)`."""
    out = []
    n = int(duration_s * per_s)
    for i in range(n):
        t = i / per_s
        lat = latency_s(t)
        kind = ("submit", "read", "sync")[i % 3]
        out.append(Operation(f"op{i}", kind, t, t + lat, t0 + t, "ok"))
    return out


def test_long_run_windows_are_the_first_and_last_five_minutes():
    run = ops(1800, 2, lambda t: 0.010 if t < 900 else 0.030)
    w = latency_windows(run)
    assert w["window_s"] == 300
    assert w["first"]["all"]["count"] == pytest.approx(600, abs=2)
    assert w["first"]["all"]["p99_ms"] == pytest.approx(10, rel=0.01)
    assert w["last"]["all"]["p99_ms"] == pytest.approx(30, rel=0.01)
    assert w["ratio"]["all"]["p99"] == pytest.approx(3, rel=0.01)
    assert p99_ok(w, 0.20) is False


def test_a_warm_up_before_the_judged_part_is_left_out_of_every_figure():
    """With WARMUP, the growth lines start at the warm-up's end and the first latency window
    after it: a store filling and a slow start during the warm-up count for nothing, and what
    grows after it still counts."""
    s = SoakSettings(duration_s=1800, lead_s=2820)
    # etcd rising by a third until 2,800 s, flat after; api1 leaking only after the warm-up.
    etcd = [
        dataclasses.replace(x, kind="etcd", pss_bytes=int(30 * MIB * (1 + min(x.t_s, 2800) / 8400)))
        for x in series("etcd", 30, 0.0, duration_s=4620)
    ]
    api = [
        dataclasses.replace(x, pss_bytes=int(50 * MIB * (1 + max(0, x.t_s - 2820) / 3600 * 0.3)))
        for x in series("api1", 50, 0.0, duration_s=4620, seed=2)
    ]
    run = ops(4620, 2, lambda t: 0.200 if t < 2820 else 0.020)
    figures, windows, _, _ = analyse(s, etcd + api, run)
    by = {f.service: f for f in figures}
    assert by["etcd"].memory_ok is True
    assert by["etcd"].memory_start_mib == pytest.approx(40, abs=0.1)  # full at the warm-up's end
    assert by["etcd"].samples == pytest.approx(181, abs=1)  # 2,820 to 4,620 s every 10 s
    assert by["api1"].memory_ok is False
    assert by["api1"].memory_growth_per_hour == pytest.approx(0.3, rel=0.05)
    assert windows["first_start_s"] == pytest.approx(2820)
    assert windows["first"]["all"]["p99_ms"] == pytest.approx(20, rel=0.01)
    # Without the warm-up before it, the same run's slow start is the baseline.
    plain = analyse(SoakSettings(duration_s=4620), etcd + api, run)[1]
    assert plain["first"]["all"]["p99_ms"] == pytest.approx(200, rel=0.01)


def test_short_run_windows_are_fifths_and_skip_the_phones_arrival():
    # 180 s; the first 5 s are the phones arriving (slow), then steady.
    run = ops(180, 5, lambda t: 0.5 if t < 5 else 0.020)
    w = latency_windows(run, ramp_s=5)
    assert w["window_s"] == pytest.approx(35, abs=0.1)  # a fifth of 175 s
    assert w["first_start_s"] == 5
    assert w["first"]["all"]["p99_ms"] == pytest.approx(20, rel=0.01)
    assert w["ratio"]["all"]["p99"] == pytest.approx(1, rel=0.01)
    assert p99_ok(w, 0.20) is True
    # Counted from the first operation, the arrival would be the baseline.
    assert latency_windows(run)["first"]["all"]["p99_ms"] == pytest.approx(500, rel=0.01)


def test_only_the_phones_ok_operations_of_the_run_time_count():
    run = ops(200, 1, lambda t: 0.01, t0=1e9 + 2)  # Locust took 2 s to start its phones
    run.append(Operation("c", "connect", 0, 1, 1e9 + 3, "ok"))
    run.append(Operation("f", "submit", 0, 1, 1e9 + 4, "fail"))
    # From the fleet's start (before Locust's own clock), its run time.
    end = load_end_wall({"window": {"start": 1e9, "end": 1e9 + 300}}, run, 180)
    assert end == 1e9 + 180
    got = phone_ops(run, end)
    assert len(got) == 178  # the phones being stopped after it are no steady state
    assert {o.kind for o in got} == {"submit", "read", "sync"}
    assert phone_ops([]) == []
    # No fleet summary (a run cut short): from the first operation.
    assert load_end_wall(None, run, 180) == 1e9 + 182


def test_too_few_operations_to_judge_a_p99():
    w = latency_windows(ops(100, 0.2, lambda t: 0.01))
    assert w["first"]["all"]["count"] < 50
    assert p99_ok(w, 0.20) is None
    empty = latency_windows([])
    assert p99_ok(empty, 0.20) is None
    assert empty["window_s"] == 0


# ---- goals, verdict, the whole analysis -------------------------------------------------------


def test_the_verdict_weighs_missed_unjudged_and_the_fleets_own():
    s = SoakSettings(duration_s=1800)
    good = goals(
        service_figures(series("api1", 60, 0.0), 300, 1800, 0.1),
        latency_windows(ops(1800, 2, lambda t: 0.01)),
        s,
        role_changes(STEADY),
    )
    assert [g.ok for g in good] == [True, True, True, True, True]
    assert verdict(good, "pass") == "pass"
    assert verdict(good, "fail") == "fail"
    assert verdict(good, "inconclusive") == "inconclusive"
    assert verdict(good, None) == "inconclusive"  # no fleet summary: interrupted
    bad = goals(service_figures(series("api1", 60, 1.0), 300, 1800, 0.1), latency_windows([]), s)
    assert [g.ok for g in bad] == [False, True, True, None, None]  # roles never sampled
    assert "api1" in bad[0].measured
    assert verdict(bad, "pass") == "fail"


def test_services_are_every_component_the_supervisor_runs_and_each_postmaster():
    status = {
        "pid": 10,
        "components": [
            {"name": "pg0", "kind": "patroni", "pid": 11},
            {"name": "api1", "kind": "api", "pid": 12},
            {"name": "hub1", "kind": "hub", "pid": None},  # restarting: nothing to sample
        ],
    }
    got = services_of(status, lambda comp: 99 if comp["name"] == "pg0" else None)
    assert got == [
        Service("supervisor", "supervisor", 10),
        Service("pg0", "patroni", 11),
        Service("pg0/postgres", "postgres", 99),
        Service("api1", "api", 12),
    ]


@pytest.mark.parametrize(("growth", "code"), [(0.0, 0), (0.5, 1)])
def test_the_run_folder_and_the_exit_code(tmp_path: Path, growth, code):
    s = SoakSettings(duration_s=1800)
    (tmp_path / "load").mkdir()
    write_jsonl(tmp_path / "load" / "ledger.jsonl", ops(1800, 1, lambda t: 0.01))
    samples = series("api1", 60, growth) + series("redis0", 5, 0.0, seed=4)
    fleet = {"verdict": "pass", "reconciliation": {"acknowledged": 1, "lost": 0}}
    pages = []
    got = report(
        s, 21200, tmp_path, samples, fleet, [], False, Console(quiet=True),
        lambda out, url, console: pages.append(out), roles=STEADY,
        noise={"processes": 1, "cpu_s": 1700.0},
    )  # fmt: skip
    assert got == code
    assert pages == [tmp_path]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] == ("pass" if code == 0 else "fail")
    assert {f["service"] for f in summary["figures"]} == {"api1", "redis0"}
    for png in ("memory.png", "fds.png", "latency.png"):
        assert (tmp_path / png).stat().st_size > 0
    md = (tmp_path / "summary.md").read_text()
    assert "< 10% per hour" in md
    assert "p99 of phone operations" in md
    assert "Failovers with no fault injected: 0" in md
    assert "Noisy neighbour: 1 busy processes beside the fleet, 1700 CPU seconds used." in md
    assert summary["roles"]["total"] == 0


def test_a_run_folder_is_judged_again_with_another_warm_up(tmp_path: Path):
    """`--reanalyse DIR`: the same run, recorded, judged again; with `--warmup` the warm-up is
    cut there and the rest judged. Here the phones' operations took 20 ms until 2,820 s and
    40 ms after: from the start that is a p99 twice the first window's (missed); after a
    warm-up of 2,820 s, a steady 40 ms (met)."""
    from bench.soak import main

    (tmp_path / "load").mkdir()
    write_jsonl(
        tmp_path / "load" / "ledger.jsonl", ops(4620, 1, lambda t: 0.02 if t < 2820 else 0.04)
    )
    fleet = {"verdict": "pass"}
    (tmp_path / "load" / "summary.json").write_text(json.dumps(fleet))
    samples = series("api1", 60, 0.0, duration_s=4620)
    roles = [RoleSample(float(t), PG, 1, ("7300", "7301", "7302"), 6) for t in range(0, 4630, 10)]
    with (tmp_path / "samples.jsonl").open("w") as f:
        f.writelines(json.dumps(dataclasses.asdict(x)) + "\n" for x in samples)
    with (tmp_path / "roles.jsonl").open("w") as f:
        f.writelines(json.dumps(dataclasses.asdict(x)) + "\n" for x in roles)
    got = report(
        SoakSettings(duration_s=4620), 21200, tmp_path, samples, fleet, [], False,
        Console(quiet=True), lambda out, url, console: None, roles=roles,
    )  # fmt: skip
    assert got == 1
    assert json.loads((tmp_path / "summary.json").read_text())["latency"]["ratio"]["all"][
        "p99"
    ] == pytest.approx(2, rel=0.01)
    assert main(["--reanalyse", str(tmp_path)]) == 1  # the same settings: the same verdict
    assert main(["--reanalyse", str(tmp_path), "--warmup", "2820s"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["settings"]["lead_s"], summary["settings"]["duration_s"]) == (2820, 1800)
    assert summary["latency"]["first_start_s"] == pytest.approx(2820)
    assert summary["figures"][0]["samples"] == 181  # 2,820 to 4,620 s every 10 s
    assert summary["roles"]["total"] == 0
    with pytest.raises(SystemExit):
        parse_args(["--reanalyse", str(tmp_path / "nowhere")])


def test_an_interrupted_soak_still_writes_what_was_sampled(tmp_path: Path):
    s = SoakSettings(duration_s=1800)
    samples = series("api1", 60, 0.0, duration_s=600)
    got = report(
        s, 21200, tmp_path, samples, None, [], True, Console(quiet=True),
        lambda out, url, console: None,
    )  # fmt: skip
    assert got == 130
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"]
    assert summary["verdict"] == "inconclusive"
    # The load ended at the last sample: the warm-up is a fifth of what ran.
    assert summary["figures"][0]["samples"] == len([x for x in samples if x.t_s >= 120])


def test_a_failover_during_a_soak_fails_it_and_is_written_down(tmp_path: Path):
    s = SoakSettings(duration_s=1800)
    (tmp_path / "load").mkdir()
    write_jsonl(tmp_path / "load" / "ledger.jsonl", ops(1800, 1, lambda t: 0.01))
    moved = {"pg0": "replica", "pg1": "leader", "pg2": "sync_standby"}
    roles = STEADY[:10] + [RoleSample(x.t_s, moved, 2, x.redis_masters, 6) for x in STEADY[10:]]
    got = report(
        s, 21200, tmp_path, series("api1", 60, 0.0), {"verdict": "pass"}, [], False,
        Console(quiet=True), lambda out, url, console: None, roles=roles,
    )  # fmt: skip
    assert got == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    spurious = summary["goals"][-1]
    assert spurious["ok"] is False
    assert "1 leader changes" in spurious["measured"]
    md = (tmp_path / "summary.md").read_text()
    assert "- 100 s: PostgreSQL leader pg0 -> pg1" in md


def test_no_failover_counts_only_for_a_soak_sampled_throughout() -> None:
    s = SoakSettings(duration_s=1800)
    figures = service_figures(series("api1", 60, 0.0), 300, 1800, 0.1)
    windows = latency_windows(ops(1800, 2, lambda t: 0.01))
    short = goals(figures, windows, s, role_changes(STEADY[:20]))[-1]  # the first 200 s only
    assert short.ok is None
    assert "sampled 11% of the run" in short.measured
    no_redis = [RoleSample(x.t_s, x.pg_roles, x.pg_timeline) for x in STEADY]
    assert goals(figures, windows, s, role_changes(no_redis))[-1].ok is None
    assert goals(figures, windows, s, role_changes(STEADY))[-1].ok is True


def test_a_datastore_filling_its_cap_is_not_judged_and_one_growing_past_it_is_missed():
    """Redis holds 30 minutes of responses and a PostgreSQL member's backends touch more of its
    shared buffers as the run goes on: their memory alone cannot tell that from a leak. Growth
    that neither levels off nor passes the cap is not judged, and the memory goal is then
    inconclusive, never met; past the cap, missed; without a cap the slope is judged."""

    def kind(samples: list[Sample], k: str) -> list[Sample]:
        return [dataclasses.replace(x, kind=k) for x in samples]

    # PostgreSQL's own cap is gone (its shared buffers are judged as a segment, above); the
    # rule is the same for any kind given one.
    caps = {**MEMORY_CAPS_MIB, "postgres": 128.0}
    redis = kind(series("redis-7001", 8, 0.95, noise=0.005), "redis")
    big = kind(series("redis-7002", 8, 20.0, noise=0.005, seed=3), "redis")  # +80 MiB in 30 min
    pg0 = kind(series("pg0/postgres", 60, 0.9, noise=0.002, seed=4), "postgres")
    pg2 = kind(series("pg2/postgres", 60, 6.0, noise=0.002, seed=7), "postgres")  # +180 MiB
    api = series("api1", 50, 0.02, noise=0.005, seed=5)
    figures = {
        f.service: f for f in service_figures(redis + big + pg0 + pg2 + api, 300, 1800, 0.10, caps)
    }
    filling = figures["redis-7001"]
    assert (filling.memory_growth_per_hour or 0) > 0.5  # over the goal on its slope alone
    assert (filling.memory_ok, filling.memory_excused) == (None, "filling its cap")
    assert filling.memory_cap_mib == MEMORY_CAPS_MIB["redis"]
    # Counted from its first sample, warm-up included: 8 MiB x 0.95 x 0.5 h.
    assert filling.memory_capped_growth_mib == pytest.approx(3.8, abs=0.3)
    assert figures["redis-7002"].memory_ok is None  # +80 of 128 MiB: still filling
    assert figures["pg0/postgres"].memory_excused == "filling its cap"
    assert (figures["pg2/postgres"].memory_capped_growth_mib or 0) > caps["postgres"]
    assert (figures["pg2/postgres"].memory_ok, figures["pg2/postgres"].memory_excused) == (
        False,
        None,
    )
    # Without the caps, the filling one is judged on its slope, and missed.
    [alone] = service_figures(redis, 300, 1800, 0.10)
    assert alone.memory_ok is False
    settings = SoakSettings(duration_s=1800)
    memory = goals(list(figures.values()), latency_windows([]), settings)[0]
    assert memory.ok is False
    assert "over the goal: pg2/postgres" in memory.measured
    assert "not judged, still filling their caps: pg0/postgres (+27.0 of 128 MiB" in memory.measured
    assert "redis-7001 (+3.8 of 128 MiB; the whole cap in 16." in memory.measured
    assert "worst redis" not in memory.measured  # the worst of those judged
    # Nothing missed, a datastore not judged: inconclusive (the soak exits 2), not met.
    rest = [f for f in figures.values() if f.service != "pg2/postgres"]
    assert goals(rest, latency_windows([]), settings)[0].ok is None


def test_the_sampler_reads_a_process_tree_s_memory_and_descriptors():
    """PSS summed over the tree is what is judged; USS goes to samples.jsonl for a reader."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        [me] = Sampler().sample([Service("pytest", "test", os.getpid())], 0.0, 0.0)
    finally:
        child.kill()
        child.wait()
    assert me.procs >= 2  # the child is in its tree
    assert 0 < me.uss_bytes <= me.pss_bytes <= me.rss_bytes


def test_a_tree_takes_grandchildren_and_leaves_another_service_s_subtree(tmp_path: Path):
    """The tree is read from one pass over /proc (`process_table`), which must survive a
    command named with ") (", and another service's process under this one stays its own."""
    odd = tmp_path / "odd) (name"
    odd.symlink_to(shutil.which("sleep") or "/bin/sleep")
    script = f"import subprocess, sys, time; subprocess.Popen([{str(odd)!r}, '30']); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", script])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    grandchild: list[int] = []
    try:
        grandchild = poll(lambda: process_table().children.get(child.pid), 10, "the grandchild")
        assert psutil.Process(grandchild[0]).name() == "odd) (name"
        table = process_table()
        assert other.pid in table.children[os.getpid()]
        # Start times in clock ticks since boot, as the kernel keeps them: the clock's steps
        # leave them be, and a child never starts before its parent.
        assert table.started[grandchild[0]] >= table.started[child.pid] >= table.started[1]
        services = [Service("pytest", "test", os.getpid()), Service("other", "test", other.pid)]
        samples = {x.service: x for x in Sampler().sample(services, 0.0, 0.0)}
    finally:
        for p in (child, other):
            p.kill()
            p.wait()
        for pid in grandchild:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # Itself, the child and the grandchild at least; the other service's process not.
    assert samples["pytest"].procs >= 3
    assert samples["other"].procs == 1


def test_the_sampler_counts_a_tree_s_sockets_by_what_they_are():
    """Connections the process opened are counted by the peer's port; a connection it
    accepted is not one of them; a socket whose peer closed it, kept open, is half-closed.
    Counted as changes from a sample before, whatever else this process holds."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    sampler, me_svc = Sampler(), Service("pytest", "test", os.getpid())
    opened: list[socket.socket] = []
    accepted: list[socket.socket] = []
    try:
        [before] = sampler.sample([me_svc], 0.0, 0.0)
        opened += [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        accepted += [server.accept()[0] for _ in opened]
        [both] = sampler.sample([me_svc], 0.0, 0.0)
        assert both.peers.get(str(port)) == 2  # the two opened, not the two accepted
        assert str(opened[1].getsockname()[1]) not in both.peers  # accepted[1]'s peer
        assert both.sockets - before.sockets >= 4  # two opened, two accepted
        accepted[0].close()  # the peer of opened[0] closes; opened[0] keeps its end
        me = poll(
            lambda: (
                (x := sampler.sample([me_svc], 0.0, 0.0)[0]).half_closed > before.half_closed and x
            ),
            5,
            "the closed end's FIN to arrive",
            0.01,
        )
        assert me.half_closed - before.half_closed == 1
        assert me.peers.get(str(port)) == 1  # opened[0] is no longer established
        assert me.sockets <= me.fds
    finally:
        for sock in [*opened, *accepted, server]:
            sock.close()


def test_the_sampler_names_the_client_of_each_connection_a_service_accepted():
    """An accepted connection is counted by the sampled service holding its other end, or as
    from outside when no sampled service holds it; the client's own count is of a peer."""
    child = subprocess.Popen(
        [
            sys.executable, "-c",
            "import socket, sys, time\n"
            "s = socket.create_server(('127.0.0.1', 0))\n"
            "print(s.getsockname()[1], flush=True)\n"
            "held = [s.accept()[0] for _ in range(2)]\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    sampler = Sampler()
    me, server = Service("pytest", "test", os.getpid()), Service("server", "redis", child.pid)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]

        def both_accepted() -> list[Sample] | None:
            xs = sampler.sample([me, server], 0.0, 0.0)
            return xs if sum(xs[1].accepted.values()) == 2 else None

        mine, theirs = poll(both_accepted, 10, "the child to accept both connections", 0.02)
        assert theirs.accepted == {"pytest": 2}
        assert mine.peers.get(str(port)) == 2
        assert "server" not in mine.accepted  # the child's sockets are its own, not pytest's
        [alone] = sampler.sample([server], 0.0, 0.0)
        assert alone.accepted == {OUTSIDE: 2}  # pytest is not sampled: its end is outside
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
        for c in locals().get("conns", []):
            c.close()


def test_two_clients_sharing_a_local_port_are_told_apart():
    """Linux gives one local port to connections to different destinations: the client's
    address alone names two sockets, and each accepted connection must still be credited to
    the process that holds its own other end."""
    server_code = (
        "import socket, time\n"
        "ls = [socket.create_server(('127.0.0.1', 0)) for _ in range(2)]\n"
        "print(*[l.getsockname()[1] for l in ls], flush=True)\n"
        "held = [l.accept()[0] for l in ls]\n"
        "time.sleep(60)\n"
    )
    client_code = (
        "import socket, sys, time\n"
        "c = socket.socket()\n"
        "c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "c.bind(('127.0.0.1', int(sys.argv[1])))\n"
        "c.connect(('127.0.0.1', int(sys.argv[2])))\n"
        "print('connected', flush=True)\n"
        "time.sleep(60)\n"
    )
    procs: list[subprocess.Popen[str]] = []
    mine = socket.socket()
    try:
        procs.append(
            subprocess.Popen([sys.executable, "-c", server_code], stdout=subprocess.PIPE, text=True)
        )
        assert procs[0].stdout is not None
        first, second = map(int, procs[0].stdout.readline().split())
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        mine.bind(("127.0.0.1", 0))
        shared = mine.getsockname()[1]
        mine.connect(("127.0.0.1", first))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", client_code, str(shared), str(second)],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        assert procs[1].stdout is not None
        assert procs[1].stdout.readline().strip() == "connected"
        services = [
            Service("server", "redis", procs[0].pid),
            Service("pytest", "test", os.getpid()),
            Service("client2", "worker", procs[1].pid),
        ]
        sampler = Sampler()

        def accepted_both() -> Sample | None:
            server = sampler.sample(services, 0.0, 0.0)[0]
            return server if sum(server.accepted.values()) == 2 else None

        server = poll(accepted_both, 10, "the server to accept both connections", 0.02)
        assert server.accepted == {"pytest": 1, "client2": 1}
    finally:
        mine.close()
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def test_a_server_whose_clients_pools_grew_is_met_and_one_accepting_a_leak_is_not():
    """A Redis node whose accepted connections from the fault proxy (already connected) rose
    by six early on and then held, with a pipe open for a moment at some samples (Redis's to a
    snapshotting child), is met: its clients' pools, levelled off. The same growth from
    outside is not told apart, and a steady rise of accepted connections is missed."""

    def node(accepted_at, pipe_at=lambda t: 0, client="faultproxy"):
        out = []
        for t in range(0, 3601, 10):
            n = accepted_at(t)
            out.append(
                Sample(
                    t, 0, "redis0", "redis", 9, 1, 0, 10 * MIB, 8 + n + 5 + pipe_at(t),
                    sockets=n + 5, peers={"17150": 5}, accepted={client: n},
                )
            )  # fmt: skip
        return out

    def pool(t: int) -> int:
        return 24 + min(6, max(0, (t - 300) // 120))

    def pipe(t: int) -> int:
        return int(t % 470 < 10)  # one sample in 47 holds a pipe

    [f] = service_figures(node(pool, pipe), 300, 3600, 0.10)
    assert (f.fds_per_hour or 0) > 1
    assert (f.fds_late_per_hour or 0) != 0  # not exactly flat: a pipe now and then
    assert (f.fds_ok, f.fds_excused) == (True, "levelled off")
    assert (f.fds_change or "").startswith(
        "+6: connections opened +0, accepted +6 (faultproxy +6), other TCP/UDP sockets +0"
    )
    assert (f.fds_change or "").endswith(POOL_GROWTH)
    [g] = service_figures(node(pool, pipe, client=OUTSIDE), 300, 3600, 0.10)
    assert (g.fds_ok, g.fds_excused) == (False, None)
    assert "not told apart" in (g.fds_change or "")
    [h] = service_figures(node(lambda t: 24 + t // 600, pipe), 300, 3600, 0.10)
    assert (h.fds_ok, h.fds_excused) == (False, None)
    # A client that had no connection at the window's start is no pool already in use.
    fresh = [
        dataclasses.replace(x, accepted={"faultproxy": 24, "worker9": x.sockets - 5 - 24})
        for x in node(pool, pipe)
    ]
    [n] = service_figures(fresh, 300, 3600, 0.10)
    assert "worker9 +6" in (n.fds_change or "")
    assert (n.fds_ok, n.fds_excused) == (False, None)
    # The pipe held at the last samples is no growth; held at the first sample, it does not
    # hide a file kept from the 2000th second on.
    [e] = service_figures(node(pool, lambda t: int(t >= 3590)), 300, 3600, 0.10)
    assert (e.fds_ok, e.fds_excused) == (True, "levelled off")
    masked = node(pool, lambda t: int(300 <= t < 310) + int(t >= 2000))
    assert masked[30].fds - masked[30].sockets == masked[-1].fds - masked[-1].sockets
    [m] = service_figures(masked, 300, 3600, 0.10)
    assert "more descriptors that are no TCP/UDP sockets" in (m.fds_change or "")
    assert (m.fds_ok, m.fds_excused) == (False, None)
    # Samples whose socket tables could not be read (sockets 0) set no level and no mean.
    unread = [
        dataclasses.replace(x, sockets=0, peers={}, accepted={}, sockets_read=False)
        if 1950 <= x.t_s <= 2600
        else x
        for x in node(pool, pipe)
    ]
    [u] = service_figures(unread, 300, 3600, 0.10)
    assert (u.fds_ok, u.fds_excused) == (True, "levelled off")


def test_phones_that_left_make_no_room_for_half_closed_sockets():
    """The review's case: twelve phones leave early, ten sockets are kept half-closed from then
    on. Fewer descriptors at the end than at the start, but a leak's sign, which is said (the
    goal judges the count, which fell); the same fall without them is no more than at the
    start."""

    def gateway(kept: int) -> list[Sample]:
        out = []
        for t in range(0, 1801, 10):
            phones = 40 - 12 * (t >= 600)
            half = kept * (t >= 600)
            held = phones + half
            out.append(
                Sample(
                    t, 0, "gateway", "gateway", 9, 1, 0, 40 * MIB, 10 + held + 20,
                    sockets=held + 20, half_closed=half, accepted={OUTSIDE: held},
                )
            )  # fmt: skip
        return out

    [f] = service_figures(gateway(10), 300, 1800, 0.10)
    assert "10 more half-closed (CLOSE_WAIT)" in (f.fds_change or "")
    [g] = service_figures(gateway(0), 300, 1800, 0.10)
    assert (g.fds_change or "").endswith("no more than at the start")


def test_phones_leaving_as_fast_as_a_pool_leaks_do_not_hide_the_leak():
    """The second review's case: a pool leaks steadily from 5 to 25 connections over the hour
    while phones leave in step with it in the last half, so the total is flat there: the
    excuses look at the parts that grew, which still rise."""

    def api(leak: bool) -> list[Sample]:
        out = []
        for t in range(300, 3901, 10):
            pool = 5 + round(20 * (t - 300) / 3600) if leak else 5 + 10 * (t >= 900)
            phones = 40 if t < 2100 else 40 - round(10 * (t - 2100) / 1800)
            if not leak:
                phones = 40
            sockets = pool + phones + 5
            out.append(
                Sample(
                    t, 0, "api1", "api", 9, 1, 0, 40 * MIB, 10 + sockets, sockets=sockets,
                    peers={"7000": pool}, accepted={OUTSIDE: phones},
                )
            )  # fmt: skip
        return out

    [f] = service_figures(api(True), 300, 3900, 0.10)
    assert f.fds_late_per_hour is not None
    assert abs(f.fds_late_per_hour) < 1  # the total is about flat in the last half
    assert (f.fds_ok, f.fds_excused) == (False, None)
    [g] = service_figures(api(False), 300, 3900, 0.10)  # a pool that stopped at 15
    assert (g.fds_ok, g.fds_excused) == (True, "levelled off")
    # The third review's case: one pool (Redis) leaks from 5 to 25 over the hour while another
    # (PostgreSQL), which rose from 10 to 40 early, eases back to 20 in the last half: both grew,
    # and their sum makes no new high, but the leaking one does.
    two = []
    for t in range(300, 3901, 10):
        redis = 5 + round(20 * (t - 300) / 3600)
        pg = min(40, 10 + (t - 300) // 20) if t < 2100 else 40 - round(20 * (t - 2100) / 1800)
        sockets = redis + pg + 45
        two.append(
            Sample(
                t, 0, "api1", "api", 9, 1, 0, 40 * MIB, 10 + sockets, sockets=sockets,
                peers={"7000": redis, "5432": pg}, accepted={OUTSIDE: 40},
            )
        )  # fmt: skip
    [h] = service_figures(two, 300, 3900, 0.10)
    assert (h.fds_ok, h.fds_excused) == (False, None)


def test_phones_that_left_make_no_room_for_sockets_not_told_apart():
    """A gateway that lost two phones, took two pooled connections from worker1 and two
    sockets in other states: the fall of one part does not pay for another's growth."""
    first = Sample(
        0, 0, "gateway", "gateway", 9, 1, 0, MIB, 40, sockets=30,
        accepted={OUTSIDE: 20, "worker1": 2},
    )  # fmt: skip
    last = dataclasses.replace(first, fds=42, sockets=32, accepted={OUTSIDE: 18, "worker1": 4})
    line = descriptor_change(first, last, {})
    assert "accepted +0 (outside -2, worker1 +2), other TCP/UDP sockets +2" in line
    assert not line.endswith(POOL_GROWTH)
    pooled = dataclasses.replace(last, accepted={OUTSIDE: 20, "worker1": 4})  # phones stayed
    assert descriptor_change(first, pooled, {}).endswith(POOL_GROWTH)


def test_peer_names_give_every_port_of_the_topology_one_name():
    names = peer_names(17000, members=3, redis_nodes=6)
    assert names[17000 + 184] == "redis0 via the fault proxy"  # proxy_redis(0), not a pg link
    assert names[17000 + 175 + 2] == "pg2 via the fault proxy"
    assert names[17000 + 50 + 5] == "redis5"
    assert len(set(names.values())) == len(names)  # no listener named twice
    # None lost to a port two listeners would share: 16 singletons, 3 per member, 2 per node,
    # and every service slot.
    assert len(names) == 16 + 3 * 3 + 2 * 6 + sum(SERVICE_SLOTS.values())


def test_where_the_descriptors_went_tells_a_pool_from_a_leak():
    names = peer_names(17000)
    redis = 17000 + 184 + 1  # redis1 through the fault proxy
    first = Sample(0, 0, "api2", "api", 7, 1, 0, MIB, 24, sockets=14, peers={str(redis): 2})
    pool = dataclasses.replace(first, fds=26, sockets=16, peers={str(redis): 4})
    line = descriptor_change(first, pool, names)
    assert line.startswith("+2: connections opened +2 (redis1 via the fault proxy +2)")
    assert line.endswith("connection pools to peers already in use")
    kept = dataclasses.replace(pool, half_closed=2)
    assert "looks like a leak: 2 more half-closed (CLOSE_WAIT)" in descriptor_change(
        first, kept, names
    )
    # Half-closed sockets that were there from the start are no new sign.
    steady = dataclasses.replace(first, half_closed=1)
    assert descriptor_change(steady, dataclasses.replace(pool, half_closed=1), names).endswith(
        "connection pools to peers already in use"
    )
    files = dataclasses.replace(first, fds=30)
    files_line = descriptor_change(first, files, names)
    assert "other descriptors +6" in files_line
    assert "more descriptors that are no TCP/UDP sockets" in files_line
    fewer = dataclasses.replace(first, fds=14, sockets=8, peers={})
    assert descriptor_change(first, fewer, names).endswith("; no more than at the start")
    # Fewer in all, but two more files: a sign is said whatever else fell.
    files_kept = dataclasses.replace(first, fds=20, sockets=8, peers={})
    assert "more descriptors that are no TCP/UDP sockets" in descriptor_change(
        first, files_kept, names
    )
    unread = dataclasses.replace(pool, sockets=0, peers={}, sockets_read=False)
    assert descriptor_change(first, unread, names).endswith(
        "sockets not read in the first or the last sample"
    )
    new_peer = dataclasses.replace(pool, peers={str(redis): 2, "40000": 2})
    assert "connections to peers it had none to" in descriptor_change(first, new_peer, names)
    assert "port 40000 +2" in descriptor_change(first, new_peer, names)
    # Fifty accepted sockets and one pooled connection: not a pool, and not called one.
    accepted = dataclasses.replace(first, fds=74, sockets=64, peers={str(redis): 3})
    mixed = descriptor_change(first, accepted, names)
    assert "other TCP/UDP sockets +49" in mixed
    assert mixed.endswith(
        "not told apart: sockets accepted from outside or from new clients, or in other states"
    )
    # service_figures says it for a service whose count changed, and the goal line carries it.
    series = [
        dataclasses.replace(first, t_s=t, fds=24 + t // 300, sockets=14 + t // 300)
        for t in range(0, 1801, 10)
    ]
    [f] = service_figures(series, 300, 1800, 0.10, peer_names=names)
    assert f.fds_ok is False
    assert f.fds_change is not None
    assert f.fds_change.startswith("+5: connections opened +0, other TCP/UDP sockets +5")
    line = goals([f], latency_windows([]), SoakSettings(duration_s=1800))[1].measured
    assert line.startswith("growing: api2 (+5: connections opened +0")


def test_the_live_view_shows_what_is_judged_from_the_judged_part_on():
    """The live view shows a PostgreSQL member's memory outside its shared buffers and its
    descriptors without relation files, against its first sample of the phase: a standby
    touching buffers and opening relation files reads flat, as the figures will judge it."""
    s = SoakSettings(duration_s=1800, lead_s=600)

    def pg(t: float, touched_mib: int, relations: int) -> Sample:
        return Sample(
            t,
            1e9 + t,
            "pg1/postgres",
            "postgres",
            7,
            9,
            200 * MIB,
            (30 + touched_mib) * MIB,
            100 + relations,
            shm_pss_bytes=touched_mib * MIB,
            shm_bytes=144 * MIB,
            relation_files=relations,
        )

    def shown(now: Sample, first: Sample, t_s: float) -> str:
        console = Console(width=140, record=True)
        console.print(live_view([now], t_s, s, {now.service: first}))
        return console.export_text()

    def cells(text: str) -> list[str]:
        row = next(line for line in text.splitlines() if "postgres" in line)
        return [c.strip() for c in row.split("│")][2:-1]

    flat = shown(pg(1200, 90, 400), pg(600, 20, 100), 1200)
    assert cells(flat) == ["1", "30.0", "+0.0%", "100", "+0"]
    assert "since judged" in flat
    assert "(load)" in flat
    # A leak of its own memory and of other descriptors still shows.
    leak = pg(1200, 90, 400)
    leak = dataclasses.replace(leak, pss_bytes=leak.pss_bytes + 3 * MIB, fds=leak.fds + 5)
    assert cells(shown(leak, pg(600, 20, 100), 1200)) == ["1", "33.0", "+10.0%", "105", "+5"]
    assert "since warm-up" in shown(pg(300, 20, 100), pg(0, 0, 0), 300)
