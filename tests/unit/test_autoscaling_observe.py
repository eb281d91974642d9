"""The local autoscaler's view of a replica starts over when a new process takes its name: a
replica retired and started again must not inherit its predecessor's CPU counter (which would
read as negative CPU) or readiness."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from env import hpa, topology
from env.autoscaling import LocalAutoscaler, cpu_seconds
from env.settings import EnvSettings

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
BURN += "time.sleep(60)\n"


def _autoscaler(tmp_path: Path, comps: list[Any]) -> LocalAutoscaler:
    settings = EnvSettings(base_port=23000, run_dir=tmp_path)
    specs = hpa.load()
    topo = topology.build(settings, specs)
    return LocalAutoscaler(topo, specs, lambda name: comps if name == "api" else [], scaler=None)  # type: ignore[arg-type]


def _wait_cpu(pid: int, at_least: float) -> None:
    until = time.monotonic() + 30
    while (cpu_seconds(pid) or 0.0) < at_least:
        assert time.monotonic() < until, "the burner never burned"
        time.sleep(0.05)


def test_a_new_process_under_a_reused_name_starts_a_new_reading(tmp_path):
    burner = subprocess.Popen([sys.executable, "-c", BURN])
    idle = subprocess.Popen(["sleep", "60"])
    try:
        _wait_cpu(burner.pid, 0.4)
        comp = SimpleNamespace(name="api1", pid=burner.pid, ports={"http": 1}, started_wall=0.0)
        scaler = _autoscaler(tmp_path, [comp])
        spec = scaler.states["api"].spec
        w = scaler.topology.workload("api")
        asyncio.run(scaler.observe(spec, w))
        assert scaler.replicas["api1"].cpu_s >= 0.4

        comp.pid = idle.pid  # retired, then started again under the same name
        obs = asyncio.run(scaler.observe(spec, w))
        cpu = obs.pod_metrics[spec.metrics[0].key]
        assert "api1" not in cpu, cpu  # a first reading of the new process, not a difference
        assert scaler.replicas["api1"].pid == idle.pid
        assert scaler.replicas["api1"].cpu_s < 0.4

        obs = asyncio.run(scaler.observe(spec, w))
        assert obs.pod_metrics[spec.metrics[0].key]["api1"].value >= 0.0

        scaler.running = lambda name: []  # scaled to nothing: nothing is kept of it
        asyncio.run(scaler.observe(spec, w))
        assert "api1" not in scaler.replicas
    finally:
        for p in (burner, idle):
            p.kill()
            p.wait()
