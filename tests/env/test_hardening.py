"""Secrets hygiene and control planes on the running environment: no secret on a command line,
services not running as root where they need not, ciphertext only in Redis, control planes on
loopback that refuse what a browser could send."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from env import probes
from env.configs import cluster_name
from env.local import LocalEnvironment
from env.probes import RedisCredentials
from env.process import processes_of
from tests.helpers import poll, port_of, query, redis_credentials, wait_healthy
from tests.phone import Phone

pytestmark = pytest.mark.env

BROWSER = {
    "User-Agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36"
    ),
    "Origin": "https://evil.example",
    "Sec-Fetch-Site": "cross-site",
}


def _secrets(run_dir: Path) -> list[str]:
    values = json.loads((run_dir / "secrets.json").read_text()).values()
    return [v for v in values if isinstance(v, str) and len(v) >= 8]


class CmdlineWatch(threading.Thread):
    """Reads every process's command line on the machine, over and over, until stopped:
    catches short-lived subprocesses (pgbackrest, redis-cli) too."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(daemon=True)
        self.secrets = [s.encode() for s in secrets]
        self.leaks: dict[int, str] = {}
        self.seen: set[str] = set()
        self.sweeps = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    raw = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if raw:
                    argv = raw.decode(errors="replace").split("\0")
                    name = os.path.basename(argv[0])
                    self.seen.add(name)
                    # pgBackRest's servers always run: its commands tell a backup apart.
                    if name == "pgbackrest":
                        self.seen |= {f"pgbackrest {a}" for a in argv[1:] if a[:1].isalpha()}
                if any(s in raw for s in self.secrets):
                    self.leaks[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace")
            self.sweeps += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


@pytest.mark.fault
def test_no_secret_on_any_command_line_even_while_a_backup_runs(
    local_env: LocalEnvironment,
) -> None:
    status = wait_healthy(local_env)
    run_dir = Path(status["run_dir"])
    secrets = _secrets(run_dir)
    assert len(secrets) >= 4
    # Every process of the environment, as it runs.
    mine = processes_of(run_dir)
    assert len(mine) > 20
    leaks = {p.pid: p.cmdline for p in mine if any(s in p.cmdline for s in secrets)}
    assert leaks == {}, f"secrets on command lines: {leaks}"

    # A new leading scheduler takes a backup at once when one is due (the last recorded
    # backup older than the interval): watch pgBackRest's command lines (the scheduler's, the
    # servers' and the archive commands').
    def labels() -> set[str]:
        return {b["label"] for b in local_env.backups()}

    # The first leader's backup done first: killed mid-backup, it would leave none recorded.
    primary = status["urls"]["members"][status["primary"]]
    poll(
        lambda: query(primary, "SELECT 1 FROM periodic_runs WHERE job = 'backup'"),
        120,
        "the first backup recorded in the run log",
    )
    before = labels()
    assert before
    # Recorded two intervals ago: due for whoever leads next (it reads the run log).
    query(
        primary,
        "UPDATE periodic_runs SET started_at = started_at - interval '2 hours'"
        " WHERE job = 'backup'",
    )
    leader = next(c for c in status["components"] if c["role"] == "scheduler (leader)")
    watch = CmdlineWatch(secrets)
    watch.start()
    try:
        os.kill(leader["pid"], signal.SIGKILL)
        # In the repository, whether recorded or not (a lease lost meanwhile fences the record).
        poll(lambda: labels() - before, 180, "a backup by the new leader")
    finally:
        watch.stop()
    assert watch.sweeps > 10
    assert "pgbackrest backup" in watch.seen, "the backup ran while watched"
    assert watch.leaks == {}, f"secrets on command lines: {watch.leaks}"
    wait_healthy(local_env)


def test_every_file_holding_a_secret_in_the_run_dir_is_private(
    local_env: LocalEnvironment,
) -> None:
    """What the components wrote while running too (pgpass files, logs): a secret is only in
    files no other user reads."""
    status = wait_healthy(local_env)
    run_dir = Path(status["run_dir"])
    secrets = [s.encode() for s in _secrets(run_dir)]
    holding: dict[str, str] = {}
    for path in run_dir.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        if path.stat().st_size > 2_000_000 and path.parent.name != "logs":
            continue  # data files (WAL, AOF, TSDB chunks, backups)
        if any(s in path.read_bytes() for s in secrets):
            holding[str(path.relative_to(run_dir))] = path.stat().st_mode
    assert "secrets.json" in holding, holding
    assert any(p.endswith("pgpass") for p in holding), holding  # written by Patroni
    # 0600, or 0640 where a group must read: nothing for others, no group write.
    loose = {p: stat.filemode(m) for p, m in holding.items() if m & 0o037}
    assert loose == {}, f"secrets readable by others: {loose}"


def _uids(pid: int) -> tuple[int, str]:
    proc = psutil.Process(pid)
    return proc.uids().real, proc.username()


def test_services_do_not_run_as_root_where_they_need_not(local_env: LocalEnvironment) -> None:
    status = wait_healthy(local_env)
    sup = local_env.supervisor_status()
    assert sup is not None
    service_user = local_env.settings.service_os_user
    cwh = pwd.getpwnam(service_user).pw_uid
    postgres = pwd.getpwnam(local_env.settings.pg_os_user).pw_uid
    python_as_root = set(sup["runs_as_root"])
    wrong = {}
    for comp in sup["components"]:
        if comp["pid"] is None:
            continue
        uid, user = _uids(comp["pid"])
        if comp["kind"] in ("patroni", "pgbouncer", "pgbackrest_pg"):
            expected = postgres
        elif comp["kind"] == "haproxy":
            # The master keeps root to re-bind on reload; the workers that carry traffic drop it.
            children = psutil.Process(comp["pid"]).children()
            assert children, "haproxy has a worker"
            wrong.update(
                {f"haproxy worker {c.pid}": c.username() for c in children if c.uids().real != cwh}
            )
            continue
        elif comp["name"] in python_as_root:
            expected = 0
        else:
            expected = cwh
        if uid != expected:
            wrong[comp["name"]] = user
    assert wrong == {}, f"running as the wrong user: {wrong}"
    # Every component that stays root for a reason says so, in the log and in `cwh env status`.
    for name in python_as_root:
        assert any(name in w for w in status["warnings"]), status["warnings"]
    assert set(python_as_root) <= {"faultproxy", *(c["name"] for c in sup["components"])}
    # The postmasters Patroni starts.
    for row in status["components"]:
        if row["kind"] == "postgresql" and row["postgres_pid"]:
            assert _uids(row["postgres_pid"])[0] == postgres


def test_control_planes_listen_on_loopback_only(local_env: LocalEnvironment) -> None:
    status = wait_healthy(local_env)
    ports = local_env.settings.ports
    planes = {
        "supervisor": ports.supervisor,
        "fault proxy": ports.fault_api,
        "prometheus": ports.prometheus,
        "etcd": ports.etcd_client,
        "haproxy stats": ports.haproxy_stats,
        **{f"patroni pg{m}": ports.patroni(m) for m in range(local_env.settings.pg_members)},
        **{f"knobs {s}": port_of(status, s) for s in ("llm", "sharepoint", "gdrive")},
    }
    listening: dict[int, set[str]] = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN:
            listening.setdefault(conn.laddr.port, set()).add(conn.laddr.ip)
    addresses = {name: listening.get(port, set()) for name, port in planes.items()}
    assert all(addresses.values()), f"not listening: {addresses}"
    assert {n: a for n, a in addresses.items() if a != {"127.0.0.1"}} == {}


def test_live_control_planes_refuse_a_browser_and_serve_the_harness(
    local_env: LocalEnvironment,
) -> None:
    status = wait_healthy(local_env)
    urls = status["urls"]
    llm_knobs = f"http://127.0.0.1:{port_of(status, 'llm')}/admin/knobs"
    planes = {
        "supervisor": f"{urls['supervisor']}/status",
        "fault proxy": f"{urls['fault_api']}/proxies",
        "knobs": llm_knobs,
        "planted": f"http://127.0.0.1:{port_of(status, 'api1')}/admin/planted",
        "keys": f"http://127.0.0.1:{port_of(status, 'hub1')}/admin/keys",
    }
    for name, url in planes.items():
        refused = requests.get(url, headers=BROWSER, timeout=5)
        assert refused.status_code == 403, (name, refused.text)
        assert refused.json()["error"] == "forbidden", name
        assert requests.get(url, timeout=5).status_code == 200, name
    form = requests.post(llm_knobs, data='{"latency_ms": 5000}', timeout=5)
    assert form.status_code == 415, form.text
    assert requests.get(llm_knobs, timeout=5).json()["latency_ms"] == 0


def test_patroni_unsafe_endpoints_need_the_harness_credentials(
    local_env: LocalEnvironment,
) -> None:
    status = wait_healthy(local_env)
    port = local_env.settings.ports.patroni(0)
    for path in ("/restart", "/reinitialize", "/switchover", "/reload"):
        resp = requests.post(f"http://127.0.0.1:{port}{path}", json={}, headers=BROWSER, timeout=5)
        assert resp.status_code == 401, (path, resp.status_code, resp.text)
    # The harness authenticates: a reload (harmless) is accepted.
    resp = requests.post(
        f"http://127.0.0.1:{port}/reload", auth=local_env.patroni_auth(), timeout=5
    )
    assert resp.status_code in (200, 202), resp.text
    # HAProxy's checks and the status probe still read without credentials.
    assert requests.get(f"http://127.0.0.1:{port}/cluster", timeout=5).status_code == 200
    assert status["primary"] is not None


def test_prometheus_admin_and_lifecycle_apis_are_off_and_cors_closed(
    local_env: LocalEnvironment,
) -> None:
    status = wait_healthy(local_env)
    url = status["urls"]["prometheus"]
    snap = requests.post(f"{url}/api/v1/admin/tsdb/snapshot", timeout=5)
    assert snap.status_code != 200, snap.text
    assert "disabled" in snap.text, snap.text
    quit_ = requests.post(f"{url}/-/quit", headers=BROWSER, timeout=5)
    assert quit_.status_code == 403, quit_.text
    q = requests.get(f"{url}/api/v1/query", params={"query": "up"}, headers=BROWSER, timeout=5)
    assert "Access-Control-Allow-Origin" not in q.headers, q.headers
    assert requests.get(f"{url}/-/ready", timeout=5).ok


async def _redis_strings(ports: list[int], creds: RedisCredentials) -> dict[str, bytes]:
    """Every string key of every master, with its value (as the harness's Redis user)."""
    found: dict[str, bytes] = {}

    async def call(port: int, *args: Any) -> Any:
        return await probes.redis_call(port, *args, creds=creds)

    for port in ports:
        role = await call(port, "ROLE")
        if role[0] not in (b"master", "master"):
            continue
        cursor: Any = 0
        while True:
            cursor, keys = await call(port, "SCAN", cursor, "COUNT", 1000)
            for key in keys:
                if await call(port, "TYPE", key) in (b"string", "string"):
                    value = await call(port, "GET", key)
                    if value is not None:  # expired between SCAN and GET (caches have TTLs)
                        found[key.decode()] = value
            if int(cursor) == 0:
                break
    return found


async def _completed(phone: Phone, document: str) -> tuple[str, dict[str, Any]]:
    code, accepted = await phone.submit(document=document)
    assert code == 202, accepted
    rid = accepted["request_id"]
    deadline = time.monotonic() + 60
    while True:
        code, view = await phone.get(rid)
        assert code == 200, view
        if view["status"] == "completed":
            return rid, view
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.2)


