"""The CI examples (examples/ci/) cannot rot silently: each file validates against its CI
system's published schema (check-jsonschema's vendored copies, offline), every make target and
variable they use exists and reaches a `cwh` command line `cwh` accepts, and their exit-code
handling does what examples/ci/README.md says, run here with a stand-in for make.

Not tested, because it cannot be here: a run on GitHub or GitLab, and `make load` or
`make gameday` against a real staging."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cwh.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "ci"
GITHUB = sorted((EXAMPLES / "github").glob("*.yml"))
GITLAB = EXAMPLES / "gitlab" / ".gitlab-ci.yml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
#: Any download would go through this proxy, where nothing listens: the check must not need one.
NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
#: What each example's exit-code handling must do with `cwh`'s code: the job's exit status.
#: "none" is no code at all (set-up failed before `cwh` ran).
CODES = ("0", "1", "2", "130", "none")

Yaml = dict[str, Any]


def check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **NO_NETWORK},
    )


def load(path: Path) -> Yaml:
    """A YAML file; GitHub's `on:` key under its own name (YAML 1.1 readers take it for True)."""
    data: Yaml = yaml.safe_load(path.read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


def github_steps(path: Path) -> list[Yaml]:
    return [s for job in load(path)["jobs"].values() for s in job.get("steps", [])]


def github_step(path: Path, prefix: str) -> Yaml:
    [step] = [s for s in github_steps(path) if s.get("name", "").startswith(prefix)]
    return step


def gitlab_jobs() -> dict[str, Yaml]:
    data = load(GITLAB)
    return {k: v for k, v in data.items() if isinstance(v, dict) and "script" in v}


# --- the schemas -------------------------------------------------------------------------------


def test_the_examples_are_there() -> None:
    assert [p.name for p in GITHUB] == ["gameday.yml", "release-gate.yml"]
    assert GITLAB.is_file()
    assert CHECK_JSONSCHEMA.is_file(), "check-jsonschema is pinned in pyproject.toml"


@pytest.mark.parametrize(
    "schema", ["vendor.github-workflows", "custom.github-workflows-require-timeout"]
)
def test_the_github_workflows_validate(schema: str) -> None:
    """GitHub's workflow schema (SchemaStore's, vendored), and every job bounded by a timeout
    (GitHub's default is 6 hours of a staging load)."""
    result = check_jsonschema(schema, *GITHUB)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_gitlab_file_validates() -> None:
    result = check_jsonschema("vendor.gitlab-ci", GITLAB)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("schema", "source", "mutate"),
    [
        (
            "vendor.github-workflows",
            "github/release-gate.yml",
            lambda d: d["jobs"]["slo-gate"].update({"runs_on": "ubuntu-latest"}),
        ),
        (
            "vendor.github-workflows",
            "github/gameday.yml",
            lambda d: d["on"]["schedule"][0].update({"cron": 5}),
        ),
        (
            "vendor.gitlab-ci",
            "gitlab/.gitlab-ci.yml",
            lambda d: d["slo-gate"].update({"allow_failure": {"exit_code": [2]}}),
        ),
    ],
)
def test_the_schema_check_is_not_vacuous(
    tmp_path: Path, schema: str, source: str, mutate: Any
) -> None:
    """A misspelt key or a wrong type in a copy of each file is refused: the check reads the
    files and knows these systems' keys."""
    data = load(EXAMPLES / source)
    mutate(data)
    broken = tmp_path / Path(source).name
    broken.write_text(yaml.safe_dump(data))
    result = check_jsonschema(schema, broken)
    assert result.returncode == 1, result.stdout + result.stderr


# --- what the pipelines call ---------------------------------------------------------------------


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, re.MULTILINE))


def commands_of_examples() -> list[str]:
    lines = [s["run"] for p in GITHUB for s in github_steps(p) if "run" in s]
    lines += [line for job in gitlab_jobs().values() for line in job["script"]]
    return lines


def test_every_make_target_the_examples_call_exists() -> None:
    called = {
        m for line in commands_of_examples() for m in re.findall(r"(?m)^\s*make ([\w-]+)", line)
    }
    assert called == {"deps", "load", "gameday"}
    assert called <= make_targets()


