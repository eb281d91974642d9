"""Credentials and the TLS certificate, generated at first start and kept in the run directory.

They never enter the repository, and they survive `down`/`up`, so data directories stay usable.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Secrets:
    """Passwords of the environment's accounts."""

    pg_superuser: str
    pg_replication: str
    pg_rewind: str
    pg_app: str
    haproxy_cookie_key: str
    #: What `POST /v1/devices` requires (`X-Registration-Secret`); `cwh env status --json` shows
    #: it, and the project's own clients read it from there.
    registration_secret: str = ""

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        have = json.loads(path.read_text()) if path.exists() else {}
        if all(have.get(name) for name in cls.__dataclass_fields__):
            return cls(**{name: have[name] for name in cls.__dataclass_fields__})
        # First start, or a secret this version added: keep the ones there, make the rest.
        made = cls(
            **{
                name: have.get(name) or secrets.token_urlsafe(18)
                for name in cls.__dataclass_fields__
            }
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(made), indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
        return made


def ensure_tls_certificate(pem_path: Path, cert_path: Path) -> None:
    """Write a self-signed certificate for 127.0.0.1 and localhost, unless one is there.

    `pem_path` gets certificate and key (HAProxy's format), `cert_path` the certificate alone.
    """
    if pem_path.exists() and cert_path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudwatcher.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("cloudwatcher.local"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem_path.write_bytes(cert_pem + key_pem)
    os.chmod(pem_path, 0o600)
    cert_path.write_bytes(cert_pem)
