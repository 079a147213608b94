"""Service identity: the client credentials grant that gives a service its own access token.

A service calling on its own behalf (the products relay retiring inventory items) has no
user token to forward. It proves itself with a secret that auth knows (`SERVICE_SECRETS`),
and gets a short-lived access token whose only role is "service", which the receiving
service verifies like any other token.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Mapping

from auth.keys import KeyStore
from mesh import forwarding
from mesh.access import SERVICE
from mesh.config import Settings, parse_service_secrets
from mesh.db import utcnow
from mesh.errors import Unauthenticated

# Compared against when the client id is unknown, so the answer takes as long either way.
_NO_SECRET = secrets.token_bytes(32)


class ServiceClients:
    def __init__(self, client_secrets: Mapping[str, bytes], keys: KeyStore, settings: Settings) -> None:
        self._secrets = dict(client_secrets)
        self._keys = keys
        self._settings = settings
        self._ttl = dt.timedelta(seconds=settings.service_token_ttl_seconds)

    @classmethod
    def from_settings(cls, keys: KeyStore, settings: Settings) -> ServiceClients:
        configured = settings.service_secrets
        return cls(parse_service_secrets(configured.get_secret_value()) if configured else {}, keys, settings)

    def secret_of(self, client_id: str) -> bytes | None:
        return self._secrets.get(client_id)

    async def issue(self, client_id: str, client_secret: str) -> tuple[str, int]:
        """A signed access token for the service and its lifetime in seconds."""
        expected = self._secrets.get(client_id, _NO_SECRET)
        if (
            not hmac.compare_digest(expected, client_secret.encode())
            or client_id not in self._secrets
            or client_id == forwarding.FORWARDER  # its secret only vouches for client addresses
        ):
            raise Unauthenticated("the client credentials are not known", reason="INVALID_CLIENT")
        claims = {
            "iss": self._settings.jwt_issuer,
            "aud": self._settings.jwt_audience,
            "sub": f"service:{client_id}",
            "roles": [SERVICE],
        }
        await self._keys.refresh_if_due()  # a rotation may have made another key current
        token = self._keys.sign_access_token(claims, ttl=self._ttl, now=utcnow())
        return token, int(self._ttl.total_seconds())
