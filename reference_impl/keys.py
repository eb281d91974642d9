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
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
