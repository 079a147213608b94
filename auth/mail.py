"""Outgoing mail that survives a slow or failing SMTP server, and restarts.

A message is written to the `outgoing_mail` table in the same transaction as the change
that causes it; `MailRelay` delivers it afterwards and deletes it once delivered,
retrying with exponential backoff. Without `SMTP_URL`, "delivery" writes the message as
an .eml file into the outbox folder. Several replicas may run relays: a message is
claimed by one (an optimistic update on `attempts`) before it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.policy
import email.utils
import logging
import os
import random
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib
from sqlalchemy import delete, func, select, update

from auth.models import OutgoingMail
from mesh.config import SmtpServer
from mesh.db import Database, utcnow

log = logging.getLogger(__name__)

BATCH = 50


def verification_mail(*, sender: str, recipient: str, name: str, link: str, valid_hours: int) -> bytes:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = "Confirm your email address"
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain="invmesh")
    greeting = f"Hello {name}," if name else "Hello,"
    message.set_content(
        f"{greeting}\n\nConfirm your email address for invmesh by opening this link:\n\n{link}\n\n"
        f"The link works once and expires in {valid_hours} hours. "
        "If you did not create an account, ignore this mail.\n"
    )
    safe_name = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    message.add_alternative(
        f"<p>{'Hello ' + safe_name if name else 'Hello'},</p>"
        f'<p>Confirm your email address for invmesh: <a href="{link}">confirm my address</a>.</p>'
        f"<p>The link works once and expires in {valid_hours} hours. "
        "If you did not create an account, ignore this mail.</p>",
        subtype="html",
    )
    return bytes(message)


class Transport(Protocol):
    async def deliver(self, recipient: str, message: bytes) -> None: ...


class SmtpTransport:
    def __init__(self, server: SmtpServer, *, sender: str, timeout: float) -> None:
        self._server = server
        self._sender = email.utils.parseaddr(sender)[1]
        self._timeout = timeout

    async def deliver(self, recipient: str, message: bytes) -> None:
        await aiosmtplib.send(
            message,
            sender=self._sender,
            recipients=[recipient],
            hostname=self._server.hostname,
            port=self._server.port,
            username=self._server.username,
            password=self._server.password,
            use_tls=self._server.implicit_tls,
            start_tls=self._server.starttls or None,
            timeout=self._timeout,
        )


class FolderTransport:
    """Writes each message to `<folder>/<time>-<n>.eml`, for the embedded setup."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    async def deliver(self, recipient: str, message: bytes) -> None:
        await asyncio.to_thread(self._write, message)

    def _write(self, message: bytes) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        stem = utcnow().strftime("%Y%m%dT%H%M%S.%fZ") + f"-{os.urandom(4).hex()}"
        partial = self._folder / f".{stem}.tmp"
        partial.write_bytes(message)
        partial.rename(self._folder / f"{stem}.eml")  # readers never see half a message


class MailRelay:
    def __init__(
        self, db: Database, transport: Transport, *, retry_initial: float, retry_max: float, lease: float
    ) -> None:
        self._db = db
        self._transport = transport
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._lease = dt.timedelta(seconds=lease)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mail-relay")

    async def stop(self) -> None:
        if self._task is None:
            return
        # The flag ends the loop even if a library on the way swallows the cancellation.
        self._stopping = True
        self._wake.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def wake(self) -> None:
        """New mail was committed: deliver it now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                delay = await self.deliver_due()
            except Exception:
                log.warning("mail relay could not read the outbox; retrying", exc_info=True)
                delay = self._retry_initial
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def deliver_due(self) -> float:
        """Delivers every message that is due; returns the seconds until the next one is."""
        now = utcnow()
        async with self._db.session() as session:
            due = (
                await session.execute(
                    select(OutgoingMail.id, OutgoingMail.attempts)
                    .where(OutgoingMail.next_attempt_at <= now)
                    .order_by(OutgoingMail.next_attempt_at)
                    .limit(BATCH)
                )
            ).all()
        for mail_id, attempts in due:
            await self._deliver(mail_id, attempts)
        if len(due) == BATCH:
            return 0.0
        async with self._db.session() as session:
            upcoming = await session.scalar(select(func.min(OutgoingMail.next_attempt_at)))
        if upcoming is None:
            return self._retry_max
        return min(max((upcoming - utcnow()).total_seconds(), 0.0), self._retry_max)

    async def _deliver(self, mail_id: str, attempts: int) -> None:
        async with self._db.transaction() as session:
            claimed = await session.execute(
                update(OutgoingMail)
                .where(OutgoingMail.id == mail_id, OutgoingMail.attempts == attempts)
                .values(attempts=attempts + 1, next_attempt_at=utcnow() + self._lease)
            )
            if claimed.rowcount != 1:
                return  # another relay has it
            mail = await session.get_one(OutgoingMail, mail_id)
        try:
            await self._transport.deliver(mail.recipient, mail.message)
        except Exception as exc:
            backoff = min(self._retry_initial * 2**attempts * random.uniform(0.8, 1.2), self._retry_max)
            log.warning(
                "mail delivery failed (attempt %d), retrying in %.1fs: %s", attempts + 1, backoff, exc
            )
            async with self._db.transaction() as session:
                await session.execute(
                    update(OutgoingMail)
                    .where(OutgoingMail.id == mail_id)
                    .values(
                        next_attempt_at=utcnow() + dt.timedelta(seconds=backoff), last_error=str(exc)[:500]
                    )
                )
            return
        async with self._db.transaction() as session:
            await session.execute(delete(OutgoingMail).where(OutgoingMail.id == mail_id))
        log.info("mail delivered", extra={"attempts": attempts + 1})
