"""A fleet across machines: Locust's master here, its workers in network namespaces of their own
(their own network stack, their own working directory, no folder shared with the master), one
worker killed mid-run and started again. Every record reaches the master as Locust messages
(scenarios/shipping.py); the merge must be exact and nothing acknowledged lost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from env.local import LocalEnvironment
from env.process import DeadlineExceeded, wait_until
from scenarios.latency import LatencyRecorder
from scenarios.shipping import file_part
from slo.ledger import read_jsonl
from tests.helpers import Background, finish_fleet, fleet_in_background, wait_healthy
from tests.netns import Namespace, namespaces

pytestmark = pytest.mark.env

ROOT = Path(__file__).resolve().parents[2]
USERS, DURATION_S, SPAWN_RATE = 12, 80, 6
#: Records are shipped every second; this is long enough for both workers' first batches.
FIRST_RECORDS_S = 40.0


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _worker(
    ns: Namespace, master: Namespace, master_port: int, out: Path, status: dict[str, Any]
) -> subprocess.Popen[bytes]:
    """`cwh load --worker` inside `ns`, with the run's settings (they must equal the master's)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = ns.command(
        sys.executable, "-m", "cwh.cli", "load", "--worker",
        "--master-host", master.host_addr, "--master-port", str(master_port),
        "--workers", "2", "--users", str(USERS), "--duration", str(DURATION_S),
        "--spawn-rate", str(SPAWN_RATE), "--shape", "steady",
        "--ca-file", status["tls_certificate"],
        # One argument with its value: a secret may start with "-" (one in 64 did before
        # secrets were drawn without), which argparse takes for an option.
        f"--registration-secret={status.get('registration_secret') or ''}",
        "--out", str(out),
    )  # fmt: skip
    with open(out / "worker.log", "ab") as log:  # the process keeps its own descriptor
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _ledgers(reports: Path) -> dict[str, int]:
    """The master's ledgers so far: source file part -> operations."""
    return {
        p.stem.removeprefix("ledger-"): len(p.read_text().splitlines())
        for p in reports.glob("*-load/fleet/ledger-*.jsonl")
    }


def _source(folder: Path) -> str | None:
    """The source a worker's folder says it is (its Locust id, what the master's files name)."""
    path = folder / "fleet" / "source"  # `cwh load --worker --out` keeps its state in fleet/
    return path.read_text() if path.exists() else None


def _shipped(reports: Path, folder: Path) -> int:
    source = _source(folder)
    return _ledgers(reports).get(file_part(source), 0) if source else 0


def _await_records(
    master: Path, root: Path, run: Background, workers: dict[str, subprocess.Popen[bytes]],
    names: tuple[str, ...], least: int, what: str,
) -> None:  # fmt: skip
    """Until every worker in `names` has `least` records at the master; a worker or the master
    that ends meanwhile fails at once. Either failure shows the workers' own logs (the master's
    output is captured by pytest; theirs would otherwise be lost with the temporary folder)."""

    def ended() -> list[str]:
        gone = [name for name in names if workers[name].poll() is not None]
        return gone + ["the master"] * (not run.thread.is_alive())

    def done() -> list[str] | bool:
        return ended() or min(_shipped(master, root / name) for name in names) >= least

    def tail(name: str) -> str:
        try:
            lines = (root / name / "worker.log").read_text(errors="replace").splitlines()
        except OSError as exc:  # the failure being reported matters more than one log
            return f"(not read: {exc!r})"
        return "\n".join(lines[-30:])

    def logs() -> str:
        counts = {name: _shipped(master, root / name) for name in names}
        tails = "".join(
            f"\n--- {name} (exit {workers[name].poll()}), worker.log:\n{tail(name)}"
            for name in names
        )
        master_error = f"; the master's error: {run.got['error']!r}" if "error" in run.got else ""
        return f"records at the master: {counts}{master_error}{tails}"

    try:
        wait_until(done, FIRST_RECORDS_S, what)
    except DeadlineExceeded as exc:
        raise AssertionError(f"{exc}; {logs()}") from exc
    if gone := ended():
        pytest.fail(f"{what}: {', '.join(gone)} ended first; {logs()}")


