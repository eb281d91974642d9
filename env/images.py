"""The containers runtime's image, built here with no image registry.

- `debian:bookworm-slim`, the Dockerfile's base: pulled where a registry answers; otherwise
  built from Debian's packages (`debootstrap --variant=minbase bookworm`, with the official
  image's apt sources) and imported under that tag, so the Dockerfile does not change. Its root
  filesystem is kept as a tarball in the cache directory, for the next engine.
- `cwh-stack:<content hash>` (`deploy/images/Dockerfile`): every package of the stack from
  Debian, the services' Python dependencies as wheels downloaded on the host (a build needs no
  PyPI and no proxy certificate), and the project's code. The tag is the hash of everything that
  goes into the build, so an unchanged tree is never built twice.

One image for every box: the stack's packages are one set (the local runtime's), one build
caches once, and each replica still runs in its own container with its own limits and address.
`python -m env.images` (`make images`) builds both and prints what it cost.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from env.commands import IMAGE_JEMALLOC, PROJECT_ROOT

IMAGE_DIR = PROJECT_ROOT / "deploy" / "images"
BASE = "debian:bookworm-slim"
REPOSITORY = "cwh-stack"
CACHE_DIR = Path("/var/cache/cwh")
#: The project's packages a replica runs (`python -m reference_impl`, `python -m env.faultproxy`),
#: the harness's fleet on Kubernetes (`python -m cwh.cli load --master | --worker`,
#: deploy/base/locust.yaml): its CLI, the phones and the reconciliation and gate it ends with;
#: and the game day on Kubernetes (`python -m cwh.cli chaos gameday`, the CronJob): the
#: experiments and their activities.
CODE = ("reference_impl", "env", "cwh", "scenarios", "slo", "experiments")
#: What the services import from PyPI: pinned as in pyproject.toml.
SERVICE_REQUIREMENTS = (
    "aiohttp",
    "asyncpg",
    "redis",
    "cryptography",
    "PyJWT",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "prometheus-client",
    "psutil",
    "PyYAML",
    "uvloop",  # the fault proxy's event loop
)
#: What `cwh load` adds (cwh/cli.py, cwh/fleet.py, scenarios/, slo/): Locust and the phones'
#: clients, the CLI's console, HDR histograms, the gate's Prometheus client. The rest of the
#: harness's pins (chaos, plots, tests, containers) stays out of the image.
FLEET_REQUIREMENTS = (
    "locust",
    "requests",
    "rich",
    "hdrhistogram",
    "websocket-client",
    "prometheus-api-client",
)
#: What the game day adds (deploy/base/gameday-cronjob.yaml): Chaos Toolkit and its Kubernetes
#: and Toxiproxy drivers, the client they go through, and what the activities and the run's plot
#: import.
GAMEDAY_REQUIREMENTS = (
    "chaostoolkit",
    "chaostoolkit-kubernetes",
    "kubernetes",
    "chaostoolkit-toxiproxy",
    "toxiproxy-python",
    "future",
    "psycopg",
    "matplotlib",
)
#: What those need on the image's Python (Debian's 3.11.2) but not on this one: markers are
#: evaluated here, on the host's Python, when the wheels are downloaded.
IMAGE_PYTHON_EXTRAS = ("async-timeout>=4.0.3",)
#: Where the image has them (`env.commands.Commands` fields).
IN_IMAGE: dict[str, Any] = {
    "python": "/opt/cwh/venv/bin/python",
    "code_root": Path("/opt/cwh/src"),
    "malloc": IMAGE_JEMALLOC,  # the Dockerfile installs libjemalloc2 and links it there
}
#: The official image's apt sources, which a minbase debootstrap lacks (updates, security).
DEBIAN_SOURCES = """Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

Progress = Callable[[str], None]


class ImageError(RuntimeError):
    """An image could not be built; the message says what to install or read."""


