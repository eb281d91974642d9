"""Key material, generated once by the environment into the state directory (never the repo)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def ensure_keys(state_dir: Path) -> None:
    """Create the JWT signing key and the field-encryption key unless they exist."""
    state_dir.mkdir(parents=True, exist_ok=True)
    jwt_key = state_dir / "jwt-signing-key.pem"
    if not jwt_key.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(
            jwt_key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    field_key = state_dir / "field-encryption.key"
    if not field_key.exists():
        _write_private(field_key, secrets.token_bytes(32))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