def test_redis_holds_only_ciphertext_of_responses_and_request_views(
    local_env: LocalEnvironment,
) -> None:
    status = wait_healthy(local_env)
    document = "doc-003.txt"
    ports = [local_env.settings.ports.redis(n) for n in range(local_env.settings.redis_nodes)]

    async def flow() -> tuple[str, dict[str, Any], dict[str, bytes]]:
        """Requests until one has both caches written (they are best effort: a call over the
        services' Redis deadline, such as a fresh client's first, is skipped), read back."""
        async with Phone(status) as phone:
            await phone.register()
            deadline = time.monotonic() + 120
            while True:
                rid, view = await _completed(phone, document)
                for _ in range(5):  # each read of a finished request caches it
                    code, again = await phone.get(rid)
                    assert code == 200
                    assert again == view, "a cached view reads back as it was stored"
                    values = await _redis_strings(ports, redis_credentials(status))
                    if {f"req:{rid}", f"resp:{rid}"} <= values.keys():
                        return rid, view, values
                assert time.monotonic() < deadline, "no request was ever cached"

    rid, view, values = asyncio.run(flow())
    response = view["response"]
    assert response.startswith("[stub "), view
    plain = [k for k, v in values.items() if response.encode() in v or document.encode() in v]
    assert plain == [], f"plaintext in Redis under {plain}"
    for key in (f"req:{rid}", f"resp:{rid}"):
        assert response[:40].encode() not in values[key]
        assert b"completed" not in values[key], f"{key} is readable: {values[key][:80]!r}"