def requirements(pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> str:
    """requirements.txt for the image: `SERVICE_REQUIREMENTS`, `FLEET_REQUIREMENTS` and
    `GAMEDAY_REQUIREMENTS` with pyproject.toml's pins. Raises ImageError naming any that
    pyproject.toml does not pin."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    wanted = {
        n.lower() for n in (*SERVICE_REQUIREMENTS, *FLEET_REQUIREMENTS, *GAMEDAY_REQUIREMENTS)
    }
    lines = [d for d in deps if re.split(r"[\[=<>! ]", d, maxsplit=1)[0].lower() in wanted]
    missing = wanted - {re.split(r"[\[=<>! ]", d, maxsplit=1)[0].lower() for d in lines}
    if missing:
        raise ImageError(f"pyproject.toml pins none of {sorted(missing)}")
    return "\n".join(sorted(lines)) + "\n"


def context_files() -> dict[str, bytes]:
    """Every file of the build context but the wheels (which `requirements.txt` determines)."""
    files = {
        "Dockerfile": (IMAGE_DIR / "Dockerfile").read_bytes(),
        "cwh-run": (IMAGE_DIR / "cwh-run").read_bytes(),
        "requirements.txt": requirements().encode(),
    }
    for package in CODE:
        for path in sorted((PROJECT_ROOT / package).rglob("*")):
            # .yml: SLO definitions in Sloth's format (slo/definitions), which the gate reads.
            if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".json"):
                files[f"src/{path.relative_to(PROJECT_ROOT)}"] = path.read_bytes()
    return files


def content_hash(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def stack_tag(files: dict[str, bytes] | None = None) -> str:
    """The image this tree runs: `cwh-stack:<hash of its build context>`."""
    return f"{REPOSITORY}:{content_hash(files or context_files())[:16]}"


def exists(client: Any, tag: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def ensure_base(client: Any, cache: Path = CACHE_DIR, progress: Progress = print) -> str:
    """`debian:bookworm-slim` in the engine: there already, pulled, or built here. Returns how."""
    from docker.errors import DockerException

    if exists(client, BASE):
        return "present"
    try:
        client.images.pull(BASE)
        return "pulled"
    except DockerException:
        progress(f"{BASE} cannot be pulled (no registry): building it from Debian's packages")
    tarball = cache / "bookworm-minbase.tar"
    if not tarball.exists():
        _debootstrap(tarball, progress)
    repository, tag = BASE.split(":")
    client.api.import_image_from_file(str(tarball), repository=repository, tag=tag)
    return "built"


def _debootstrap(tarball: Path, progress: Progress) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed: apt-get install debootstrap")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
        root = Path(tmp) / "root"
        progress("debootstrap --variant=minbase bookworm (about a minute)")
        done = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "bookworm",
                str(root),
                "http://deb.debian.org/debian",
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ImageError(f"debootstrap failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(DEBIAN_SOURCES)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        partial = tarball.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(root, arcname=".")
        partial.rename(tarball)


def _wheels(into: Path, cache: Path, progress: Progress) -> None:
    """The services' wheels, downloaded on the host (pip's cache and certificates) for the
    image's Python (Debian's 3.11 on x86-64 glibc: the same ABI as this venv's)."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    req = into / "requirements.txt"
    progress("downloading the services' wheels")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "-r",
            str(req),
            *IMAGE_PYTHON_EXTRAS,
            "-d",
            str(wheels),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise ImageError(f"pip download failed: {done.stderr[-2000:]}")
    shutil.copytree(wheels, into / "wheels")


def ensure_stack(
    client: Any, cache: Path = CACHE_DIR, progress: Progress = print
) -> tuple[str, bool]:
    """The stack image of this tree; (tag, True when it was built now)."""
    files = context_files()
    tag = stack_tag(files)
    if exists(client, tag):
        return tag, False
    ensure_base(client, cache, progress)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        for name, data in files.items():
            (ctx / name).parent.mkdir(parents=True, exist_ok=True)
            (ctx / name).write_bytes(data)
        (ctx / "cwh-run").chmod(0o755)
        _wheels(ctx, cache, progress)
        progress(f"docker build {tag} (the first build installs the stack: a few minutes)")
        try:
            client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True)
        except Exception as exc:
            log = getattr(exc, "build_log", None) or []
            tail = "".join(str(x.get("stream") or x.get("error") or "") for x in log)[-3000:]
            raise ImageError(f"docker build failed: {exc}\n{tail}") from None
    client.images.get(tag).tag(REPOSITORY, "latest")
    return tag, True


def size_mb(client: Any, tag: str) -> float:
    return round(float(client.images.get(tag).attrs["Size"]) / 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the containers runtime's images.")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR, help="debootstrap and wheels")
    args = parser.parse_args(argv)
    import docker

    from env import engine
    from env.containers import LABEL

    try:
        started = engine.ensure()
    except engine.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        client = docker.from_env()
        t0 = time.monotonic()
        how = ensure_base(client, args.cache)
        base_s = time.monotonic() - t0
        t1 = time.monotonic()
        tag, built = ensure_stack(client, args.cache)
        stack_s = time.monotonic() - t1
        print(f"{BASE}: {how} in {base_s:.1f} s, {size_mb(client, BASE)} MB")
        print(
            f"{tag}: {'built' if built else 'up to date'} in {stack_s:.1f} s, "
            f"{size_mb(client, tag)} MB"
        )
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if started:
            engine.stop_if_ours(LABEL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
