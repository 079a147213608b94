"""TLS material read from PEM files, and read again when the files change on disk.

A certificate renewed on disk (by cert-manager, or by hand) is used from the next TLS
handshake on, without a restart: gRPC servers ask `ServerCredentialsSource` for their
certificate at each handshake, the facade's HTTPS asks `ReloadingSslContext`. Each compares
the files' `stat()` with what it read last (a few system calls) and reads them again only
when they changed. A half-replaced pair (a new certificate beside the old key) is not used:
the last good pair is served until the files agree again.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

CERTIFICATE = "CERTIFICATE"
PRIVATE_KEY = "PRIVATE KEY"


def read_pem(path: Path, kind: str) -> bytes:
    """The file's bytes if it holds a PEM block of `kind` (CERTIFICATE, or any PRIVATE KEY);
    ValueError saying what is wrong with it otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    begins = [b"-----BEGIN CERTIFICATE-----"] if kind == CERTIFICATE else [b" PRIVATE KEY-----"]
    if not any(marker in data for marker in begins):
        what = "a PEM certificate" if kind == CERTIFICATE else "a PEM private key"
        raise ValueError(f"{path} is not {what}")
    return data


def check_pair(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path) -> None:
    """ValueError unless the key is unencrypted and belongs to the chain's first certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise ValueError(f"{cert_path} holds no certificate that can be read") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ValueError(f"{key_path} is encrypted; the key must be unencrypted PEM") from None
    except ValueError:
        raise ValueError(f"{key_path} holds no private key that can be read") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ValueError(f"the key {key_path} does not belong to the certificate {cert_path}")


def describe(cert_pem: bytes) -> str:
    """`serial 1a2b…, valid until 2027-01-01 00:00 UTC` of a chain's first certificate."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    until = certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    return f"serial {certificate.serial_number:x}, valid until {until}"


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert_path: Path
    key_path: Path
    ca_path: Path | None = None  # the CA that signs the peers' certificates, when they are checked


@dataclass(frozen=True, slots=True)
class _Loaded:
    cert: bytes
    key: bytes
    ca: bytes | None


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int, int], ...] | None:
    """What changes when a file is replaced or rewritten: inode, size and mtime (stat follows
    the symlinks of a Kubernetes Secret volume, whose target changes at each update)."""
    try:
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in (os.stat(p) for p in paths))
    except OSError:
        return None


class _Watched:
    """A key pair (and CA) as last read, read again when the files changed."""

    def __init__(self, pair: KeyPair, what: str) -> None:
        self.pair = pair
        self._what = what
        self._paths = [p for p in (pair.cert_path, pair.key_path, pair.ca_path) if p is not None]
        self._stamp = _stamp(self._paths)
        self.loaded = self._load()  # at startup a bad file is an error, not a warning
        self._failed_stamp: object = None

    def _load(self) -> _Loaded:
        cert = read_pem(self.pair.cert_path, CERTIFICATE)
        key = read_pem(self.pair.key_path, PRIVATE_KEY)
        check_pair(cert, key, self.pair.cert_path, self.pair.key_path)
        ca = read_pem(self.pair.ca_path, CERTIFICATE) if self.pair.ca_path is not None else None
        return _Loaded(cert, key, ca)

    def renewed(self) -> _Loaded | None:
        """The files' new contents if they changed since they were read (and make a good
        pair); None if not."""
        stamp = _stamp(self._paths)
        if stamp == self._stamp or stamp is None:
            return None
        try:
            loaded = self._load()
        except ValueError as exc:
            if stamp != self._failed_stamp:  # say it once for each state of the files
                self._failed_stamp = stamp
                log.warning("%s: keeping the certificate in use: %s", self._what, exc)
            return None
        self._stamp, self.loaded = stamp, loaded
        renewed = self.pair.cert_path
        log.info("%s: using the renewed certificate %s (%s)", self._what, renewed, describe(loaded.cert))
        return loaded


class ServerCredentialsSource:
    """gRPC server credentials whose certificate (and client CA) are read again, at a
    handshake, once their files changed. With a CA, clients must present a certificate it
    signed (mTLS)."""

    def __init__(self, pair: KeyPair) -> None:
        self._watched = _Watched(pair, "gRPC TLS")

    @staticmethod
    def _configuration(loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(loaded.key, loaded.cert)], loaded.ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC at each handshake, on its own thread: None keeps the configuration.
        renewed = self._watched.renewed()
        return self._configuration(renewed) if renewed is not None else None

    @property
    def requires_client_certificates(self) -> bool:
        return self._watched.pair.ca_path is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._watched.loaded),
            self._fetch,  # type: ignore[arg-type]  # None is gRPC's "no change"; types-grpcio omits it
            require_client_authentication=self.requires_client_certificates,
        )


class ReloadingSslContext:
    """An `ssl.SSLContext` for a TLS server whose certificate is read again once its files
    changed: its `sni_callback` (which OpenSSL calls at every ClientHello, with or without
    SNI) gives the connection a context made from the renewed files."""

    def __init__(self, pair: KeyPair, make: Callable[[], ssl.SSLContext]) -> None:
        self._make = make
        self._watched = _Watched(pair, "HTTPS")
        self.context = self._context()
        self._current = self.context

    def _context(self) -> ssl.SSLContext:
        context = self._make()
        # the files were checked by _Watched; ssl reads them itself
        context.load_cert_chain(self._watched.pair.cert_path, self._watched.pair.key_path)
        context.sni_callback = self._hello
        return context

    def _hello(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object) -> None:
        if self._watched.renewed() is not None:
            try:
                self._current = self._context()
            except (OSError, ssl.SSLError) as exc:  # replaced again since they were read
                log.warning("HTTPS: keeping the certificate in use: %s", exc)
        if self._current is not self.context:
            connection.context = self._current
