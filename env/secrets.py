"""Credentials and the environment's own certificate authority, generated at first start and kept
in the run directory.

They never enter the repository, and they survive `down`/`up`, so data directories stay usable.
Every file holding a secret is created with its final mode (0600) and, where another OS user
needs it, its final owner, before a byte is written: there is no moment when it is readable by
anyone else.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from env.backup import PG_CN, REPO_CN, server_names
from env.files import write_file
from env.layout import Layout

#: Server certificates are renewed at start-up when they have less than this left.
RENEW_BEFORE = dt.timedelta(days=30)
SERVER_CERT_LIFETIME = dt.timedelta(days=365)
CA_LIFETIME = dt.timedelta(days=3650)


@dataclass(frozen=True)
class Secrets:
    """Passwords of the environment's accounts.

    Redis has one ACL user per kind of client: `redis_app` the services (only the commands and
    keys they use), `redis_admin` the harness (cluster creation, probes, tests),
    `redis_replication` a replica to its master, `redis_exporter` the metrics exporter.

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
    redis_app: str = ""
    redis_admin: str = ""
    redis_replication: str = ""
    redis_exporter: str = ""
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
        values = {name: known.get(name) or _draw() for name in cls.__dataclass_fields__}
        made = cls(**values)
        if values != known:
            write_file(path, json.dumps(asdict(made), indent=2))
        return made


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertificateAuthority:
    """The environment's CA: it signs the certificates of HAProxy's HTTPS frontend, PostgreSQL,
    pgBouncer and Redis; every client of the environment trusts `cert_path` and nothing else."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path

    @classmethod
    def load_or_create(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return cls(cert, key, cert_path)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudwatcher environment CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        # The key first: a CA certificate without its key would be issued anew at the next start.
        write_file(key_path, _pem_key(key))
        write_file(cert_path, _pem_cert(cert), mode=0o644)
        return cls(cert, key, cert_path)

    def issued_this(self, cert: x509.Certificate) -> bool:
        """True when `cert` was signed by this CA and is valid for a while yet."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE

    def issue(
        self,
        common_name: str,
        dns_names: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = (),
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A server certificate for 127.0.0.1, `ips` and `dns_names`, usable as a TLS client
        certificate too (Redis nodes present theirs to each other on the cluster bus and for
        replication)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", *ips)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + SERVER_CERT_LIFETIME)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key

    def ensure_server_files(
        self,
        cert_path: Path,
        key_path: Path,
        common_name: str,
        owner: tuple[int, int] | None = None,
        dns_names: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = (),
    ) -> None:
        """Certificate and key of one server, issued unless the ones there are this CA's and
        name every address of `ips` (the containers runtime's: `env/network.py`).

        `owner` (uid, gid): the OS user the server runs as, who alone may read the key. With
        `key_path == cert_path` both go into one file (HAProxy's format).
        """
        if cert_path.exists() and key_path.exists():
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if self.issued_this(current) and covers(current, ips, dns_names):
                if owner is not None:  # the server's user may have changed since (root before)
                    for path in {cert_path, key_path}:
                        os.chown(path, *owner)
                return
        cert, key = self.issue(common_name, dns_names, ips)
        if key_path == cert_path:
            write_file(cert_path, _pem_cert(cert) + _pem_key(key), owner=owner)
            return
        write_file(key_path, _pem_key(key), owner=owner)
        write_file(cert_path, _pem_cert(cert), mode=0o644, owner=owner)


def ensure_environment_tls(
    layout: Layout,
    pg_owner: tuple[int, int] | None,
    redis_owner: tuple[int, int] | None = None,
    backup_owner: tuple[int, int] | None = None,
    backups: bool = False,
    ips: tuple[str, ...] = (),
) -> None:
    """The CA and every server's certificate, made at first start and renewed when they near
    their end or were signed by another CA (a run directory from before the CA existed).

    `pg_owner`, `redis_owner`, `backup_owner`: the OS users PostgreSQL (with pgBouncer and the
    database host's pgBackRest), Redis and the backup repository host run as, each the only
    reader of its key (None: ours). `backups`: the two pgBackRest hosts' certificates too (each
    is also the client certificate the other side accepts). `ips`: the addresses servers have
    besides 127.0.0.1 (the containers runtime's), which their certificates must name."""
    layout.tls_dir.mkdir(mode=0o755, exist_ok=True)
    ca = CertificateAuthority.load_or_create(layout.ca_cert, layout.ca_key)
    # PostgreSQL refuses a key readable by others or owned by another user; pgBouncer runs as
    # the same user and uses the same pair.
    ca.ensure_server_files(
        layout.server_cert("postgres"),
        layout.server_key("postgres"),
        "postgres",
        pg_owner,
        ips=ips,
    )
    ca.ensure_server_files(
        layout.server_cert("redis"), layout.server_key("redis"), "redis", redis_owner, ips=ips
    )
    if backups:
        for cn, owner in ((REPO_CN, backup_owner), (PG_CN, pg_owner)):
            ca.ensure_server_files(
                layout.server_cert(cn), layout.server_key(cn), cn, owner, server_names(cn), ips
            )
    ca.ensure_server_files(
        layout.tls_pem,
        layout.tls_pem,
        "cloudwatcher.local",
        None,
        ("localhost", "cloudwatcher.local"),
        ips,
    )


def covers(cert: x509.Certificate, ips: tuple[str, ...], dns_names: tuple[str, ...] = ()) -> bool:
    """Whether `cert` names every address of `ips` and every name of `dns_names`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not ips and not dns_names
    named = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return set(ips) <= named and set(dns_names) <= set(san.get_values_for_type(x509.DNSName))


def client_tls_context(ca_file: Path | str) -> ssl.SSLContext:
    """A client context that trusts only `ca_file` and checks the host name (verify-full)."""
    return ssl.create_default_context(cafile=str(ca_file))


def _draw() -> str:
    """A new secret: URL-safe, and never starting with "-". A command line takes a value that
    starts with one for an option (`--registration-secret -x...`: "expected one argument"), and
    one secret in 64 did; CI's distributed-fleet tests failed so."""
    while (value := secrets.token_urlsafe(18)).startswith("-"):
        continue
    return value
