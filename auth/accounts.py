"""The rules of accounts: registration, login, email verification and token refresh.

Servicers call these with plain values; each operation runs in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import secrets
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email
from prometheus_client import Counter
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth import throttle
from auth.keys import KeyStore
from auth.mail import MailRelay, account_exists_mail, verification_mail
from auth.models import OutgoingMail, RefreshToken, User, VerificationToken
from auth.passwords import Lane, PasswordHasher, check_new_password
from mesh import paging
from mesh.access import role_named
from mesh.config import Settings
from mesh.context import current_identity
from mesh.db import Database, rowcount, utcnow
from mesh.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Violations,
)

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 200
MAX_EMAIL_CHARS = 320
_INVALID_CREDENTIALS = "the email or password is incorrect"
# Logins by result: the password matched or not, or the attempt was refused before bcrypt ran
# (the limits of auth/throttle.py, or bcrypt's queue full: RESOURCE_EXHAUSTED).
LOGINS = Counter("invmesh_logins_total", "Logins by result (ok, invalid_credentials, throttled).", ["result"])
_LOGINS_OK = LOGINS.labels("ok")
_LOGINS_FAILED = LOGINS.labels("invalid_credentials")
_LOGINS_THROTTLED = LOGINS.labels("throttled")


@dataclass(frozen=True, slots=True)
class Registration:
    """What Register answers: the same for a new address and one that has an account."""

    email: str
    name: str


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    expires_in: int
    refresh_token: str


def normalize_email(address: str) -> str:
    """The address in the form stored and compared; INVALID_ARGUMENT if it is not one."""
    if len(address) > MAX_EMAIL_CHARS:
        raise InvalidArgument(
            f"email must be at most {MAX_EMAIL_CHARS} characters", field="email", reason="INVALID_EMAIL"
        )
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise InvalidArgument(
            f"email is not a valid address: {exc}", field="email", reason="INVALID_EMAIL"
        ) from None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _password_changed_ms(user: User) -> int:
    changed = user.password_changed_at
    return 0 if changed is None else int(changed.timestamp() * 1000)


def _new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 random bits


class Accounts:
    def __init__(
        self, *, db: Database, hasher: PasswordHasher, keys: KeyStore, mail: MailRelay, settings: Settings
    ) -> None:
        self._db = db
        self._hasher = hasher
        self._keys = keys
        self._mail = mail
        self._settings = settings
        self._access_ttl = dt.timedelta(seconds=settings.access_token_ttl_seconds)
        self._refresh_ttl = dt.timedelta(seconds=settings.refresh_token_ttl_seconds)
        self._verification_ttl = dt.timedelta(seconds=settings.verification_token_ttl_seconds)
        self._login_window = dt.timedelta(seconds=settings.login_failure_window_seconds)
        self._resend_window = dt.timedelta(seconds=settings.verification_resend_window_seconds)
        self._recent_failures = throttle.RecentFailures(settings.login_failure_window_seconds)
        self._background: set[asyncio.Task[None]] = set()  # held until done: the loop keeps weak references

    async def register(self, *, email: str, password: str, name: str, client: str) -> Registration:
        """Creates an account and queues its verification mail. For an address that has an
        account, the answer is the same and its owner is mailed a notice instead, so the
        answer tells no one which addresses are registered (the same work is done either way:
        a bcrypt hash, a counted attempt, a queued mail). Limited per client address."""
        problems = Violations()
        address, name, password_bytes = "", name.strip(), b""
        with problems.collect():
            address = normalize_email(email)
        if len(name) > MAX_NAME_CHARS:
            problems.add("name", f"name must be at most {MAX_NAME_CHARS} characters", "INVALID_NAME")
        with problems.collect():
            password_bytes = check_new_password(password)
        problems.check()
        password_hash = await self._hasher.hash(password_bytes)
        user = User(
            id=str(uuid.uuid4()),
            email=address,
            name=name,
            password_hash=password_hash,
            email_verified=False,
            roles=["viewer"],
            created_at=utcnow(),
        )
        per_client = throttle.Limit(
            "signup-address", client, self._settings.verification_resends_per_address, self._resend_window
        )
        async with self._db.transaction() as session:
            await throttle.take(
                session, [per_client], now=utcnow(), reason="TOO_MANY_REGISTRATIONS", doing="registrations"
            )
        try:
            async with self._db.transaction() as session:
                session.add(user)
                await session.flush()  # the unique email index answers here
                # Counted as the owner's notice is below, so both answers cost the same work.
                await throttle.take(session, [self._mails_to(address)], now=utcnow(), reason="", doing="")
                self._add_verification(session, user)  # the mail is queued with the account
        except IntegrityError:
            await self._notify_owner(address)
        self._mail.wake()
        return Registration(email=address, name=name)

    def _mails_to(self, address: str) -> throttle.Limit:
        """Registration mails to one address: the account's link, then notices of attempts."""
        return throttle.Limit(
            "signup-notice", address, self._settings.verification_resends_per_account, self._resend_window
        )

    async def _notify_owner(self, address: str) -> None:
        """Someone registered an address that has an account: tell the owner, at most as often
        as verification mails may be re-sent."""
        with contextlib.suppress(ResourceExhausted):  # told recently enough: no mail
            async with self._db.transaction() as session:
                await throttle.take(session, [self._mails_to(address)], now=utcnow(), reason="", doing="")
                session.add(
                    OutgoingMail(
                        recipient=address,
                        message=account_exists_mail(
                            sender=self._settings.mail_from, recipient=address, url=self._settings.public_url
                        ),
                    )
                )
        self._mail.wake()

    def _in_background(self, work: Coroutine[object, object, None], name: str) -> None:
        """Runs `work` after the answer; a failure is logged (the client was answered already)."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("%s failed: %s", task.get_name(), error)

    async def login(self, *, email: str, password: str, client: str) -> Tokens:
        """Tokens for a right email and password. Attempts are limited per account and per
        client address (`client`), checked before bcrypt runs; unknown emails alike."""
        try:
            address: str | None = normalize_email(email)
        except InvalidArgument:
            address = None
        limits = (
            account_login_limit(self._settings, address or email.strip().lower()),
            throttle.Limit(
                "login-address", client, self._settings.login_failures_per_address, self._login_window
            ),
        )
        ticket = None
        try:
            if client in self._recent_failures:
                # Its attempt would go to the shared lane: if that is full, refuse before the
                # database write that would tell so.
                self._hasher.queue.check(Lane.SHARED)
            async with self._db.transaction() as session:
                attempts = await throttle.take(
                    session, limits, now=utcnow(), reason="TOO_MANY_LOGIN_ATTEMPTS", doing="failed logins"
                )
                # A place for the bcrypt check, or RESOURCE_EXHAUSTED now, which rolls the count
                # back: a refused attempt is not counted. Clean attempts have workers of their own.
                ticket = self._hasher.queue.admit(Lane.CLEAN if attempts == 1 else Lane.SHARED)
                user = await session.scalar(select(User).where(User.email == address)) if address else None
            # Unknown emails run a bcrypt check too, so the answer's timing tells nothing.
            matched = await self._hasher.verify(password, user.password_hash if user else None, ticket=ticket)
        except ResourceExhausted:
            _LOGINS_THROTTLED.inc()
            raise
        finally:
            if ticket is not None:
                ticket.release()  # unless the check spent it
        if not matched or user is None:
            _LOGINS_FAILED.inc()
            self._recent_failures.add(client)
            raise Unauthenticated(_INVALID_CREDENTIALS, reason="INVALID_CREDENTIALS")
        self._recent_failures.discard(client)
        await self._keys.refresh_if_due()  # a rotation may have made another key current
        async with self._db.transaction() as session:
            per_account, per_address = limits
            await throttle.clear(session, per_account)
            await throttle.give_back(session, per_address)
            tokens = self._issue(session, user, family_id=str(uuid.uuid4()))
        _LOGINS_OK.inc()
        return tokens

    async def refresh(self, refresh_token: str) -> Tokens:
        await self._keys.refresh_if_due()
        now = utcnow()
        reused_family = None
        async with self._db.transaction() as session:
            row = await session.get(RefreshToken, _digest(refresh_token))
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                raise Unauthenticated(
                    "the refresh token is unknown, expired or revoked", reason="INVALID_REFRESH_TOKEN"
                )
            spent = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.token_hash == row.token_hash, RefreshToken.used_at.is_(None))
                .values(used_at=now)
            )
            if rowcount(spent) == 1:
                user = await session.get(User, row.user_id)
                if user is None:
                    raise Unauthenticated("the account no longer exists", reason="INVALID_REFRESH_TOKEN")
                return self._issue(session, user, family_id=row.family_id)
            # A spent token came back: it leaked, or a client raced itself. Revoke the family.
            await session.execute(
                update(RefreshToken)
                .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            reused_family = row.family_id
        raise Unauthenticated(
            "the refresh token was already used; every token of this sign-in is now revoked",
            reason="REFRESH_TOKEN_REUSED",
            metadata={"family": reused_family},
        )

    async def logout(self, refresh_token: str) -> None:
        """Revokes the sign-in `refresh_token` belongs to: it and every token rotated from the
        same login. Silent for a token that is unknown, expired or already revoked, so the
        answer tells nothing about the token (RFC 7009)."""
        if not refresh_token:
            raise InvalidArgument(
                "refresh_token is required", field="refresh_token", reason="MISSING_REFRESH_TOKEN"
            )
        async with self._db.transaction() as session:
            family = await session.scalar(
                select(RefreshToken.family_id).where(RefreshToken.token_hash == _digest(refresh_token))
            )
            if family is not None:
                await session.execute(
                    update(RefreshToken)
                    .where(RefreshToken.family_id == family, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                )

    async def resend_verification(self, email: str, *, client: str) -> None:
        """Mails a fresh link if the address has an unverified account; silent otherwise.
        Limited per address typed and per client, whether or not the account exists. An
        empty or malformed address is INVALID_ARGUMENT, as anywhere else: no account has one."""
        address = normalize_email(email)
        limits = (
            throttle.Limit(
                "resend-account",
                address,
                self._settings.verification_resends_per_account,
                self._resend_window,
            ),
            throttle.Limit(
                "resend-address", client, self._settings.verification_resends_per_address, self._resend_window
            ),
        )
        async with self._db.transaction() as session:
            await throttle.take(
                session,
                limits,
                now=utcnow(),
                reason="TOO_MANY_VERIFICATION_MAILS",
                doing="verification mails requested",
            )
        # The answer does not wait for the lookup and the new link: its timing would tell
        # an address with an account from one without.
        self._in_background(self._resend_to(address), "verification-resend")

    async def _resend_to(self, address: str) -> None:
        async with self._db.transaction() as session:
            user = await session.scalar(select(User).where(User.email == address))
            if user is None or user.email_verified:
                return
            await session.execute(
                delete(VerificationToken).where(
                    VerificationToken.user_id == user.id, VerificationToken.used_at.is_(None)
                )
            )
            self._add_verification(session, user)
        self._mail.wake()

    async def confirm_email(self, token: str) -> User:
        now = utcnow()
        invalid = InvalidArgument(
            "the verification token is unknown, expired or already used",
            field="token",
            reason="INVALID_VERIFICATION_TOKEN",
        )
        async with self._db.transaction() as session:
            row = await session.get(VerificationToken, _digest(token))
            if row is None or row.used_at is not None or row.expires_at <= now:
                raise invalid
            used = await session.execute(
                update(VerificationToken)
                .where(VerificationToken.token_hash == row.token_hash, VerificationToken.used_at.is_(None))
                .values(used_at=now)
            )
            user = await session.get(User, row.user_id)
            if rowcount(used) != 1 or user is None or user.email != row.email:
                raise invalid
            user.email_verified = True
            if user.email in self._settings.admin_emails:
                user.roles = ["admin"]
        return user

    async def caller(self) -> User:
        """The account of the verified caller, if its token is still good for it: a token issued
        before the password last changed is refused here at once (other services refuse it only
        once it expires, since they verify tokens without asking auth)."""
        identity = current_identity()
        async with self._db.session() as session:
            user = await session.get(User, identity.subject)
        if user is None:
            raise NotFound("the account no longer exists", reason="USER_NOT_FOUND")
        if identity.password_changed_ms != _password_changed_ms(user):
            raise Unauthenticated(
                "the access token was issued before the password changed; sign in again",
                reason="TOKEN_REVOKED",
            )
        return user

    async def change_password(self, *, current_password: str, new_password: str) -> Tokens:
        """Sets a new password; revokes every refresh token of the account and returns fresh tokens."""
        user = await self.caller()
        # A stolen access token must not become a password-guessing oracle: these checks count
        # against the account's login limit, before bcrypt runs.
        account = account_login_limit(self._settings, user.email)
        async with self._db.transaction() as session:
            await throttle.take(
                session, [account], now=utcnow(), reason="TOO_MANY_LOGIN_ATTEMPTS", doing="failed logins"
            )
        if not await self._hasher.verify(current_password, user.password_hash):
            raise Unauthenticated(
                "the current password is incorrect", field="current_password", reason="INVALID_CREDENTIALS"
            )
        new_hash = await self._hasher.hash(check_new_password(new_password, field="new_password"))
        await self._keys.refresh_if_due()
        now = utcnow()
        async with self._db.transaction() as session:
            changed = await session.execute(
                update(User)
                .where(User.id == user.id, User.password_hash == user.password_hash)
                .values(password_hash=new_hash, password_changed_at=now)
            )
            if rowcount(changed) != 1:  # a concurrent change won; this one's current password is stale
                raise Unauthenticated("the password changed meanwhile; sign in again", reason="TOKEN_REVOKED")
            await session.execute(
                update(RefreshToken)
                .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await throttle.clear(session, account)
            user.password_changed_at = now  # what the new tokens carry (the row has it already)
            return self._issue(session, user, family_id=str(uuid.uuid4()))

    async def _admin(self) -> User:
        """The calling admin, checked against the database, not only its token, which may
        predate a demotion."""
        admin = await self.caller()
        if "admin" not in admin.roles:
            raise Unauthenticated(
                "the access token was issued before your admin role was withdrawn; sign in again",
                reason="TOKEN_REVOKED",
            )
        return admin

    async def list_users(self, *, page_size: int, page_token: str, q: str) -> tuple[list[User], str]:
        """A page of accounts by email, those whose email holds `q` in any case, on an admin's
        behalf; and the token of the next page ("" on the last)."""
        await self._admin()
        problems = Violations()
        size, after = paging.DEFAULT_PAGE_SIZE, None
        with problems.collect():
            size, after = paging.page_request(page_size, page_token, query=q)
        if len(q) > MAX_EMAIL_CHARS:
            problems.add("q", f"q must be at most {MAX_EMAIL_CHARS} characters", "INVALID_QUERY")
        problems.check()
        if "\x00" in q:  # no email holds NUL, and no database may be sent one
            return [], ""
        query = select(User).order_by(User.email).limit(size + 1)
        if q:
            query = query.where(User.email.icontains(q, autoescape=True))
        if after is not None:
            if len(after) != 1 or not isinstance(after[0], str):
                raise InvalidArgument(
                    "page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN"
                )
            query = query.where(User.email > after[0])
        async with self._db.session() as session:
            users = list(await session.scalars(query))
        if len(users) <= size:
            return users, ""
        return users[:size], paging.encode_token([users[size - 1].email], query=q)

    async def set_role(self, *, email: str, role: str) -> User:
        """Gives the account `role`, on an admin's behalf."""
        admin = await self._admin()
        address, role = _role_grant(email, role)
        if admin.email == address and role != "admin":
            raise FailedPrecondition(
                "an admin cannot take its own admin role away; another admin can",
                field="role",
                reason="SELF_DEMOTION",
            )
        return (await grant_role(self._db, email=email, role=role)).user

    def _add_verification(self, session: AsyncSession, user: User) -> None:
        token = _new_secret()
        link = f"{self._settings.public_url}/users/verify?token={token}"
        session.add_all(
            [
                VerificationToken(
                    token_hash=_digest(token),
                    user_id=user.id,
                    email=user.email,
                    expires_at=utcnow() + self._verification_ttl,
                    used_at=None,
                ),
                OutgoingMail(
                    recipient=user.email,
                    message=verification_mail(
                        sender=self._settings.mail_from,
                        recipient=user.email,
                        name=user.name,
                        link=link,
                        valid_hours=max(1, round(self._verification_ttl.total_seconds() / 3600)),
                    ),
                ),
            ]
        )

    def _issue(self, session: AsyncSession, user: User, *, family_id: str) -> Tokens:
        now = utcnow()
        refresh = _new_secret()
        session.add(
            RefreshToken(
                token_hash=_digest(refresh),
                user_id=user.id,
                family_id=family_id,
                expires_at=now + self._refresh_ttl,
                used_at=None,
                revoked_at=None,
            )
        )
        claims = {
            "iss": self._settings.jwt_issuer,
            "aud": self._settings.jwt_audience,
            "sub": user.id,
            "email": user.email,
            "email_verified": user.email_verified,
            "roles": list(user.roles),
            "pwd_at": _password_changed_ms(user),
        }
        access = self._keys.sign_access_token(claims, ttl=self._access_ttl, now=now)
        return Tokens(
            access_token=access, expires_in=int(self._access_ttl.total_seconds()), refresh_token=refresh
        )


