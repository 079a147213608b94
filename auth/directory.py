"""Accounts as an operator sees them (`invmesh users list`, `invmesh users show`): plain reads
of the auth database, a page of accounts or one account in full."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select

from auth.accounts import account_login_limit
from auth.models import RefreshToken, Throttle, User
from mesh.config import Settings
from mesh.db import Database


@dataclass(frozen=True, slots=True)
class AccountPage:
    accounts: list[User]  # in the order of their emails
    next_after: str | None  # the email the next page starts after; None on the last page


async def list_accounts(db: Database, *, after: str | None, limit: int) -> AccountPage:
    """Up to `limit` accounts whose email sorts after `after` (from the first if None).
    Paged by email, which is unique, so a page neither repeats nor skips accounts that
    were added or removed meanwhile on other pages."""
    query = select(User).order_by(User.email).limit(limit + 1)  # one more tells whether more remain
    if after is not None:
        query = query.where(User.email > after)
    async with db.session() as session:
        accounts = list(await session.scalars(query))
    more = len(accounts) > limit
    accounts = accounts[:limit]
    return AccountPage(accounts, accounts[-1].email if more else None)


@dataclass(frozen=True, slots=True)
class LoginFailures:
    """Failed logins counted against an account in the current window."""

    count: int
    allowed: int
    window_ends_at: dt.datetime

    @property
    def locked(self) -> bool:
        """Whether logins are refused, the right password too, until the window ends."""
        return self.count >= self.allowed


@dataclass(frozen=True, slots=True)
class AccountDetails:
    user: User
    sessions: int  # sign-ins whose refresh token is still good (one live token per sign-in)
    login_failures: LoginFailures | None  # None when none count now


async def account_details(
    db: Database, settings: Settings, *, email: str, now: dt.datetime
) -> AccountDetails | None:
    """The account with the (normalised) `email`, its live sign-ins and failed logins; None
    if there is no such account."""
    limit = account_login_limit(settings, email)
    async with db.session() as session:
        user = await session.scalar(select(User).where(User.email == email))
        if user is None:
            return None
        sessions = await session.scalar(
            select(func.count())
            .select_from(RefreshToken)
            .where(
                RefreshToken.user_id == user.id,
                RefreshToken.used_at.is_(None),
                RefreshToken.revoked_at.is_(None),
                RefreshToken.expires_at > now,
            )
        )
        counter = await session.get(Throttle, limit.key)
    failures = None
    if counter is not None and counter.window_ends_at > now and counter.attempts > 0:
        failures = LoginFailures(counter.attempts, limit.max_attempts, counter.window_ends_at)
    return AccountDetails(user, sessions or 0, failures)
