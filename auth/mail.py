"""Outgoing mail that survives a slow or failing SMTP server, and restarts.

A message is written to the `outgoing_mail` table in the same transaction as the change
that causes it; `MailRelay` (a `mesh.outbox` relay) delivers it afterwards and deletes it
once delivered, retrying with exponential backoff. Without `SMTP_URL`, "delivery" writes
the message as an .eml file into the outbox folder.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import os
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from auth.models import OutgoingMail
from mesh.config import SmtpServer
from mesh.db import Database, utcnow
from mesh.outbox import OutboxRelay


def account_exists_mail(*, sender: str, recipient: str, url: str) -> bytes:
    """To the owner of an address someone tried to register again."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = "You already have an invmesh account"
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain="invmesh")
    message.set_content(
        "Hello,\n\nSomeone, maybe you, tried to create an invmesh account with this address, "
        f"which already has one. Sign in at {url} instead.\n\n"
        "If it was not you, you need do nothing: no account was changed.\n"
    )
    return bytes(message)


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


class MailRelay(OutboxRelay[OutgoingMail]):
    """Delivers the `outgoing_mail` outbox through `transport`."""

    def __init__(
        self, db: Database, transport: Transport, *, retry_initial: float, retry_max: float, lease: float
    ) -> None:
        async def deliver(mail: OutgoingMail) -> None:
            await transport.deliver(mail.recipient, mail.message)

        super().__init__(
            db,
            OutgoingMail,
            deliver,
            name="mail",
            retry_initial=retry_initial,
            retry_max=retry_max,
            lease=lease,
        )
