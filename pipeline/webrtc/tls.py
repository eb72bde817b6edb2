"""HTTPS for the server: a browser gives a page its camera only on https:// or on localhost.

So serving anyone but this machine's own browser (a colleague across the network, a phone
on the same Wi-Fi) needs TLS. `from_files` loads a certificate and key the user has (from
their CA, or `mkcert`); `self_signed` makes one for the run, valid for this machine's names
and addresses, and gives its SHA-256 fingerprint, which the server prints so the user can
check it against what the browser shows before accepting the warning.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

SELF_SIGNED_DAYS = 30  # long enough for a demo or a trial, short enough to be thrown away
COMMON_NAME = "streaming-media-pipeline (self-signed)"


@dataclass(frozen=True)
class Tls:
    """A server-side TLS context, with the certificate it presents."""

    context: ssl.SSLContext
    certificate_pem: bytes
    fingerprint: str  # SHA-256 of the certificate, as browsers show it: AB:CD:…
    self_signed: bool


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def fingerprint(certificate_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(certificate_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{byte:02X}" for byte in digest)


def from_files(cert: str | Path, key: str | Path) -> Tls:
    """The user's certificate (PEM, its chain after it) and private key; a ConfigError naming the
    file when either cannot be read or they do not belong together."""
    cert, key = Path(cert), Path(key)
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    try:
        context = _server_context(cert, key)
        pem = cert.read_bytes()
        return Tls(context, pem, fingerprint(pem), self_signed=False)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its key ({exc})") from None


def local_names(host: str) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses this server is reached by: the host it binds to, or for a
    wildcard (0.0.0.0, ::) every address of this machine, plus its host name and loopback."""
    names = ["localhost", socket.gethostname()]
    addresses = ["127.0.0.1", "::1"]
    try:
        bound = ipaddress.ip_address(host)
    except ValueError:
        names.append(host)
    else:
        if bound.is_unspecified:
            from pipeline.webrtc.ice import every_host_address

            addresses += every_host_address(use_ipv6=bound.version == 6)
        else:
            addresses.append(str(bound))
    return list(dict.fromkeys(names)), list(dict.fromkeys(addresses))


def self_signed(host: str) -> Tls:
    """A new key and a certificate for this run, signed by itself, for the names `local_names`
    gives; nothing is kept on disk once it is loaded."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names, addresses = local_names(host)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    alternatives = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little behind still accept it
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        # An end entity, not a CA (Firefox refuses a CA certificate as a server's); a client that
        # trusts this very certificate still verifies the server against it.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with tempfile.TemporaryDirectory(prefix="pipeline-tls-") as folder:  # ssl loads keys from files only
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_bytes(pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        context = _server_context(cert_path, key_path)
    return Tls(context, pem, fingerprint(pem), self_signed=True)
