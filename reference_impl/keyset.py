"""The access tokens' signing keys: a set of RSA keys, one current (it signs), every live one
verifies (a token names its key by `kid`).

One JSON file in the state directory, shared by every API and hub replica, written atomically
and with mode 0600 from its creation (never a window in which another user could read it).
Rotation (`cwh env rotate-keys`, `env/rotation.py`) changes it in three steps, each taken once
every replica has seen the one before:

1. add a key: replicas verify with it before anyone signs with it;
2. make it current: replicas sign with it;
3. retire the old one at `retire_at`, the longest token lifetime after step 2: until then the
   tokens it signed still verify; after it they are refused, and a later rotation prunes it.

Replicas re-read the file when it changes (`auth.TokenIssuer`), so nothing restarts.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

#: The key set's file name in the services' state directory.
KEYSET_FILE = "jwt-keyset.json"


class KeySetError(RuntimeError):
    """The key set file is missing, malformed, or a change to it makes no sense; says which."""


def _b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def kid_of(key: RSAPrivateKey) -> str:
    """The key id: a hash of the public key (the same key always gets the same id)."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """Attributes:
    kid: the key id tokens carry in their header.
    private: the RSA key (2048 bits).
    created_at: when it was made, Unix seconds.
    retire_at: from this time on (Unix seconds) it verifies nothing; None while it serves.
    """

    kid: str
    private: RSAPrivateKey
    created_at: float
    retire_at: float | None = None

    def retired(self, now: float) -> bool:
        return self.retire_at is not None and now >= self.retire_at

    @property
    def jwk(self) -> dict[str, str]:
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }


@dataclass(frozen=True)
class KeySet:
    """Attributes:
    current: the kid of the key that signs new tokens.
    keys: every key in the file, retired ones included until pruned.
    """

    current: str
    keys: tuple[SigningKey, ...]

    def get(self, kid: str) -> SigningKey | None:
        return next((k for k in self.keys if k.kid == kid), None)

    @property
    def signing(self) -> SigningKey:
        key = self.get(self.current)
        if key is None:
            raise KeySetError(f"the current key {self.current} is not in the set")
        return key

    def live(self, now: float) -> list[SigningKey]:
        """The keys that verify at `now` (the current one always does)."""
        return [k for k in self.keys if k.kid == self.current or not k.retired(now)]


def generate(now: float | None = None) -> SigningKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid_of(key), key, time.time() if now is None else now)


def load(path: Path) -> KeySet:
    """Read the key set.

    Raises:
        KeySetError: missing, malformed, or its current key is not in it.
    """
    try:
        raw = json.loads(path.read_text())
        keys = []
        for item in raw["keys"]:
            private = serialization.load_pem_private_key(item["pem"].encode(), password=None)
            if not isinstance(private, RSAPrivateKey):
                raise KeySetError(f"{path}: key {item['kid']} is not an RSA key")
            keys.append(
                SigningKey(item["kid"], private, float(item["created_at"]), item.get("retire_at"))
            )
        keyset = KeySet(str(raw["current"]), tuple(keys))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeySetError(f"{path}: cannot read the key set: {exc!r}") from None
    keyset.signing  # noqa: B018 - validates that the current key is there
    return keyset


def save(path: Path, keyset: KeySet) -> None:
    """Replace the file atomically; the new file has mode 0600 from the moment it exists."""
    keyset.signing  # noqa: B018 - never write a set that cannot sign
    doc: dict[str, Any] = {
        "current": keyset.current,
        "keys": [
            {
                "kid": k.kid,
                "created_at": k.created_at,
                "retire_at": k.retire_at,
                "pem": k.private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
            }
            for k in keyset.keys
        ],
    }
    # mkstemp creates the file with mode 0600 (O_EXCL), in the same folder so rename is atomic.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # The replacement keeps the owner: a rotation run by root must leave the set readable by
        # services that run as an unprivileged user (env/users.py).
        with contextlib.suppress(FileNotFoundError, PermissionError):
            st = os.stat(path)
            os.fchown(fd, st.st_uid, st.st_gid)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def ensure(path: Path, legacy_pem: Path | None = None) -> KeySet:
    """The key set at `path`, made (one current key) unless it exists. A single signing key
    from before key sets (`legacy_pem`) becomes its first key, so tokens it signed still verify,
    and its file goes: one copy of a private key is enough."""
    if path.exists():
        return load(path)
    if legacy_pem is not None and legacy_pem.exists():
        private = serialization.load_pem_private_key(legacy_pem.read_bytes(), password=None)
        assert isinstance(private, RSAPrivateKey)
        first = SigningKey(kid_of(private), private, legacy_pem.stat().st_mtime)
    else:
        first = generate()
    keyset = KeySet(first.kid, (first,))
    save(path, keyset)
    if legacy_pem is not None:
        with contextlib.suppress(FileNotFoundError):
            legacy_pem.unlink()
    return keyset


def add_key(path: Path) -> SigningKey:
    """Step 1: a new key in the set, not yet current."""
    keyset = load(path)
    new = generate()
    save(path, replace(keyset, keys=(*keyset.keys, new)))
    return new


def make_current(path: Path, kid: str) -> None:
    """Step 2: `kid` signs from now on (the old current key still verifies)."""
    keyset = load(path)
    key = keyset.get(kid)
    if key is None or key.retire_at is not None:
        raise KeySetError(f"{kid} is not a live key of the set")
    save(path, replace(keyset, current=kid))


def retire_others(path: Path, at: float) -> list[str]:
    """Step 3: every key but the current one verifies nothing from `at` on (an earlier
    retirement already set stays). Returns the kids newly given a retirement time."""
    keyset = load(path)
    changed = []
    keys = []
    for k in keyset.keys:
        if k.kid != keyset.current and (k.retire_at is None or k.retire_at > at):
            changed.append(k.kid)
            k = replace(k, retire_at=at)
        keys.append(k)
    save(path, replace(keyset, keys=tuple(keys)))
    return changed


def prune(path: Path, now: float) -> list[str]:
    """Drop keys retired before `now` from the file; returns their kids."""
    keyset = load(path)
    gone = [k.kid for k in keyset.keys if k.kid != keyset.current and k.retired(now)]
    if gone:
        save(path, replace(keyset, keys=tuple(k for k in keyset.keys if k.kid not in gone)))
    return gone
