"""Device credentials and access tokens: RS256 JWTs naming the device, signed by a key of a
rotating key set (`reference_impl.keyset`) and published as JWKS."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from reference_impl import keyset

ISSUER = "cloudwatcher-local"
AUDIENCE = "cloudwatcher-api"

log = logging.getLogger("cw.auth")


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged or expired; the message says which."""


@dataclass(frozen=True)
class Claims:
    device_id: uuid.UUID
    client_id: str
    expires_at: int


#: How often a replica looks at the key set file for changes (a stat; it re-reads on a change).
KEYSET_CHECK_S = 1.0
#: Clock skew allowed between the issuer and a verifier.
LEEWAY_S = 5


class TokenIssuer:
    """Signs with the key set's current key and verifies by a token's `kid` against every live
    key of the set (`reference_impl.keyset`), which every API and hub replica shares.

    The set is re-read when its file changes: checked at most every `KEYSET_CHECK_S`, and at
    once for a token whose `kid` it does not know (a key another replica already signs with).
    """

    def __init__(self, key_path: Path, ttl_s: int) -> None:
        self.path = key_path
        self.ttl_s = ttl_s
        self._keys = keyset.load(key_path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    def refresh(self, now: bool = False) -> None:
        """Re-read the key set if its file changed (looked at only every KEYSET_CHECK_S unless
        `now`). A file that cannot be read leaves the keys as they were."""
        mono = time.monotonic()
        if not now and mono - self._checked < KEYSET_CHECK_S:
            return
        self._checked = mono
        try:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._keys = keyset.load(self.path)
                self._stamp = stamp
                log.info("key set reloaded: current key %s", self._keys.current)
        except (OSError, keyset.KeySetError) as exc:
            log.warning("key set not reloaded, keeping the keys I have: %s", exc)

    @property
    def kid(self) -> str:
        """The kid of the key that signs new tokens."""
        self.refresh()
        return self._keys.current

    def jwks(self) -> dict[str, Any]:
        """Every key a token may be verified with, as a JWK Set."""
        self.refresh()
        return {"keys": [k.jwk for k in self._keys.live(time.time())]}

    def describe(self) -> dict[str, Any]:
        """What this replica holds, for `cwh env rotate-keys` (which waits on every replica)."""
        self.refresh(now=True)
        now = time.time()
        return {
            "current": self._keys.current,
            "kids": [k.kid for k in self._keys.live(now)],
            "retiring": {k.kid: k.retire_at for k in self._keys.live(now) if k.retire_at},
            "token_ttl_s": self.ttl_s,
            "leeway_s": LEEWAY_S,
        }

    def issue(self, device_id: uuid.UUID, client_id: str) -> tuple[str, int]:
        self.refresh()
        key = self._keys.signing
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(device_id),
            "client_id": client_id,
            "iat": now,
            "nbf": now - LEEWAY_S,
            "exp": now + self.ttl_s,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid})
        return token, self.ttl_s

    def _key_for(self, token: str) -> keyset.SigningKey:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {type(exc).__name__}") from None
        if not isinstance(kid, str):
            raise InvalidToken("invalid token: no key id (kid)")
        self.refresh()
        key = self._keys.get(kid)
        if key is None:  # perhaps added a moment ago: look at the file now
            self.refresh(now=True)
            key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("invalid token: unknown signing key")
        if kid != self._keys.current and key.retired(time.time()):
            raise InvalidToken("invalid token: its signing key is retired")
        return key

    def verify(self, token: str) -> Claims:
        key = self._key_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.private.public_key(),
                algorithms=["RS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "iss", "aud"]},
                leeway=LEEWAY_S,
            )
            return Claims(
                uuid.UUID(claims["sub"]), str(claims.get("client_id", "")), int(claims["exp"])
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except (jwt.InvalidTokenError, ValueError, KeyError) as exc:
            raise InvalidToken(f"invalid token: {type(exc).__name__}") from None


def new_client_credentials() -> tuple[str, str, bytes]:
    """(client_id, client_secret, secret_hash). The secret is 256 random bits: a plain SHA-256
    is a sound verifier for it (no dictionary to attack), and it keeps the token path fast."""
    client_id = "cw_" + secrets.token_hex(12)
    secret = secrets.token_urlsafe(32)
    return client_id, secret, hashlib.sha256(secret.encode()).digest()


def secret_matches(secret: str, secret_hash: bytes) -> bool:
    return hmac.compare_digest(hashlib.sha256(_utf8(secret)).digest(), secret_hash)


def same_secret(given: str, expected: str) -> bool:
    """Whether a shared secret a client sent is the expected one, in constant time."""
    return hmac.compare_digest(_utf8(given), _utf8(expected))


def _utf8(text: str) -> bytes:
    # aiohttp decodes headers and forms with surrogateescape: keep the bytes the client sent.
    return text.encode("utf-8", "surrogateescape")


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer …` header; InvalidToken when there is none."""
    if not header:
        raise InvalidToken("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("expected 'Authorization: Bearer <token>'")
    return token.strip()


def key_status(issuer: TokenIssuer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`GET /admin/keys` (a replica's own port; never public): the keys this replica holds."""

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.json_response(issuer.describe())

    return handler
