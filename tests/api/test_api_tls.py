"""The API over HTTPS, with KEY_DAEMON_TLS_CERT and KEY_DAEMON_TLS_KEY.

The certificate is made here, self-signed for 127.0.0.1, and the client
trusts exactly that certificate: the test proves the daemon serves it,
not merely that some TLS handshake happened.
"""

import datetime
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from api_daemon import ApiDaemon
    from runner import Torro


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "torro")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_api_serves_https_with_the_configured_certificate(
    api_factory: Callable[..., "ApiDaemon"], tmp_path: Path
) -> None:
    """The daemon listens on https:// and presents our certificate."""
    cert, key = make_certificate(tmp_path)
    daemon = api_factory(
        KEY_DAEMON_TLS_CERT=str(cert), KEY_DAEMON_TLS_KEY=str(key)
    )
    assert daemon.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=daemon.url, verify=context) as client:
        reply = client.get("/api/daemon/status")
    assert reply.status_code == 200
    assert reply.json()["healthy"] is True
    with httpx.Client(base_url=daemon.url.replace("https", "http")) as plain:
        try:
            plain.get("/api/daemon/status")
        except httpx.HTTPError:
            pass
        else:
            raise AssertionError("plain HTTP was answered on the TLS port")


def test_a_key_that_does_not_match_stops_the_start_with_one_line(
    torro: "Torro", tmp_path: Path
) -> None:
    """A certificate given as its own key is refused before listening."""
    cert, _key = make_certificate(tmp_path)
    outcome = torro.run(
        "daemon", "run",
        env={
            "KEY_DAEMON_API": "true",
            "KEY_DAEMON_PORT": "0",
            "KEY_DAEMON_TLS_CERT": str(cert),
            "KEY_DAEMON_TLS_KEY": str(cert),
        },
    )
    assert outcome.code == 2
    last = outcome.stderr.splitlines()[-1]
    assert last.startswith("torro: error: KEY_DAEMON_TLS_CERT=")
    assert "cannot be used for HTTPS" in last
    assert "Traceback" not in outcome.stderr


def test_config_check_refuses_a_key_with_a_passphrase_without_asking(
    torro: "Torro", tmp_path: Path
) -> None:
    """The daemon runs unattended: a key it would have to prompt for is a
    bad setting, found by `torro config check` as by a start."""
    cert, key = make_certificate(tmp_path)
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a passphrase"),
        )
    )
    outcome = torro.run(
        "config", "check",
        env={
            "KEY_DAEMON_API": "true",
            "KEY_DAEMON_TLS_CERT": str(cert),
            "KEY_DAEMON_TLS_KEY": str(key),
        },
    )
    assert outcome.code == 2
    assert outcome.stderr == (
        f"torro: error: KEY_DAEMON_TLS_CERT={cert} and KEY_DAEMON_TLS_KEY="
        f"{key} cannot be used for HTTPS (not a PEM certificate and an "
        "unencrypted key that match): give a PEM certificate and its "
        "matching PEM private key without a passphrase\n"
    )
