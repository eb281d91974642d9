from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scenarios.profiles import (
    FINISH_FILE,
    SHAPE_NAMES,
    Profile,
    diurnal,
    ramp,
    spike,
    steady,
    storm_due,
)

profiles = st.builds(
    Profile,
    users=st.integers(min_value=1, max_value=20_000),
    duration_s=st.floats(min_value=1, max_value=86_400),
    spawn_rate=st.floats(min_value=0.1, max_value=1000),
)
shares = st.floats(min_value=0, max_value=0.999)


@given(profiles, shares, st.sampled_from([steady, ramp, spike, diurnal]))
def test_every_profile_stays_within_one_and_the_peak_then_ends(p, share, profile):
    tick = profile(p, share * p.duration_s)
    assert tick is not None
    users, rate = tick
    assert 1 <= users <= p.users
    assert rate > 0
    assert profile(p, p.duration_s) is None


@given(profiles)
def test_ramp_never_goes_down_and_reaches_the_peak(p):
    counts = [ramp(p, p.duration_s * k / 200)[0] for k in range(200)]
    assert counts == sorted(counts)
    assert counts[-1] == p.users
    assert counts[0] == max(1, p.users // 10)


def test_spike_jumps_to_the_peak_and_back():
    p = Profile(users=1000, duration_s=100)
    assert spike(p, 10)[0] == 200
    assert spike(p, 45) == (1000, 1000.0)
    assert spike(p, 70)[0] == 200


def test_diurnal_peaks_at_mid_day():
    p = Profile(users=1000, duration_s=240)
    assert diurnal(p, 0)[0] == 100
    assert diurnal(p, 120)[0] == 1000
    assert diurnal(p, 60)[0] == 550


def test_storm_is_due_from_half_way():
    p = Profile(users=10, duration_s=100)
    assert not storm_due(p, 49.9)
    assert storm_due(p, 50)


def in_locust_process(script: str, **environ: str) -> Any:
    """What `script` prints last, as JSON, run in a process of its own: importing Locust
    monkey-patches the interpreter (gevent)."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, **environ},
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_every_locust_shape_ticks_through_its_profile():
    script = (
        "import json\n"
        "from scenarios.locust_shapes import SHAPES\n"
        "print(json.dumps({name: shape().tick() for name, shape in SHAPES.items()}))\n"
    )
    ticks = in_locust_process(script)
    assert set(ticks) == set(SHAPE_NAMES)  # the Locust table and the names agree
    assert ticks["steady"] == [50, 50.0]
    assert ticks["ramp"] == [5, 50.0]
    assert ticks["spike"] == [10, 50.0]
    assert ticks["diurnal"] == [5, 50.0]


def test_locust_runs_the_fleet_shape_and_it_ends_when_the_finish_file_appears(tmp_path):
    """Locust runs the first shape class among the locustfile's names: it must be FleetShape,
    the one that reads the finish file (a module-level alias of its base once shadowed it)."""
    script = (
        "import json, os, pathlib\n"
        "from locust.util.load_locustfile import load_locustfile\n"
        "_, shapes = load_locustfile('scenarios/locustfile.py')\n"
        "before = shapes[0].tick()\n"
        f"pathlib.Path(os.environ['CWH_FLEET_DIR'], '{FINISH_FILE}').touch()\n"
        "print(json.dumps([[type(s).__name__ for s in shapes], before, shapes[0].tick()]))\n"
    )
    found = in_locust_process(script, CWH_FLEET_DIR=str(tmp_path), CWH_SHAPE="steady")
    assert found == [["FleetShape"], [50, 50.0], None]


def test_profile_refuses_nonsense():
    with pytest.raises(ValueError, match="users >= 1"):
        Profile(users=0, duration_s=10)
