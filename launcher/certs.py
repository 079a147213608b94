"""`invmesh certs init DIR`: a development CA and one certificate per component.

The layout is cert-manager's Secret layout, so that `kubectl create secret generic
invmesh-auth-tls --from-file=DIR/auth/` makes the Secret a Deployment mounts, and a
cert-manager Certificate can later replace it:

    DIR/ca.crt, DIR/ca.key                       the CA (keep ca.key to yourself)
    DIR/<name>/tls.crt, tls.key, ca.crt          auth, products, inventory, facade

Each certificate is valid for serverAuth and clientAuth (the same one serves and, under
mTLS, is presented to the other services), for localhost and the Kubernetes Service names.
Keys are ECDSA P-256, written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from launcher.layout import COMPONENTS, FACADE

DEFAULT_NAMESPACE = "invmesh"
DEFAULT_DAYS = 365
CA_DAYS = 3650
_EARLY = datetime.timedelta(minutes=5)  # valid from a little before now, for clocks behind


@dataclass(frozen=True, slots=True)
class Authority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def files(directory: Path) -> list[Path]:
    """Every file `init` writes into `directory`."""
    return [directory / "ca.crt", directory / "ca.key"] + [
        directory / name / leaf for name in COMPONENTS for leaf in ("tls.crt", "tls.key", "ca.crt")
    ]


def dns_names(name: str, namespace: str) -> list[str]:
    """The host names a component's certificate is valid for: localhost and its Services'."""
    names = ["localhost", name, f"{name}-headless"]
    for service in (name, f"{name}-headless"):
        names += [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    return names


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_authority(days: int = CA_DAYS, common_name: str = "invmesh development CA") -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - _EARLY)
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)


def issue(
    authority: Authority, name: str, namespace: str = DEFAULT_NAMESPACE, days: int = DEFAULT_DAYS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new key and certificate for component `name`, signed by `authority` (each call a new
    serial: what a renewal makes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(host) for host in dns_names(name, namespace)]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    ca_public = authority.key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - _EARLY)
        .not_valid_after(
            min(_now() + datetime.timedelta(days=days), authority.certificate.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    return certificate, key


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """Writes a key readable by its owner only (0600), whatever the umask or a former file's mode."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)


def write_leaf(
    directory: Path, authority: Authority, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """`directory/tls.crt`, `tls.key` and `ca.crt`, as cert-manager writes a Secret."""
    directory.mkdir(parents=True, exist_ok=True)
    write_private(directory / "tls.key", key_pem(key))
    (directory / "tls.crt").write_bytes(pem(certificate))
    (directory / "ca.crt").write_bytes(pem(authority.certificate))


def init(
    directory: Path, *, namespace: str = DEFAULT_NAMESPACE, days: int = DEFAULT_DAYS, force: bool = False
) -> list[Path]:
    """Writes the CA and every component's certificate into `directory`; the files written.
    FileExistsError naming the files there already, unless `force`."""
    if not force and (existing := [path for path in files(directory) if path.exists()]):
        others = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}{others}")
    directory.mkdir(parents=True, exist_ok=True)
    authority = make_authority(max(days, CA_DAYS))
    write_private(directory / "ca.key", key_pem(authority.key))
    (directory / "ca.crt").write_bytes(pem(authority.certificate))
    for name in COMPONENTS:
        write_leaf(directory / name, authority, *issue(authority, name, namespace, days))
    return files(directory)


def load_authority(directory: Path) -> Authority:
    """The CA `init` wrote into `directory` (to issue a renewed certificate with it)."""
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Authority(x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes()), key)


def settings_of(directory: Path, name: str) -> dict[str, Path]:
    """The TLS settings of component `name` with its files in `directory` (what `invmesh up
    --tls` gives it): a service serves mTLS and calls the others over TLS with its own
    certificate; the facade calls them with its own, and serves HTTPS with the same."""
    own = directory / name
    files = {
        "grpc_tls_cert_file": own / "tls.crt",
        "grpc_tls_key_file": own / "tls.key",
        "grpc_tls_ca_file": own / "ca.crt",
    }
    if name == FACADE:
        return files | {"facade_tls_cert_file": own / "tls.crt", "facade_tls_key_file": own / "tls.key"}
    return files | {"grpc_tls_client_ca_file": own / "ca.crt"}


def component_env(directory: Path, name: str) -> dict[str, str]:
    """`settings_of` as environment variables."""
    return {setting.upper(): str(path) for setting, path in settings_of(directory, name).items()}


def ensure(directory: Path) -> bool:
    """Makes the files of `init` in `directory` if none is there (True), leaves them if all
    are (False); FileNotFoundError naming the missing ones if only some are."""
    present = [path.exists() for path in files(directory)]
    if all(present):
        return False
    if any(present):
        missing = [str(path) for path, there in zip(files(directory), present, strict=True) if not there]
        raise FileNotFoundError(
            f"{directory} lacks {', '.join(missing)}; "
            f"`invmesh certs init {directory} --force` makes them all anew"
        )
    init(directory)
    return True


def run_init(directory: Path, namespace: str, days: int, force: bool) -> int:
    """The command: writes, then says what it wrote (or why it did not)."""
    try:
        written = init(directory, namespace=namespace, days=days, force=force)
    except FileExistsError as exc:
        print(f"invmesh: certs init: files exist already ({exc}); --force replaces them", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"invmesh: certs init: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    for path in written:
        mode = " (0600, private)" if path.name.endswith(".key") else ""
        print(f"wrote {path}{mode}")
    print(
        f"certificates for {', '.join(COMPONENTS)}: valid {days} days, for localhost, 127.0.0.1, ::1 "
        f"and the Service names in namespace {namespace}"
    )
    return 0
