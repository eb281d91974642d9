"""The background fleet of a chaos run: `python -m experiments.activities.fleet.runner OUT ...`.

A separate process (Locust monkey-patches the process it runs in), writing its ledger, HDR
histograms, reconciliation and `summary.json` into the run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from cwh.fleet import FleetOptions, run_fleet


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--target", required=True)
    p.add_argument("--ca-file", default="")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--duration", type=float, default=90)
    p.add_argument("--spawn-rate", type=float, default=10)
    p.add_argument("--mix", default="ios=60,android=40")
    args = p.parse_args()
    opts = FleetOptions(
        target=args.target,
        users=args.users,
        duration_s=args.duration,
        spawn_rate=args.spawn_rate,
        mix=args.mix,
        ca_file=args.ca_file,
    )
    code, _, _ = run_fleet(opts, Console(stderr=True), out=args.out)
    sys.exit(code)


if __name__ == "__main__":
    main()
