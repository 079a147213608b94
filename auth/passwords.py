"""Password rules and bcrypt, run on a thread pool sized to the cores so hashing never
blocks the event loop and concurrent logins queue instead of oversubscribing the CPU."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import bcrypt

from mesh.errors import InvalidArgument

MIN_CHARS = 8
MAX_BYTES = 72  # bcrypt reads no further; longer passwords are refused, never truncated

_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="bcrypt")


def check_new_password(password: str, *, field: str = "password") -> bytes:
    """The password's UTF-8 bytes if it may be set; otherwise INVALID_ARGUMENT saying why."""
    encoded = password.encode()
    if len(password) < MIN_CHARS:
        raise InvalidArgument(
            f"{field} must be at least {MIN_CHARS} characters", field=field, reason="PASSWORD_TOO_SHORT"
        )
    if len(encoded) > MAX_BYTES:
        raise InvalidArgument(
            f"{field} must be at most {MAX_BYTES} bytes in UTF-8 (it is {len(encoded)}); "
            "bcrypt ignores anything longer, so it is refused rather than truncated",
            field=field,
            reason="PASSWORD_TOO_LONG",
        )
    return encoded


class PasswordHasher:
    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        # Checked against when the email is unknown, so that path costs what a real check costs:
        # a fresh salt at the same cost, and a digest no password produces. Hashing a real
        # password here would hold up startup for one check's time (a quarter second at 12).
        self._dummy_hash = bcrypt.gensalt(rounds) + b"." * 31

    async def hash(self, password: bytes) -> str:
        loop = asyncio.get_running_loop()
        hashed = await loop.run_in_executor(_pool, bcrypt.hashpw, password, bcrypt.gensalt(self.rounds))
        return hashed.decode()

    async def verify(self, password: str, hashed: str | None) -> bool:
        """Checks a login attempt; with no hash (unknown user) it burns the same time and fails."""
        encoded = password.encode()
        usable = len(encoded) <= MAX_BYTES and hashed is not None
        loop = asyncio.get_running_loop()
        matched = await loop.run_in_executor(
            _pool,
            bcrypt.checkpw,
            encoded if len(encoded) <= MAX_BYTES else encoded[:MAX_BYTES],
            hashed.encode() if hashed is not None else self._dummy_hash,
        )
        return usable and matched