def dry_run(target: str, env: dict[str, str]) -> list[str]:
    """The `cwh` command line `make TARGET` runs with `env`, as make expands it (`-n`: nothing
    runs; `-o deps`: not even the set-up)."""
    out = subprocess.run(
        ["make", "-s", "-n", "-o", "deps", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
        timeout=30,
    ).stdout
    command = out.replace("\\\n", " ").split(";")[0]
    argv = shlex.split(command)
    assert Path(argv[0]).name == "cwh", argv
    return argv[1:]


def example_env(path: Path, job: str) -> dict[str, str]:
    """A GitHub job's `env`, with each expression replaced by its input's default."""
    data = load(path)
    inputs = data["on"].get("workflow_dispatch", {}).get("inputs", {})
    out = {}
    for key, value in data["jobs"][job].get("env", {}).items():
        found = re.fullmatch(r"\$\{\{ inputs\.(\w+) \}\}", str(value))
        if found:
            out[key] = str(inputs[found.group(1)]["default"])
    return out


def test_make_load_as_the_release_gates_run_it_is_a_cwh_load_cwh_accepts() -> None:
    env = example_env(EXAMPLES / "github" / "release-gate.yml", "slo-gate")
    assert env == {"USERS": "50", "DURATION": "10m", "SHAPE": "steady"}
    gitlab = {k: str(v) for k, v in load(GITLAB)["variables"].items()}
    assert gitlab == env, "both systems run the same fleet by default"
    args = build_parser().parse_args(dry_run("load", env))
    assert args.func.__name__ == "load"
    assert (args.users, args.duration, args.shape) == (50, 600.0, "steady")


def test_the_staging_variables_are_what_cwh_load_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """TARGET, CA_FILE, REGISTRATION_SECRET and PROMETHEUS_URL reach `cwh load` through the
    environment (the Makefile passes no option for them): each is its option's default."""
    given = {
        "TARGET": "https://staging.example",
        "CA_FILE": "/tmp/ca.pem",
        "REGISTRATION_SECRET": "s3cret",
        "PROMETHEUS_URL": "https://prometheus.staging.example",
    }
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(dry_run("load", {}))
    seen = (args.target, args.ca_file, args.registration_secret, args.prometheus)
    assert seen == tuple(given.values())
    workflow = (EXAMPLES / "github" / "release-gate.yml").read_text()
    for key in given:
        assert f"{key}=" in workflow or f"{key}: ${{{{ secrets.{key} }}}}" in workflow, key
    gitlab = GITLAB.read_text()
    assert all(key in gitlab for key in given)


def test_make_gameday_is_a_cwh_chaos_gameday_cwh_accepts() -> None:
    args = build_parser().parse_args(dry_run("gameday", {"EXPERIMENTS": "kill-api kill-lb"}))
    assert args.func.__name__ == "chaos_gameday"
    assert args.experiments == ["kill-api", "kill-lb"]
    assert build_parser().parse_args(dry_run("gameday", {})).experiments == []


def test_the_game_days_kubernetes_settings_exist(tmp_path: Path) -> None:
    from env.settings import EnvSettings

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    settings = EnvSettings.from_environ(
        {
            "CWH_RUNTIME": "kubernetes",
            "CWH_NAMESPACE": "cloudwatcher-staging",
            "CWH_KUBE_TARGET": "https://staging.example",
            "CWH_KUBECONFIG": str(kubeconfig),
        }
    )
    assert settings.runtime == "kubernetes"
    assert settings.namespace == "cloudwatcher-staging"
    assert settings.kube_target == "https://staging.example"
    assert settings.kubeconfig == str(kubeconfig)


# --- exit codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["load", "slo", "gameday", "chaos"])
@pytest.mark.parametrize("code", [0, 1, 2])
def test_exit_code_file_keeps_what_make_loses(tmp_path: Path, target: str, code: int) -> None:
    """GNU make exits 2 on any failed recipe; EXIT_CODE_FILE holds `cwh`'s own code."""
    record = tmp_path / "exit-code"
    done = subprocess.run(
        [
            "make",
            "-s",
            "-o",
            "deps",
            target,
            f"CWH=sh -c 'exit {code}'",
            "EXPERIMENT=kill-api",
            f"EXIT_CODE_FILE={record}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == (0 if code == 0 else 2)
    assert record.read_text().strip() == str(code)


@pytest.fixture
def fake_make(tmp_path: Path) -> Path:
    """A `make` on PATH that writes $FAKE_CODE to EXIT_CODE_FILE (none: writes nothing, as when
    `make deps` fails) and exits as GNU make would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "make"
    script.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case $a in EXIT_CODE_FILE=*) f=${a#EXIT_CODE_FILE=} ;; esac; done\n'
        '[ "$FAKE_CODE" = none ] && exit 2\n'
        '[ -n "$f" ] && echo "$FAKE_CODE" > "$f"\n'
        '[ "$FAKE_CODE" = 0 ] || exit 2\n'
    )
    script.chmod(0o755)
    return bin_dir


def run_github_steps(steps: list[Yaml], tmp_path: Path, bin_dir: Path, code: str) -> int:
    """Run the `run:` of `steps` in order with bash, as GitHub would (outputs carried from one
    step to the next through `steps.<id>.outputs`), and return the last one's exit status."""
    outputs: dict[str, dict[str, str]] = {}
    status = 0
    for step in steps:
        out_file = tmp_path / "output"
        out_file.write_text("")
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "FAKE_CODE": code,
            "RUNNER_TEMP": str(tmp_path),
            "GITHUB_OUTPUT": str(out_file),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        }
        for key, value in step.get("env", {}).items():
            ref = re.fullmatch(r"\$\{\{ steps\.(\w+)\.outputs\.(\w+) \}\}", str(value))
            env[key] = outputs.get(ref.group(1), {}).get(ref.group(2), "") if ref else ""
        # `shell: bash` is `bash -e {0}` on GitHub.
        status = subprocess.run(
            ["bash", "-e", "-c", step["run"]], env=env, cwd=tmp_path, timeout=30
        ).returncode
        lines = out_file.read_text().splitlines()
        outputs[step.get("id", "")] = dict(line.split("=", 1) for line in lines if "=" in line)
    return status


#: What each exit code of `cwh` does to the job: 0 passes, 1 fails, 2 passes flagged (the
#: release gate) or fails (the game day, which nobody watches), anything else fails.
GITHUB_EXPECTED = {
    "release-gate.yml": {"0": 0, "1": 1, "2": 0, "130": 1, "none": 1},
    "gameday.yml": {"0": 0, "1": 1, "2": 1, "130": 1, "none": 1},
}


@pytest.mark.parametrize("workflow", sorted(GITHUB_EXPECTED))
@pytest.mark.parametrize("code", CODES)
def test_github_jobs_end_as_the_readme_says(
    tmp_path: Path, fake_make: Path, workflow: str, code: str
) -> None:
    path = EXAMPLES / "github" / workflow
    steps = [
        github_step(path, "make gameday" if "gameday" in workflow else "make load ("),
        github_step(path, "Verdict"),
    ]
    status = run_github_steps(steps, tmp_path, fake_make, code)
    assert status == GITHUB_EXPECTED[workflow][code]
    summary = tmp_path / "summary.md"
    if code == "2":
        assert "inconclusive" in summary.read_text()


def test_an_inconclusive_release_gate_can_be_made_to_block(tmp_path: Path) -> None:
    """The repository variable CWH_BLOCK_ON_INCONCLUSIVE=true stops the release on 2 too."""
    verdict = github_step(EXAMPLES / "github" / "release-gate.yml", "Verdict")
    assert verdict["env"]["BLOCK_ON_INCONCLUSIVE"] == "${{ vars.CWH_BLOCK_ON_INCONCLUSIVE }}"
    env = {**os.environ, "CODE": "2", "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    for block, status in (("true", 1), ("", 0), ("false", 0)):
        env["BLOCK_ON_INCONCLUSIVE"] = block
        done = subprocess.run(["bash", "-e", "-c", verdict["run"]], env=env, timeout=30)
        assert done.returncode == status, block


#: GitLab: the job's exit status, and whether allow_failure turns it into a warning.
GITLAB_EXPECTED = {
    "slo-gate": {"0": "passed", "1": "failed", "2": "warning", "130": "failed", "none": "failed"},
    "gameday": {"0": "passed", "1": "failed", "2": "failed", "130": "failed", "none": "failed"},
}


@pytest.mark.parametrize("job", sorted(GITLAB_EXPECTED))
@pytest.mark.parametrize("code", CODES)
def test_gitlab_jobs_end_as_the_readme_says(
    tmp_path: Path, fake_make: Path, job: str, code: str
) -> None:
    spec = gitlab_jobs()[job]
    # GitLab runs a job's script lines in one shell that stops at the first failing line.
    script = "\n".join(spec["script"])
    env = {
        **os.environ,
        "PATH": f"{fake_make}:{os.environ['PATH']}",
        "FAKE_CODE": code,
        "CI_PROJECT_DIR": str(tmp_path),
        "TARGET": "https://staging.example",
        "KUBECONFIG": "/dev/null",
    }
    status = subprocess.run(["bash", "-e", "-c", script], env=env, timeout=30).returncode
    allowed = spec.get("allow_failure", {}).get("exit_codes", [])
    outcome = "passed" if status == 0 else "warning" if status in allowed else "failed"
    assert outcome == GITLAB_EXPECTED[job][code]
    if code not in ("0", "none"):
        assert status == int(code), "the job's exit status is cwh's"


def test_the_release_waits_for_the_gate() -> None:
    assert gitlab_jobs()["release"]["needs"] == ["slo-gate"]
    github = load(EXAMPLES / "github" / "release-gate.yml")["jobs"]
    assert github["release"]["needs"] == "slo-gate"


def test_the_artifacts_are_the_run_folders_and_their_junit() -> None:
    jobs = gitlab_jobs()
    gate = jobs["slo-gate"]["artifacts"]
    assert gate["when"] == "always"
    assert gate["paths"] == ["reports/*-load/"]
    assert gate["reports"]["junit"] == "reports/*-load/slo-junit.xml"
    day = jobs["gameday"]["artifacts"]
    assert day["when"] == "always"
    # A day's trials run inside its folder (a plan's name follows "-gameday").
    assert day["paths"] == ["reports/*-gameday*/"]
    assert day["reports"]["junit"] == "reports/*-gameday*/*-chaos-*/slo-junit.xml"
    path = EXAMPLES / "github" / "release-gate.yml"
    uploads = {
        s["with"]["name"]: s for s in github_steps(path) if "upload-artifact" in s.get("uses", "")
    }
    assert uploads["slo-junit"]["with"]["path"] == "reports/*-load/slo-junit.xml"
    assert uploads["load-report"]["with"]["path"] == "reports/*-load/"
    assert all(s["if"] == "always()" for s in uploads.values())
    # The gate writes these files where the examples look for them (slo/report.py).
    report = (ROOT / "slo" / "report.py").read_text()
    assert '"slo-junit.xml"' in report
    assert '"slo.md"' in report


def test_the_cronjob_and_the_scheduled_pipelines_agree() -> None:
    """One schedule everywhere: the CronJob's, GitHub's cron and the README's GitLab example."""
    docs = list(yaml.safe_load_all((ROOT / "deploy/base/gameday-cronjob.yaml").read_text()))
    cron = next(d for d in docs if d["kind"] == "CronJob")["spec"]["schedule"]
    github = load(EXAMPLES / "github" / "gameday.yml")["on"]["schedule"][0]["cron"]
    assert cron == github
    assert f'"{cron}"' in GITLAB.read_text()


def test_the_readme_names_every_example_and_secret() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for path in [*GITHUB, GITLAB]:
        assert str(path.relative_to(EXAMPLES)) in readme, path.name
    secrets = {m for p in GITHUB for m in re.findall(r"secrets\.(\w+)", p.read_text())}
    assert secrets == {"TARGET", "CA_CERT", "REGISTRATION_SECRET", "PROMETHEUS_URL", "KUBECONFIG"}
    for name in secrets | {"CA_FILE", "CWH_GAMEDAY", "CWH_BLOCK_ON_INCONCLUSIVE"}:
        assert f"`{name}`" in readme, name


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1)")
def test_the_schema_check_needs_no_network() -> None:
    """In a network namespace of its own (no interface but a down loopback), when this user
    may make one: the vendored schemas are all it reads."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip("unshare -n is not permitted here")
    done = subprocess.run(
        [
            "unshare",
            "-n",
            str(CHECK_JSONSCHEMA),
            "--builtin-schema",
            "vendor.gitlab-ci",
            str(GITLAB),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
