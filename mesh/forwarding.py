"""The client address the facade passes to auth, for the abuse limits, and its proof.

Auth counts failed logins per client address. Its gRPC peer is the facade, so the facade
names its HTTP client in `x-forwarded-for` metadata. Auth believes that only from a caller
that proves it is the facade: `x-invmesh-forwarder` holds a time and an HMAC-SHA256, under
the facade's client secret (`SERVICE_SECRET` of the facade, `facade:…` in auth's
`SERVICE_SECRETS`), of that time and the address. Any other caller, wherever it connects
from, loopback included, is counted at its own peer address.

The proof names the address it vouches for and expires after `MAX_AGE_SECONDS`.
"""

from __future__ import annotations

import hashlib
import hmac
import time

FORWARDER = "facade"  # the client id whose secret signs forwarded addresses
ADDRESS_KEY = "x-forwarded-for"
PROOF_KEY = "x-invmesh-forwarder"
MAX_AGE_SECONDS = 300  # a proof older (or newer, for clocks apart) than this is ignored


def _mac(secret: bytes, stamp: int, address: str) -> str:
    return hmac.new(secret, f"{FORWARDER}\n{stamp}\n{address}".encode(), hashlib.sha256).hexdigest()


def metadata(address: str, secret: bytes | None, *, now: float | None = None) -> list[tuple[str, str]]:
    """Call metadata naming `address` as the client, with a proof when there is a secret."""
    if secret is None:
        return [(ADDRESS_KEY, address)]
    stamp = int(time.time() if now is None else now)
    return [(ADDRESS_KEY, address), (PROOF_KEY, f"{stamp}.{_mac(secret, stamp, address)}")]


def proven_address(
    address: str | None, proof: str | None, secret: bytes | None, *, now: float | None = None
) -> str | None:
    """`address` if `proof` shows that the holder of `secret` sent it lately; else None."""
    if not address or not proof or secret is None:
        return None
    stamp_text, _, mac = proof.partition(".")
    if not stamp_text.isdigit() or len(stamp_text) > 12:
        return None
    stamp = int(stamp_text)
    if abs((time.time() if now is None else now) - stamp) > MAX_AGE_SECONDS:
        return None
    if not hmac.compare_digest(mac.encode(), _mac(secret, stamp, address).encode()):
        return None
    return address
