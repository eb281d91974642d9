"""Credentials and the TLS certificate, generated at first start and kept in the run directory.

They never enter the repository, and they survive `down`/`up`, so data directories stay usable.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from env.files import write_file


@dataclass(frozen=True)
class Secrets:
    """Passwords of the environment's accounts.

    Attributes:
        patroni_rest: password of user `cwh` on Patroni's REST API, which its unsafe endpoints
            (`/switchover`, `/restart`, `/reinitialize`, ...) require.
        etcd_root: password of etcd's `root` user (Patroni's and the harness's).
    """

    pg_superuser: str
    pg_replication: str
    pg_rewind: str
    pg_app: str
    haproxy_cookie_key: str
    #: What `POST /v1/devices` requires (`X-Registration-Secret`); `cwh env status --json` shows
    #: it, and the project's own clients read it from there.
    registration_secret: str = ""
    patroni_rest: str = ""
    etcd_root: str = ""

    @classmethod
    def load(cls, path: Path) -> Secrets:
        """The secrets of an existing run directory (a field added since is ""), for readers."""
        known = json.loads(path.read_text())
        return cls(**{name: known.get(name, "") for name in cls.__dataclass_fields__})

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        """Read the secrets file, creating it (private from the start) or adding new fields:
        first start, or a secret this version added; the ones there are kept."""
        known = json.loads(path.read_text()) if path.exists() else {}
        values = {
            name: known.get(name) or secrets.token_urlsafe(18) for name in cls.__dataclass_fields__
        }
        made = cls(**values)
        if values != known:
            write_file(path, json.dumps(asdict(made), indent=2))
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
    write_file(pem_path, cert_pem + key_pem)
    write_file(cert_path, cert_pem, mode=0o644)
