"""The signing key set: mode 0600 from creation, verification by `kid`, rotation's steps, and
replicas picking up a changed set without a restart."""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from reference_impl import keyset
from reference_impl.auth import InvalidToken, TokenIssuer
from reference_impl.keys import ensure_keys

DEVICE = uuid.UUID(int=7)


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / keyset.KEYSET_FILE


def test_key_files_are_0600_from_creation_never_chmodded(tmp_path, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a key file made readable first, then chmodded")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "fchmod", refuse)
    old = os.umask(0)  # the laxest umask: only the creation mode protects the file
    try:
        made = keyset.ensure(tmp_path / keyset.KEYSET_FILE)
        keyset.add_key(tmp_path / keyset.KEYSET_FILE)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / keyset.KEYSET_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [keyset.KEYSET_FILE]  # no temp file left
    assert keyset.load(tmp_path / keyset.KEYSET_FILE).current == made.current


def test_a_legacy_single_key_becomes_the_first_key_and_its_tokens_still_verify(tmp_path):
    legacy = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "jwt-signing-key.pem"
    pem.write_bytes(
        legacy.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ensure_keys(tmp_path)
    assert not pem.exists()
    issuer = TokenIssuer(tmp_path / keyset.KEYSET_FILE, 900)
    assert issuer.kid == keyset.kid_of(legacy)
    now = int(time.time())
    claims = {"iss": "cloudwatcher-local", "aud": "cloudwatcher-api", "sub": str(DEVICE)}
    token = jwt.encode(
        {**claims, "exp": now + 60},
        legacy,
        algorithm="RS256",
        headers={"kid": keyset.kid_of(legacy)},
    )
    assert issuer.verify(token).device_id == DEVICE


def test_rotation_steps_sign_and_verify_by_kid(path):
    keyset.ensure(path)
    api1, api2 = TokenIssuer(path, 900), TokenIssuer(path, 900)
    old_token, _ = api1.issue(DEVICE, "c")
    old_kid = kid(old_token)

    new = keyset.add_key(path)
    # Known to every replica, not signing yet.
    api1.refresh(now=True)
    assert kid(api1.issue(DEVICE, "c")[0]) == old_kid
    assert {k["kid"] for k in api1.jwks()["keys"]} == {old_kid, new.kid}

    keyset.make_current(path, new.kid)
    api1.refresh(now=True)
    new_token, _ = api1.issue(DEVICE, "c")
    assert kid(new_token) == new.kid
    # api2 has not looked at the file since: the unknown kid makes it look at once.
    assert api2.verify(new_token).device_id == DEVICE
    assert api2.verify(old_token).device_id == DEVICE

    assert keyset.retire_others(path, time.time() + 3600) == [old_kid]
    api2.refresh(now=True)
    assert api2.verify(old_token).device_id == DEVICE  # until its retirement time
    assert api2.describe()["retiring"].keys() == {old_kid}

    keyset.retire_others(path, time.time())
    api2.refresh(now=True)
    with pytest.raises(InvalidToken, match="retired"):
        api2.verify(old_token)
    assert [k["kid"] for k in api2.jwks()["keys"]] == [new.kid]
    assert api2.verify(new_token).device_id == DEVICE

    assert keyset.prune(path, time.time() + 1) == [old_kid]
    assert [k.kid for k in keyset.load(path).keys] == [new.kid]


def test_tokens_without_a_known_kid_are_refused(path):
    keyset.ensure(path)
    issuer = TokenIssuer(path, 900)
    token, _ = issuer.issue(DEVICE, "c")
    header_less = jwt.encode(
        jwt.decode(token, options={"verify_signature": False}),
        keyset.load(path).signing.private,
        algorithm="RS256",
    )
    with pytest.raises(InvalidToken, match="no key id"):
        issuer.verify(header_less)
    with pytest.raises(InvalidToken):
        issuer.verify("not.a.token")


def test_a_retired_or_unknown_key_cannot_become_current(path):
    keyset.ensure(path)
    with pytest.raises(keyset.KeySetError):
        keyset.make_current(path, "nope")
    new = keyset.add_key(path)
    assert keyset.retire_others(path, time.time()) == [new.kid]  # never the current key
    assert keyset.load(path).signing.retire_at is None
    with pytest.raises(keyset.KeySetError):
        keyset.make_current(path, new.kid)