def _stop_master(master: Path) -> None:
    """The master's Locust, stopped (SIGTERM: it quits, and its run is reconciled), so that a
    test that failed does not wait for it to give up on its workers (300 s) when it leaves the
    fleet's block."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "locust" in cmd and any(str(master) in arg for arg in cmd):
            with contextlib.suppress(psutil.Error):
                proc.terminate()


@pytest.fixture(scope="module")
def distributed_run(local_env: LocalEnvironment, tmp_path_factory: pytest.TempPathFactory):
    status = wait_healthy(local_env)
    base = local_env.settings.base_port
    https_port = urlsplit(status["urls"]["https"]).port
    assert https_port is not None
    root = tmp_path_factory.mktemp("distributed")
    master = root / "master"
    with namespaces(f"cwhf{base}", 2, third_octet=(base // 100) % 250) as spaces:
        spaces.forward(https_port)
        first, second = spaces.items
        master_port = _free_port(first.host_addr)
        workers: dict[str, subprocess.Popen[bytes]] = {}
        events: dict[str, Any] = {}
        try:
            with fleet_in_background(
                status,
                master,
                role="master",
                workers=2,
                master_bind_host=first.host_addr,
                master_port=master_port,
                users=USERS,
                duration_s=DURATION_S,
                spawn_rate=SPAWN_RATE,
                shape="steady",
            ) as run:
                try:
                    started = time.time()
                    workers["w1"] = _worker(first, first, master_port, root / "w1", status)
                    workers["w2"] = _worker(second, first, master_port, root / "w2", status)
                    # Mid-run: both have shipped several batches.
                    _await_records(
                        master, root, run, workers, ("w1", "w2"), 20,
                        "both workers' first records at the master",
                    )  # fmt: skip
                    # w1 dies (SIGKILL: no goodbye, its last second of records with it).
                    victim = workers["w1"]
                    os.killpg(victim.pid, signal.SIGKILL)
                    # The fault really happened: the worker and its Locust process are gone.
                    assert victim.wait(timeout=10) == -signal.SIGKILL
                    wait_until(
                        lambda: _group_gone(victim.pid), 10, "the killed worker's processes gone"
                    )
                    events.update(killed_at=time.time(), killed=_source(root / "w1"))
                    # Early enough that the restarted worker has most of the run left.
                    assert events["killed_at"] - started < DURATION_S / 2
                    workers["w1-again"] = _worker(
                        first, first, master_port, root / "w1-again", status
                    )
                    _await_records(
                        master, root, run, workers, ("w1-again",), 10,
                        "the restarted worker's records at the master",
                    )  # fmt: skip
                    # w2 is stopped as a pod is deleted (SIGTERM): its phones stop, its last
                    # records arrive, it says goodbye; nothing of it may be lost.
                    workers["w2"].terminate()
                    assert workers["w2"].wait(timeout=90) == 130
                    events.update(stopped=_source(root / "w2"))
                    # The test has what it needs: the run ends now, not at its bound (the
                    # master's shape stops the phones and the run is reconciled whole).
                    finish_fleet(master, "w2 stopped, the restarted worker shipping")
                except BaseException:
                    _stop_master(master)  # else leaving the block waits for it up to 300 s
                    raise
            code, out, summary = run.result()
            # The last worker ends when the master tells it to quit.
            workers["w1-again"].wait(timeout=60)
            yield code, out, summary, events, root
        finally:
            for w in workers.values():
                if w.poll() is None:
                    _stop(w)


def test_nothing_acknowledged_was_lost_and_the_run_passed(distributed_run) -> None:
    code, _out, summary, *_ = distributed_run
    rec = summary["reconciliation"]
    assert (rec["lost"], rec["duplicated"], rec["unknown"]) == (0, 0, 0), rec
    assert (code, summary["verdict"]) == (0, "pass"), summary["fleet"]
    assert summary["operations"]["submit"]["ok"] > 0


def test_the_killed_worker_is_reported_lost_and_the_others_complete(distributed_run) -> None:
    _, _out, summary, events, _root = distributed_run
    sources = summary["fleet"]["sources"]
    assert len(sources) == 3, sources
    lost = [name for name, s in sources.items() if s["lost"]]
    assert lost == [events["killed"]]
    assert not sources[events["killed"]]["complete"]
    assert sources[events["killed"]]["operations"] > 0
    assert summary["fleet"]["errors"] == []
    assert len(summary["fleet"]["warnings"]) == 1
    # The stopped worker said goodbye: departed, complete, not lost.
    stopped = sources[events["stopped"]]
    assert (stopped["departed"], stopped["complete"], stopped["lost"]) == (True, True, False)


def test_every_record_a_surviving_worker_made_reached_the_master(distributed_run) -> None:
    """Compared with what each worker counted itself (in its own folder), not with the master's
    own files: the stopped worker and the restarted one, complete to the operation."""
    _, _out, summary, _events, root = distributed_run
    sources = summary["fleet"]["sources"]
    for worker in ("w2", "w1-again"):
        recorded = json.loads((root / worker / "fleet" / "recorded.json").read_text())
        assert recorded["source"] == _source(root / worker)
        got = sources[recorded["source"]]
        assert got["operations"] == recorded["operations"] > 0, (worker, got, recorded)
        assert got["late_operations"] == 0


def test_the_restarted_workers_records_are_in(distributed_run) -> None:
    _, out, summary, events, root = distributed_run
    restarted = summary["fleet"]["sources"][_source(root / "w1-again")]
    ops = read_jsonl(out / "fleet" / f"ledger-{restarted['file']}.jsonl")
    assert len(ops) == restarted["operations"] > 0
    assert any(o.kind == "submit" and o.outcome == "ok" for o in ops)
    assert min(o.invoked_wall for o in ops) >= events["killed_at"] - 1


def test_the_merge_is_exact(distributed_run) -> None:
    _, out, _summary, *_ = distributed_run
    merged = read_jsonl(out / "ledger.jsonl")
    parts = [read_jsonl(p) for p in sorted((out / "fleet").glob("ledger-*.jsonl"))]
    assert sorted(o.op_id for o in merged) == sorted(o.op_id for part in parts for o in part)
    assert len({o.op_id for o in merged}) == len(merged)
    total = LatencyRecorder()
    for path in sorted((out / "fleet").glob("hdr-*.json")):
        encoded = json.loads(path.read_text())
        one = LatencyRecorder()
        one.add_encoded(encoded)
        total.add_encoded(encoded)
        # Each source's histograms hold exactly its shipped ledger's measured submits.
        ledger = read_jsonl(
            path.with_name(path.name.replace("hdr-", "ledger-", 1).replace(".json", ".jsonl"))
        )
        submits = sum(1 for o in ledger if o.kind == "submit" and o.outcome == "ok")
        counts = one.summary()
        assert (
            sum(counts.get(k, {}).get("count", 0) for k in ("submit", "submit (ramp-up)"))
            == submits
        )
    hdr = json.loads((out / "hdr-percentiles.json").read_text())
    assert {k: v["count"] for k, v in hdr.items()} == {
        k: v["count"] for k, v in total.summary().items()
    }
    assert Counter(o.kind for o in merged if o.outcome == "ok")["submit"] == sum(
        v["count"] for k, v in hdr.items() if k.startswith("submit")
    )


def test_no_folder_was_shared(distributed_run) -> None:
    _, out, _summary, _, root = distributed_run
    for worker_dir in ("w1", "w2", "w1-again"):
        names = {p.name.split("-")[0] for p in (root / worker_dir).rglob("*") if p.is_file()}
        # A worker keeps only its phones' own state, which source it is and what it counted;
        # its records went to the master.
        assert names <= {"phones", "worker.log", "source", "recorded.json"}, names
    idents = {}
    for path in (out / "fleet").glob("identities-*.jsonl"):
        idents.update({json.loads(line)[0]: 1 for line in path.read_text().splitlines()})
    ops = read_jsonl(out / "ledger.jsonl")
    devices = {(o.detail or {}).get("device_id") for o in ops if o.kind == "submit"}
    assert devices
    assert devices <= set(idents)
