"""`cwh env rotate-keys`: a new token signing key, with no request of a phone failing.

The steps of `reference_impl.keyset`, each taken only once every API and hub replica reports
(`GET /admin/keys` on its own port) that it has seen the one before:

1. add a key (every replica can verify with it before any signs with it);
2. make it current (every replica signs with it);
3. give the old key a retirement time one token lifetime later (the longest a replica reports,
   plus the clock leeway): tokens it signed stay valid until they would have expired anyway.

Keys whose retirement has passed are pruned from the file at the next rotation.
`retire_old_keys` retires every other key at once instead, for a key believed compromised:
tokens it signed are refused from then on (their phones get new ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from env.layout import Layout
from env.local import LocalEnvironment
from env.process import wait_until
from env.settings import EnvSettings
from reference_impl import keyset

#: Replicas holding the key set: they sign (API) or verify (API, hub) tokens.
KEY_HOLDERS = ("api", "hub")

Progress = Callable[[str], None]


def keyset_path(settings: EnvSettings) -> Path:
    return Layout(settings.run_dir).services_dir / keyset.KEYSET_FILE


def replica_views(env: LocalEnvironment) -> dict[str, dict[str, Any] | None]:
    """Each running key holder's `/admin/keys`, None for one that does not answer now."""
    status = env.supervisor_status()
    if status is None:
        raise RuntimeError("the supervisor does not answer: is the environment up?")
    views: dict[str, dict[str, Any] | None] = {}
    for comp in status["components"]:
        if comp["kind"] in KEY_HOLDERS and comp["pid"] is not None:
            url = f"http://127.0.0.1:{comp['ports']['http']}/admin/keys"
            try:
                resp = requests.get(url, timeout=5)
                views[comp["name"]] = resp.json() if resp.ok else None
            except (requests.RequestException, ValueError):
                views[comp["name"]] = None
    return views


def _wait_all(env: LocalEnvironment, holds: Callable[[dict[str, Any]], bool], what: str) -> None:
    """Until every running key holder answers and `holds` for its view. A replica that is down
    now reads the file when it starts, so it cannot lag behind."""

    def done() -> bool | None:
        views = replica_views(env)
        ok = bool(views) and all(v is not None and holds(v) for v in views.values())
        return ok or None

    wait_until(done, env.settings.timeout(30), what, interval_s=0.2)


def rotate_keys(
    settings: EnvSettings, retire_after_s: float | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Rotate the signing key; returns the new kid and when the old ones retire.

    Args:
        retire_after_s: seconds from the switch until the old key retires; None (the default)
            is the longest token lifetime the replicas report plus their clock leeway, the
            shortest time that refuses no token a phone may still hold.

    Raises:
        DeadlineExceeded: a replica did not take a step in time (the file is left at the step
            reached: run it again, the steps before are idempotent in effect).
    """
    say = progress or (lambda _: None)
    env = LocalEnvironment(settings)
    path = keyset_path(settings)
    pruned = keyset.prune(path, time.time())
    new = keyset.add_key(path)
    say(f"added key {new.kid}; waiting until every replica knows it")
    _wait_all(env, lambda v: new.kid in v["kids"], f"every replica knows key {new.kid}")
    keyset.make_current(path, new.kid)
    say(f"key {new.kid} is current; waiting until every replica signs with it")
    _wait_all(env, lambda v: v["current"] == new.kid, f"every replica signs with {new.kid}")
    if retire_after_s is None:
        views = [v for v in replica_views(env).values() if v is not None]
        retire_after_s = max(float(v["token_ttl_s"]) + float(v["leeway_s"]) for v in views)
    retire_at = time.time() + retire_after_s
    retiring = keyset.retire_others(path, retire_at)
    say(f"old key(s) {', '.join(retiring) or '-'} retire in {retire_after_s:.0f} s")
    return {
        "kid": new.kid,
        "retiring": retiring,
        "retire_at": retire_at,
        "retire_after_s": retire_after_s,
        "pruned": pruned,
    }


def retire_old_keys(settings: EnvSettings) -> dict[str, Any]:
    """Retire every key but the current one now, and wait until no replica accepts them."""
    env = LocalEnvironment(settings)
    path = keyset_path(settings)
    retiring = keyset.retire_others(path, time.time())
    current = keyset.load(path).current
    _wait_all(env, lambda v: v["kids"] == [current], "every replica refuses the retired keys")
    return {"kid": current, "retired": retiring}
