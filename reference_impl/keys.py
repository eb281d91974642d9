"""Key material, generated once by the environment into the state directory (never the repo)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from reference_impl import keyset


def ensure_keys(state_dir: Path) -> None:
    """Create the JWT signing key set and the field-encryption key unless they exist."""
    state_dir.mkdir(parents=True, exist_ok=True)
    # A run directory from before key sets holds one signing key: it becomes the set's first.
    keyset.ensure(state_dir / keyset.KEYSET_FILE, legacy_pem=state_dir / "jwt-signing-key.pem")
    field_key = state_dir / "field-encryption.key"
    if not field_key.exists():
        _write_private(field_key, secrets.token_bytes(32))


def _write_private(path: Path, data: bytes) -> None:
    """Created 0600 (never readable by others, not even between a write and a chmod), then
    renamed into place, so a reader sees no key or the whole key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