@dataclass(frozen=True, slots=True)
class RoleGrant:
    user: User
    changed: bool  # False when the account had this role, and only it, already


async def grant_role(db: Database, *, email: str, role: str) -> RoleGrant:
    """Gives the account with `email` the role `role` (its only one: each includes the lower)."""
    address, role = _role_grant(email, role)
    async with db.transaction() as session:
        user = await session.scalar(select(User).where(User.email == address).with_for_update())
        if user is None:
            raise NotFound("no account has this email", field="email", reason="USER_NOT_FOUND")
        changed = user.roles != [role]
        user.roles = [role]
    return RoleGrant(user, changed)


def account_login_limit(settings: Settings, subject: str) -> throttle.Limit:
    """The failed logins allowed per account: `subject` is its email, or what was typed if
    that is not one. Password changes count against it too."""
    return throttle.Limit(
        "login-account",
        subject,
        settings.login_failures_per_account,
        dt.timedelta(seconds=settings.login_failure_window_seconds),
    )


def _role_grant(email: str, role: str) -> tuple[str, str]:
    """The normalized address and the role of a grant; one INVALID_ARGUMENT naming both if both are bad."""
    problems = Violations()
    address = ""
    with problems.collect():
        address = normalize_email(email)
    with problems.collect():
        role = role_named(role)
    problems.check()
    return address, role
