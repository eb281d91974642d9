"""Test session set-up: one real local environment for the whole session, always torn down.

It runs on its own base port and run directory (`CWH_TEST_BASE_PORT`, default 19000), so a
developer's environment on the default ports is left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from cwh import signals
from env.hpa import write_fast_scale_down
from env.local import LocalEnvironment
from env.process import processes_of
from env.settings import EnvSettings

# A CI runner that starts the suite in the background (`.ci/run &` in a script) hands it SIGINT
# ignored, and every child inherits that: a test that interrupts an experiment as Ctrl-C does
# would see it run to its end. A Python handler is reset to the default action in each child at
# exec, so installing Python's own here gives every child the SIGINT a terminal would.
signal.signal(signal.SIGINT, signal.default_int_handler)
# SIGTERM (a CI runner's timeout, `kill`) ends the session as Ctrl-C does, so its fixtures'
# teardown runs: a containers session stopped so on 2026-12-07 left the dockerd it had started
# running (and its environment up) for the next session to find.
signals.install()

# Timing on this machine is noisy; speed is measured by the benchmarks, not by test deadlines.
settings.register_profile("harness", deadline=None)
settings.load_profile("harness")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `teardown` stop the shared environment: run them after the others; the
    containers runtime's run after those, once the local environment is down (two topologies
    at once would starve a 2-core machine)."""

    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("containers") is not None:
            return 2
        return 1 if item.get_closest_marker("teardown") is not None else 0

    items.sort(key=order)


#: Seconds spent per test file (set-up, call and teardown): where the suite's time goes, by file
#: and by directory, at the end of the run (issue #17 goal 3; `--durations` names single tests).
_SECONDS_BY_FILE: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _SECONDS_BY_FILE[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SECONDS_BY_FILE:
        return
    by_dir: Counter[str] = Counter()
    for path, seconds in _SECONDS_BY_FILE.items():
        by_dir[path.rsplit("/", 1)[0]] += seconds
    write = terminalreporter.write_line
    terminalreporter.section("seconds by directory and by file (slowest 25)")
    for path, seconds in [*by_dir.most_common(), *_SECONDS_BY_FILE.most_common(25)]:
        write(f"{seconds:8.1f}  {path}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "teardown: stops the session's environment; runs last")


#: The test session's scale-down timing: windows and policy periods this short let a test see the
#: API scale out and back in within minutes; everything else is `deploy/base/`'s. Not shorter:
#: under a steady ramp a 20 s window let CPU noise on two shared cores walk the API between
#: two sizes for the test's whole 7-minute hold (a recommendation one replica lower wins as
#: soon as the window holds no higher one), where the shipped 5 minutes would hold it.
FAST_SCALE_DOWN_WINDOW_S, FAST_SCALE_DOWN_PERIOD_S = 60, 10


@pytest.fixture(scope="session")
def env_settings() -> EnvSettings:
    base = int(os.environ.get("CWH_TEST_BASE_PORT", "19000"))
    return EnvSettings(
        base_port=base,
        run_dir=Path(os.environ.get("CWH_TEST_RUN_DIR", f"/var/tmp/cwh-test-{base}")),
        timeout_scale=float(os.environ.get("CWH_TIMEOUT_SCALE", "1.0")),
        # Low enough that a test can exceed it from one address; well above what the session's
        # fleets (10 phones a second) and tests need.
        auth_rate_limit_per_s=int(os.environ.get("CWH_TEST_AUTH_RATE_LIMIT_PER_S", "50")),
        # Off: most tests count replicas (three API replicas behind HAProxy, ...). The scaling
        # tests switch it on through the admin API, and off again; a short sync period (the
        # controller's flag) keeps them short.
        autoscale=False,
        autoscale_sync_s=5.0,
        hpa_dir=write_fast_scale_down(
            Path(f"/var/tmp/cwh-test-{base}-hpa"),
            FAST_SCALE_DOWN_WINDOW_S,
            FAST_SCALE_DOWN_PERIOD_S,
        ),
    )


@pytest.fixture(scope="session")
def local_env(
    env_settings: EnvSettings, request: pytest.FixtureRequest
) -> Iterator[LocalEnvironment]:
    env = LocalEnvironment(env_settings)
    # A leftover from an interrupted session would make results depend on history.
    env.reset()
    with env:
        yield env
    shutil.rmtree(env_settings.hpa_dir, ignore_errors=True)  # made again by the next session
    # The ordinary `down` (the context manager's exit) left nothing behind.
    assert processes_of(env_settings.run_dir) == [], "processes left after down"
    # Logs and data directories are what explains a failure: keep them then.
    if request.session.testsfailed:
        print(f"\nkept {env_settings.run_dir} for post-mortem (logs in logs/)")
    else:
        shutil.rmtree(env_settings.run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def status(local_env: LocalEnvironment) -> dict:
    """`cwh env status --json` as the environment was when the session started."""
    return local_env.status()
