"""The command-line options of the benchmarks that run a fleet (`make load`'s variables)."""

from __future__ import annotations

import argparse

from cwh.durations import parse_duration


def duration_arg(text: str) -> float:
    """argparse's type for DURATION: seconds from `90s`, `30m`, `1h`, `1h30m` or `120`."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"DURATION: {exc}") from None


def add_fleet_arguments(parser: argparse.ArgumentParser, duration_s: float, forms: str) -> None:
    """--users, --duration (default `duration_s`; `forms`: examples for the help), --spawn-rate
    and --settle, each named after the make variable that sets it."""
    parser.add_argument("--users", type=int, default=50, help="phones of the fleet (USERS)")
    parser.add_argument(
        "--duration",
        type=duration_arg,
        default=duration_s,
        help=f"fleet run time (DURATION): {forms}",
    )
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="phones/s (SPAWN_RATE)")
    parser.add_argument("--settle", type=float, default=60.0, help="read-back limit, s (SETTLE)")
