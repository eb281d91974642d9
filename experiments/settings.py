"""The chaos side's settings: the environment's (`EnvSettings`) and the run folder, built from
Chaos Toolkit's `configuration` and passed down as one frozen object.

Chaos Toolkit passes the experiment's resolved `configuration` to every activity and control
that declares a `configuration` parameter. Every experiment declares the same `cwh_*` entries
(`declared_configuration`, kept equal in every `experiments/*.yaml` by a unit test): each one
`type: env`, so a bare `chaos run` reads `CWH_*` variables as the rest of the harness does, and
`chaos run --var cwh_base_port=24000` (or `--var-file`, as `cwh chaos run` does) overrides
them. Those `type: env` entries are the only place the chaos side meets the process
environment: no Python under `experiments/` reads `os.environ`.

Print the entries with `python -m experiments.settings`; `--write` puts them into every
experiment (after a field was added to `EnvSettings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from env.settings import PREFIX, RUNTIMES, EnvSettings, SettingsError

#: The configuration key of the chaos run folder (fault journal, fleet, measurements).
RUN_DIR_KEY = "cwh_chaos_run_dir"
#: The variable a bare `chaos run` takes the run folder from.
RUN_DIR_VAR = "CWH_CHAOS_RUN_DIR"
#: Chaos Toolkit's `env_var_type` for the fields it can convert (ints and floats); the others
#: arrive as text and parse here as `EnvSettings.from_environ` parses them.
_ENV_VAR_TYPES = {int: "int", float: "float"}
EXPERIMENTS_DIR = Path(__file__).resolve().parent

Configuration = Mapping[str, Any]


def config_key(field: str) -> str:
    """The configuration key of an `EnvSettings` field: `base_port` -> `cwh_base_port`."""
    return f"cwh_{field}"


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.name == "run_dir":
        return ""  # derived from the base port, as `EnvSettings.from_environ` does
    if field.name == "hpa_dir":
        return ""  # the checkout's deploy/base, wherever it is
    return field.default


def declared_configuration() -> dict[str, dict[str, Any]]:
    """The `configuration` entries every experiment declares for the harness, in order: one
    per `EnvSettings` field (`cwh_<field>` from `CWH_<FIELD>`, its default as `EnvSettings`
    has it, "" for the run directory: `/var/tmp/cwh-<base port>`, and for the HPA specs: the
    checkout's `deploy/base/`), then the run folder
    (`cwh_chaos_run_dir` from `CWH_CHAOS_RUN_DIR`; "": a new `reports/<UTC>-chaos-<name>`)."""
    hints = {"int": int, "float": float, "bool": bool, "str": str, "Path": Path}
    out: dict[str, dict[str, Any]] = {}
    for field in dataclasses.fields(EnvSettings):
        kind = hints[str(field.type)]
        entry: dict[str, Any] = {
            "type": "env",
            "key": PREFIX + field.name.upper(),
            "default": _field_default(field),
        }
        if kind in _ENV_VAR_TYPES:
            entry["env_var_type"] = _ENV_VAR_TYPES[kind]
        out[config_key(field.name)] = entry
    out[RUN_DIR_KEY] = {"type": "env", "key": RUN_DIR_VAR, "default": ""}
    return out


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)


@dataclass(frozen=True)
class ChaosSettings:
    """What a chaos activity needs to know.

    Attributes:
        env: the environment under test (ports, run directory, timeouts, topology).
        run_dir: the chaos run folder: fault journal, fleet, measurements. May not exist yet:
            `experiments.harness.run_dir` creates it.
    """

    env: EnvSettings
    run_dir: Path

    @classmethod
    def from_configuration(
        cls, configuration: Configuration | None, default_run_dir: Path | None = None
    ) -> ChaosSettings:
        """Build from Chaos Toolkit's resolved `configuration`. An empty `cwh_chaos_run_dir`
        takes `default_run_dir`.

        Raises:
            SettingsError: a `cwh_*` entry is missing (the experiment does not declare it: see
                `declared_configuration`) or has a value the environment cannot use; the
                message names it. Also when the run folder is empty and no default is given.
        """
        configuration = configuration or {}
        declared = declared_configuration()
        if missing := [key for key in declared if key not in configuration]:
            raise SettingsError(
                f"the experiment's configuration lacks {', '.join(missing)}: every experiment "
                "declares them (python -m experiments.settings --write)"
            )
        # Parsed and checked as the variables are, so both edges accept the same values.
        environ = {
            entry["key"]: _as_text(configuration[key])
            for key, entry in declared.items()
            if key != RUN_DIR_KEY
        }
        try:
            env = EnvSettings.from_environ(environ)
        except SettingsError as exc:
            raise SettingsError(f"configuration: {exc} (or --var cwh_...)") from None
        given = _as_text(configuration[RUN_DIR_KEY])
        run_dir = Path(given).resolve() if given else default_run_dir
        if run_dir is None:
            raise SettingsError(f"configuration: {RUN_DIR_KEY} is empty and has no default")
        return cls(env=env, run_dir=run_dir)

    def to_configuration(self) -> dict[str, Any]:
        """The `cwh_*` values (JSON types) that rebuild these settings in a `chaos run`:
        `{"configuration": ...}` of a `--var-file`, or `--var key=value` each."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(EnvSettings):
            value = getattr(self.env, field.name)
            out[config_key(field.name)] = str(value) if isinstance(value, Path) else value
        out[RUN_DIR_KEY] = str(self.run_dir)
        return out


#: The runtimes an experiment runs on when it names none: those of the project's supervisor,
#: whose processes and containers the activities act on (`cwh env status`).
SUPERVISED_RUNTIMES = ("local", "containers")


def runtimes_of(experiment: Mapping[str, Any]) -> tuple[str, ...]:
    """The runtimes an experiment (its parsed YAML) declares it runs on: its `cwh`
    extension's `runtimes` (`[containers]` for a partition, `[local, containers, kubernetes]`
    for a pod kill, `[kubernetes]` for a node drain), else `SUPERVISED_RUNTIMES`.

    Raises:
        SettingsError: `runtimes` names a runtime that does not exist."""
    cwh = [e for e in experiment.get("extensions") or [] if e.get("name") == "cwh"]
    ext: Mapping[str, Any] = cwh[0] if cwh else {}
    declared = tuple(str(r) for r in ext.get("runtimes") or SUPERVISED_RUNTIMES)
    if unknown := [r for r in declared if r not in RUNTIMES]:
        raise SettingsError(f"runtimes: {', '.join(unknown)}: not one of {', '.join(RUNTIMES)}")
    return declared


def new_run_dir(name: str = "", reports: Path = Path("reports")) -> Path:
    """A fresh `reports/<UTC>-chaos[-<name>]` folder path (not created)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return (reports / f"{stamp}-chaos{'-' + name if name else ''}").resolve()


# ---- keeping the experiments' declarations equal ------------------------------------------

_MARK = "  # The environment and the run folder (python -m experiments.settings --write)."
_ENTRY = re.compile(r"^  cwh_\w+: \{.*\}$")


def declaration_lines() -> list[str]:
    """The `cwh_*` entries as the experiments hold them: one flow mapping a line."""
    lines = [_MARK]
    for key, entry in declared_configuration().items():
        flow = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=1000)
        lines.append(f"  {key}: {flow.strip()}")
    return lines


def with_declaration(text: str) -> str:
    """An experiment's YAML text with its `cwh_*` entries replaced by the current ones, first
    under `configuration:`; everything else (comments included) as it was."""
    lines = [ln for ln in text.splitlines() if ln != _MARK and not _ENTRY.match(ln)]
    at = lines.index("configuration:") + 1
    return "\n".join([*lines[:at], *declaration_lines(), *lines[at:]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.settings", description=__doc__)
    parser.add_argument("--write", action="store_true", help="into every experiments/*.yaml")
    args = parser.parse_args(argv)
    if not args.write:
        print("\n".join(declaration_lines()))
        return 0
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        path.write_text(with_declaration(path.read_text()))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
