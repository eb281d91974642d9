"""The environment's CA and server certificates: made once, private from the start, verifiable."""

from __future__ import annotations

import json
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from env.layout import Layout
from env.secrets import CertificateAuthority, Secrets, client_tls_context, ensure_environment_tls

ME = (os.getuid(), os.getgid())


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> str:
    """A TLS handshake between two contexts in memory; the negotiated version."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side in (c, s):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            return str(c.version())
    raise AssertionError("handshake did not finish")


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    lay = Layout(tmp_path)
    lay.haproxy_dir.mkdir()
    return lay


def test_keys_are_private_from_their_creation(layout: Layout, monkeypatch: pytest.MonkeyPatch):
    """Under a umask of 0 and with chmod forbidden, every key still ends up 0600: each was
    created with its final mode, never written first and restricted after."""

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"chmod{args}: a file was created with the wrong mode")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old = os.umask(0)
    try:
        ensure_environment_tls(layout, ME)
        Secrets.load_or_create(layout.secrets)
    finally:
        os.umask(old)
    private = [
        layout.ca_key,
        layout.server_key("postgres"),
        layout.server_key("redis"),
        layout.tls_pem,
        layout.secrets,
    ]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(layout.ca_cert.stat().st_mode) == 0o644


@pytest.mark.parametrize("server", ["postgres", "redis"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_server_certificates_verify_against_the_ca(layout: Layout, server: str, host: str):
    ensure_environment_tls(layout, ME)
    srv = server_context(layout.server_cert(server), layout.server_key(server))
    assert handshake(srv, client_tls_context(layout.ca_cert), host).startswith("TLSv1.")


def test_a_name_outside_the_certificate_or_another_ca_is_refused(layout: Layout, tmp_path: Path):
    ensure_environment_tls(layout, ME)
    srv = server_context(layout.server_cert("redis"), layout.server_key("redis"))
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(srv, client_tls_context(layout.ca_cert), "example.com")
    other = CertificateAuthority.load_or_create(tmp_path / "o.crt", tmp_path / "o.key")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(srv, client_tls_context(other.cert_path), "127.0.0.1")


def test_haproxy_pem_is_signed_by_the_ca(layout: Layout):
    ensure_environment_tls(layout, ME)
    srv = server_context(layout.tls_pem, layout.tls_pem)
    assert handshake(srv, client_tls_context(layout.ca_cert), "localhost") == "TLSv1.3"


def test_made_once_then_kept(layout: Layout):
    ensure_environment_tls(layout, ME)
    files = [layout.ca_cert, layout.ca_key, layout.server_cert("postgres"), layout.tls_pem]
    before = {p: p.read_bytes() for p in files}
    ensure_environment_tls(layout, ME)
    assert {p: p.read_bytes() for p in files} == before


def test_a_run_directory_from_before_the_ca_is_upgraded(layout: Layout):
    """A self-signed HAProxy certificate (what earlier versions made) is replaced by one the CA
    signed; so is any server certificate of another CA."""
    other = CertificateAuthority.load_or_create(layout.run_dir / "o.crt", layout.run_dir / "o.key")
    other.ensure_server_files(layout.tls_pem, layout.tls_pem, "cloudwatcher.local")
    ensure_environment_tls(layout, ME)
    ca = CertificateAuthority.load_or_create(layout.ca_cert, layout.ca_key)
    assert ca.issued_this(x509.load_pem_x509_certificate(layout.tls_pem.read_bytes()))
    # The CA itself lost: everything is issued anew by the new one.
    layout.ca_key.unlink()
    ensure_environment_tls(layout, ME)
    ca2 = CertificateAuthority.load_or_create(layout.ca_cert, layout.ca_key)
    assert ca2.cert != ca.cert
    for path in (layout.server_cert("postgres"), layout.server_cert("redis"), layout.tls_pem):
        assert ca2.issued_this(x509.load_pem_x509_certificate(path.read_bytes())), path


def test_an_older_secrets_file_gains_the_new_secrets_and_keeps_the_old(tmp_path: Path):
    path = tmp_path / "secrets.json"
    old = {
        "pg_superuser": "a",
        "pg_replication": "b",
        "pg_rewind": "c",
        "pg_app": "d",
        "haproxy_cookie_key": "e",
    }
    path.write_text(json.dumps(old))
    upgraded = Secrets.load_or_create(path)
    assert upgraded.pg_app == "d"
    assert len(upgraded.redis_app) >= 20
    assert Secrets.load_or_create(path) == upgraded
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
