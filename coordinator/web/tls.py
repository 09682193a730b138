"""HTTPS for the web app with a certificate the appliance makes itself.

No certificate authority reaches a box on a home LAN, so the coordinator
makes a self-signed one (ECDSA P-256, ten years) on first start and keeps
it in the web state folder (the key 0600). A phone's browser warns once;
the household compares the SHA-256 fingerprint it shows with the one on
the console (`web`) and in the log, and accepts it. `cryptography` comes
with aiocoap's OSCORE already.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..secrets import write_new_secret_file

CERT = "cert.pem"
KEY = "key.pem"


def ensure_certificate(folder: Path, host: str, now: datetime.datetime | None = None) -> tuple[Path, Path]:
    """The certificate and key files, made if missing."""
    cert_path, key_path = folder / CERT, folder / KEY
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname() or "microgrid"
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(hostname),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(host)
        if not ip.is_unspecified and str(ip) != "127.0.0.1":
            names.append(x509.IPAddress(ip))
    except ValueError:
        pass
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"microgrid {hostname}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    if key_path.exists():
        key_path.unlink()  # a key without its certificate is of no use
    write_new_secret_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()).decode())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate, as browsers show it (AB:CD:...)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
