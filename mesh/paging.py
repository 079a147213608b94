"""AIP-158 pagination: page sizes and opaque, tamper-evident-enough page tokens.

A token is the keyset position of the last row served (so pages stay stable while rows
are inserted) plus a fingerprint of the query it belongs to; a token from another query,
or one that does not decode, is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from mesh.errors import InvalidArgument, Violations

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            f"page_size must not be negative: 0 asks for {DEFAULT_PAGE_SIZE}, "
            f"and at most {MAX_PAGE_SIZE} are returned",
            field="page_size",
            reason="INVALID_PAGE_SIZE",
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page_request(requested_size: int, token: str, *, query: str = "") -> tuple[int, list[Any] | None]:
    """The page size and the keyset position to start after; one INVALID_ARGUMENT naming both
    when both are bad."""
    problems = Violations()
    size, position = DEFAULT_PAGE_SIZE, None
    with problems.collect():
        size = page_size(requested_size)
    with problems.collect():
        position = decode_token(token, query=query)
    problems.check()
    return size, position


def _fingerprint(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def encode_token(position: list[Any], *, query: str = "") -> str:
    """The token for the page after `position` (JSON-serialisable keyset values)."""
    payload = json.dumps({"p": position, "q": _fingerprint(query)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(token: str, *, query: str = "") -> list[Any] | None:
    """The keyset position in `token` (None for the first page)."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, fingerprint = payload["p"], payload["q"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        position, fingerprint = None, None
    if not isinstance(position, list) or fingerprint != _fingerprint(query):
        raise InvalidArgument(
            "page_token is not a token this list returned for these parameters",
            field="page_token",
            reason="INVALID_PAGE_TOKEN",
        )
    return position
