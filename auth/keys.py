"""The token signing keys, and their rotation.

The key comes from `JWT_PRIVATE_KEY` (a PEM) or from the database, where the first start
generates one; replicas sharing the database share it. `kid` is the key's RFC 7638
thumbprint, so the same key always has the same id.

Database keys rotate (`invmesh keys rotate`): a new key is stored with the next generation
and published in the JWKS at once, but signs only after `Schedule.activation_delay` (twice
JWKS_REFETCH_INTERVAL_SECONDS): long enough for every auth replica to reload its keys and for
every other service's JWKS cache to be allowed a refetch, so no verifier meets a token whose
`kid` it cannot yet look up. The key it replaces stays published until its last token
expires (the access-token lifetime after it stopped signing); then it is dropped from the
JWKS, and marked retired in the database by the next rotation or start. A running auth
service reloads the key set at most every JWKS_REFETCH_INTERVAL_SECONDS, when it signs, when
it publishes and when it meets an unknown `kid`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from auth.models import SigningKey
from mesh.config import Settings
from mesh.db import Database, describe_error, utcnow
from mesh.errors import Aborted
from mesh.tokens import ALGORITHM, TOKEN_TYPE, public_jwk

log = logging.getLogger(__name__)


def thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638: base64url(SHA-256) of the key's required JWK members, in canonical JSON."""
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Key:
    """A signing key as the store uses it (public key and JWK computed once)."""

    kid: str
    generation: int
    created_at: dt.datetime
    private_key: ec.EllipticCurvePrivateKey
    public_key: ec.EllipticCurvePublicKey = field(init=False)
    jwk: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        public = self.private_key.public_key()
        object.__setattr__(self, "public_key", public)
        object.__setattr__(self, "jwk", public_jwk(public, self.kid))


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a key starts signing and when it is no longer published."""

    access_ttl: dt.timedelta
    activation_delay: dt.timedelta = dt.timedelta(0)

    @classmethod
    def from_settings(cls, settings: Settings) -> Schedule:
        return cls(
            access_ttl=dt.timedelta(seconds=settings.access_token_ttl_seconds),
            activation_delay=dt.timedelta(seconds=2 * settings.jwks_refetch_interval_seconds),
        )

    def signer(self, keys: Sequence[Key], now: dt.datetime) -> Key:
        """The newest key published long enough; the oldest if none is (the very first key)."""
        ripe = [key for key in keys if key.created_at + self.activation_delay <= now]
        return ripe[-1] if ripe else keys[0]

    def retired_at(self, keys: Sequence[Key], index: int) -> dt.datetime | None:
        """When `keys[index]` (keys by generation) has no live token left: its successor took
        over signing, and an access-token lifetime went by. None for the newest key."""
        if index + 1 >= len(keys):
            return None
        return keys[index + 1].created_at + self.activation_delay + self.access_ttl

    def live(self, keys: Sequence[Key], now: dt.datetime) -> list[Key]:
        """The keys to publish at `now`."""
        return [k for i, k in enumerate(keys) if (end := self.retired_at(keys, i)) is None or now < end]


@dataclass(frozen=True, slots=True)
class Rotation:
    kid: str
    generation: int
    signs_from: dt.datetime
    retired: list[str]


def _load_pem(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("JWT_PRIVATE_KEY must be a P-256 (ES256) private key in PEM")
    return key


def _to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


async def _active_rows(db: Database) -> list[SigningKey]:
    async with db.session() as session:
        query = select(SigningKey).where(SigningKey.retired_at.is_(None)).order_by(SigningKey.generation)
        return list((await session.scalars(query)).all())


def _keys(rows: Sequence[SigningKey], known: Mapping[str, Key]) -> list[Key]:
    """The rows as keys, reusing those already loaded (the same objects, so caches keyed on
    them stay valid across reloads)."""
    return [
        known.get(row.kid) or Key(row.kid, row.generation, row.created_at, _load_pem(row.private_key_pem))
        for row in rows
    ]


async def _retire(db: Database, keys: Sequence[Key], schedule: Schedule, now: dt.datetime) -> list[str]:
    """Marks retired the keys whose last token has expired; returns their kids."""
    ended = [k.kid for i, k in enumerate(keys) if (end := schedule.retired_at(keys, i)) and now >= end]
    if ended:
        async with db.transaction() as session:
            await session.execute(
                update(SigningKey)
                .where(SigningKey.kid.in_(ended), SigningKey.retired_at.is_(None))
                .values(retired_at=now)
            )
        log.info("retired %d signing key(s) whose tokens have all expired", len(ended), extra={"kids": ended})
    return ended


async def rotate(db: Database, schedule: Schedule, *, now: dt.datetime | None = None) -> Rotation:
    """Stores a new signing key (published at once, signing after the activation delay) and
    retires the keys no token can need any more."""
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    kid = thumbprint(key.public_key())
    try:
        async with db.transaction() as session:
            newest = await session.scalar(select(func.max(SigningKey.generation)))
            generation = (newest or 0) + 1
            session.add(
                SigningKey(kid=kid, generation=generation, private_key_pem=_to_pem(key), created_at=now)
            )
    except IntegrityError:
        raise Aborted(
            "another key rotation was stored at the same moment; nothing was changed here",
            reason="CONCURRENT_ROTATION",
        ) from None
    log.info("stored a new signing key", extra={"kid": kid, "generation": generation})
    retired = await _retire(db, _keys(await _active_rows(db), {}), schedule, now)
    return Rotation(
        kid=kid, generation=generation, signs_from=now + schedule.activation_delay, retired=retired
    )


class KeyStore:
    """Signs access tokens with the current key; publishes and looks up the live keys."""

    def __init__(
        self,
        keys: Sequence[Key],
        schedule: Schedule,
        *,
        db: Database | None = None,
        reload_every: float = math.inf,
    ) -> None:
        if not keys:
            raise ValueError("a key store needs at least one key")
        self._keys = list(keys)
        self._schedule = schedule
        self._db = db
        self._reload_every = reload_every
        self._loaded_at = time.monotonic()
        self._lock = asyncio.Lock()

    @classmethod
    async def load(
        cls,
        db: Database,
        configured_pem: str | None,
        *,
        schedule: Schedule | None = None,
        reload_every: float = math.inf,
        now: dt.datetime | None = None,
    ) -> KeyStore:
        """The configured key, or the database's live keys (generating the first one, and
        retiring those whose tokens have all expired)."""
        # By default, the longest access-token lifetime the settings allow: never retire too early.
        schedule = schedule or Schedule(access_ttl=dt.timedelta(days=1))
        if configured_pem:
            key = _load_pem(configured_pem)
            return cls(
                [Key(thumbprint(key.public_key()), 1, dt.datetime.min.replace(tzinfo=dt.UTC), key)], schedule
            )
        rows = await _active_rows(db)
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
            rows = await _active_rows(db)
        keys = _keys(rows, {})
        retired = set(await _retire(db, keys, schedule, now or utcnow()))
        return cls([k for k in keys if k.kid not in retired], schedule, db=db, reload_every=reload_every)

    async def refresh_if_due(self) -> None:
        """Reloads the key set from the database if the last load is older than the interval."""
        if self._db is None or time.monotonic() - self._loaded_at < self._reload_every:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at < self._reload_every:
                return
            try:
                rows = await _active_rows(self._db)
            except Exception as exc:  # keep signing and verifying with the keys at hand
                log.warning("could not reload the signing keys: %s", describe_error(exc))
                rows = []
            if rows:
                self._keys = _keys(rows, {key.kid: key for key in self._keys})
            self._loaded_at = time.monotonic()

    def _live(self, now: dt.datetime) -> list[Key]:
        return self._schedule.live(self._keys, now)

    @property
    def signing_kid(self) -> str:
        now = utcnow()
        return self._schedule.signer(self._live(now), now).kid

    @property
    def jwks(self) -> list[dict[str, str]]:
        """The public JWKs of the live keys, oldest first."""
        return [key.jwk for key in self._live(utcnow())]

    async def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        for attempt in range(2):
            for key in self._live(utcnow()):
                if key.kid == kid:
                    return key.public_key
            if attempt == 0:
                await self.refresh_if_due()  # another replica may have rotated
        return None

    def sign_access_token(self, claims: Mapping[str, Any], *, ttl: dt.timedelta, now: dt.datetime) -> str:
        signer = self._schedule.signer(self._live(now), now)
        payload = {
            **claims,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            payload, signer.private_key, algorithm=ALGORITHM, headers={"kid": signer.kid, "typ": TOKEN_TYPE}
        )