def test_etcd_takes_no_write_without_its_password(local_env: LocalEnvironment) -> None:
    """etcd's JSON gateway takes any Content-Type: without authentication a page could make a
    browser wipe Patroni's keys with a text/plain POST (no preflight)."""
    status = wait_healthy(local_env)
    url = status["urls"]["etcd"]
    key = base64.b64encode(b"/cwh-test/from-a-web-page").decode()
    put = requests.post(
        f"{url}/v3/kv/put",
        data=json.dumps({"key": key, "value": key}),
        headers={**BROWSER, "Content-Type": "text/plain"},
        timeout=5,
    )
    assert "error" in put.json(), f"an anonymous write was taken: {put.text}"
    # The harness, with the password, reads: the write is not there, Patroni's keys are.
    token = {"Authorization": local_env.etcd_token()}
    got = requests.post(f"{url}/v3/kv/range", json={"key": key}, headers=token, timeout=5)
    assert "kvs" not in got.json(), got.text
    leader = base64.b64encode(f"/service/{cluster_name(local_env.settings)}/leader".encode())
    got = requests.post(
        f"{url}/v3/kv/range", json={"key": leader.decode()}, headers=token, timeout=5
    )
    assert got.json().get("kvs"), got.text


def test_what_cwh_prints_and_what_a_run_leaves_hold_no_secret(
    local_env: LocalEnvironment, tmp_path: Path
) -> None:
    """Terminals and CI logs get recorded, reports get shared: `cwh env status` prints URLs
    without their passwords (`--json` is the scripts' interface and has them), and a fleet's
    `summary.json` does not carry the registration secret (the outside review found both)."""
    import subprocess
    import sys

    from tests.helpers import fleet

    status = wait_healthy(local_env)
    secrets = _secrets(Path(status["run_dir"]))
    env = {**os.environ, **local_env.settings.to_environ()}
    out = subprocess.run(
        [sys.executable, "-m", "cwh.cli", "env", "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert "cloudwatcher:***@" in out.stdout, out.stdout
    assert not [s for s in secrets if s in out.stdout + out.stderr]
    code, run_dir, summary = fleet(status, tmp_path, users=2, duration_s=5)
    assert code in (0, 2), summary  # a 5 s run may leave requests unsettled (inconclusive)
    assert summary["options"]["registration_secret"] == "***"
    written = "".join(p.read_text(errors="replace") for p in run_dir.glob("*.json"))
    assert not [s for s in secrets if s in written]
