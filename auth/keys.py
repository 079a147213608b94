"""The token signing keys: loaded once at startup, used for every token.

The key comes from `JWT_PRIVATE_KEY` (a PEM) or from the database, where the first
start generates one; replicas sharing the database share it. `kid` is the key's RFC 7638
thumbprint, so the same key always has the same id.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from auth.models import SigningKey
from mesh.db import Database
from mesh.tokens import ALGORITHM, TOKEN_TYPE, public_jwk

log = logging.getLogger(__name__)


def thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638: base64url(SHA-256) of the key's required JWK members, in canonical JSON."""
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


async def _active_keys(db: Database) -> list[SigningKey]:
    async with db.session() as session:
        query = select(SigningKey).where(SigningKey.retired_at.is_(None)).order_by(SigningKey.generation)
        return list((await session.scalars(query)).all())


def _load_pem(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("JWT_PRIVATE_KEY must be a P-256 (ES256) private key in PEM")
    return key


def _to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class KeyStore:
    """Signs access tokens with the active key; answers `kid` lookups for the verifier."""

    def __init__(
        self, signing: ec.EllipticCurvePrivateKey, published: list[ec.EllipticCurvePublicKey]
    ) -> None:
        self._signing = signing
        self.signing_kid = thumbprint(signing.public_key())
        self._public = {thumbprint(k): k for k in [signing.public_key(), *published]}
        self.jwks = [public_jwk(key, kid) for kid, key in self._public.items()]

    @classmethod
    async def load(cls, db: Database, configured_pem: str | None) -> KeyStore:
        if configured_pem:
            return cls(_load_pem(configured_pem), [])
        rows = await _active_keys(db)
        if not rows:
            key = ec.generate_private_key(ec.SECP256R1())
            try:
                async with db.transaction() as session:
                    session.add(
                        SigningKey(
                            kid=thumbprint(key.public_key()), generation=1, private_key_pem=_to_pem(key)
                        )
                    )
                log.info("generated a new token signing key")
            except IntegrityError:
                pass  # another replica stored the first key at the same moment: everyone uses that one
            rows = await _active_keys(db)
        keys = [_load_pem(row.private_key_pem) for row in rows]
        return cls(keys[-1], [k.public_key() for k in keys[:-1]])

    async def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        return self._public.get(kid)

    def sign_access_token(self, claims: Mapping[str, Any], *, ttl: dt.timedelta, now: dt.datetime) -> str:
        payload = {
            **claims,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            payload, self._signing, algorithm=ALGORITHM, headers={"kid": self.signing_kid, "typ": TOKEN_TYPE}
        )
