"""Assembles the auth service: database, signing keys, mail relay, servicer and server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from auth import throttle
from auth.accounts import Accounts
from auth.clients import ServiceClients
from auth.keys import KeyStore, Schedule
from auth.mail import FolderTransport, MailRelay, SmtpTransport, Transport
from auth.passwords import PasswordHasher
from auth.servicer import AuthServicer
from invmesh.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from mesh.config import Settings
from mesh.db import open_database
from mesh.server import MeshServer, Servicer
from mesh.tokens import TokenVerifier

SERVICE_NAME = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name


def mail_transport(settings: Settings) -> Transport:
    if settings.smtp_server is None:
        return FolderTransport(settings.outbox_dir)
    return SmtpTransport(
        settings.smtp_server, sender=settings.mail_from, timeout=settings.smtp_timeout_seconds
    )


@asynccontextmanager
async def running(settings: Settings, *, address: str | None = None) -> AsyncIterator[MeshServer]:
    """The auth service, serving on `address` (default AUTH_ADDR) until the block exits."""
    async with AsyncExitStack() as stack:
        db = await open_database(stack, settings, "auth")
        private_key = settings.jwt_private_key.get_secret_value() if settings.jwt_private_key else None
        keys = await KeyStore.load(
            db,
            private_key,
            schedule=Schedule.from_settings(settings),
            reload_every=settings.jwks_refetch_interval_seconds,
        )
        relay = MailRelay(
            db,
            mail_transport(settings),
            retry_initial=settings.mail_retry_initial_seconds,
            retry_max=settings.mail_retry_max_seconds,
            lease=2 * settings.smtp_timeout_seconds,
        )
        accounts = Accounts(
            db=db, hasher=PasswordHasher(settings.bcrypt_rounds), keys=keys, mail=relay, settings=settings
        )
        relay.start()
        stack.push_async_callback(relay.stop)
        pruning = asyncio.create_task(
            throttle.prune_every(db, settings.login_failure_window_seconds), name="throttle-pruning"
        )
        stack.push_async_callback(_cancelled, pruning)
        servicer = Servicer(
            SERVICE_NAME,
            auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
            AuthServicer(
                accounts,
                keys,
                ServiceClients.from_settings(keys, settings),
            ),
        )
        yield await MeshServer.of_service(
            "auth",
            servicer,
            settings,
            address=address or settings.auth_addr,
            verifier=TokenVerifier(
                keys,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                clock_skew=settings.token_clock_skew_seconds,
            ),
            database=db,
        ).start_in(stack)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
