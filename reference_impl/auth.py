"""Device credentials and access tokens: RS256 JWTs naming the device, keys published as JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

ISSUER = "cloudwatcher-local"
AUDIENCE = "cloudwatcher-api"


def _b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged or expired; the message says which."""


@dataclass(frozen=True)
class Claims:
    device_id: uuid.UUID
    client_id: str
    expires_at: int


class TokenIssuer:
    """Signs and verifies access tokens with one RSA key shared by every API replica."""

    def __init__(self, key_path: Path, ttl_s: int) -> None:
        pem = key_path.read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, RSAPrivateKey)
        self._private = key
        self._public = key.public_key()
        numbers = self._public.public_numbers()
        self.kid = hashlib.sha256(
            self._public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest()[:16]
        self.jwk = {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }
        self.ttl_s = ttl_s

    def issue(self, device_id: uuid.UUID, client_id: str) -> tuple[str, int]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(device_id),
            "client_id": client_id,
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.ttl_s,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._private, algorithm="RS256", headers={"kid": self.kid})
        return token, self.ttl_s

    def verify(self, token: str) -> Claims:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._public,
                algorithms=["RS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "iss", "aud"]},
                leeway=5,
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
    return hmac.compare_digest(hashlib.sha256(secret.encode()).digest(), secret_hash)


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer …` header; InvalidToken when there is none."""
    if not header:
        raise InvalidToken("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("expected 'Authorization: Bearer <token>'")
    return token.strip()
