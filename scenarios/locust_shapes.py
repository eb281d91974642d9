"""Locust `LoadTestShape`s around the pure profiles of `scenarios/profiles.py`.

They read users, run time and spawn rate from Locust's options (`--users`, `--run-time`,
`--spawn-rate`, since `use_common_options` is on), else from class attributes.
"""

from __future__ import annotations

import os

from locust import LoadTestShape

from scenarios.profiles import Profile, Tick, diurnal, ramp, spike, steady, storm_due


class _Shape(LoadTestShape):
    """Reads users and run time from Locust's options (`--users`, `--run-time`).

    `warms_up`: the phones arrive once and hold, so the latencies of their arrival are a
    warm-up, measured apart from the steady phase (`scenarios/phone.py`); a shape whose load
    changes by design (ramp, spike, diurnal) has every latency measured."""

    use_common_options = True
    warms_up = False
    abstract = True
    users = 50
    duration_s = 120.0
    spawn_rate = 50.0

    def profile(self) -> Profile:
        # On a worker process Locust's --run-time is not set (only the master runs the clock),
        # yet phones ask the shape when the storm is due: the fleet runner passes the run's
        # parameters in the environment too.
        users = float(os.environ.get("CWH_USERS", self.users))
        duration = float(os.environ.get("CWH_DURATION_S", self.duration_s))
        rate = float(os.environ.get("CWH_SPAWN_RATE", self.spawn_rate))
        options = getattr(getattr(self.runner, "environment", None), "parsed_options", None)
        if options is not None:
            users = getattr(options, "num_users", None) or users
            duration = getattr(options, "run_time", None) or duration
            rate = getattr(options, "spawn_rate", None) or rate
        return Profile(int(users), float(duration), float(rate))


class SteadyShape(_Shape):
    warms_up = True

    def tick(self) -> Tick:
        return steady(self.profile(), self.get_run_time())


class RampShape(_Shape):
    def tick(self) -> Tick:
        return ramp(self.profile(), self.get_run_time())


class SpikeShape(_Shape):
    def tick(self) -> Tick:
        return spike(self.profile(), self.get_run_time())


class SoakShape(_Shape):
    """Steady, for long: the default is an hour."""

    warms_up = True
    duration_s = 3600.0

    def tick(self) -> Tick:
        return steady(self.profile(), self.get_run_time())


class DiurnalShape(_Shape):
    def tick(self) -> Tick:
        return diurnal(self.profile(), self.get_run_time())


class ReconnectStormShape(_Shape):
    """Steady phones; half-way through, all of them drop and reconnect (see `storm_due`)."""

    warms_up = True

    def tick(self) -> Tick:
        return steady(self.profile(), self.get_run_time())

    def storm_due(self) -> bool:
        return storm_due(self.profile(), self.get_run_time())


SHAPES: dict[str, type[_Shape]] = {
    "steady": SteadyShape,
    "ramp": RampShape,
    "spike": SpikeShape,
    "soak": SoakShape,
    "diurnal": DiurnalShape,
    "storm": ReconnectStormShape,
}
