"""The auth database. Secrets are stored only as hashes: bcrypt for passwords, SHA-256 for
the random verification and refresh tokens (256 random bits each, so a fast hash is enough)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mesh.db import NAMING_CONVENTION, TABLE_OPTIONS, UtcDateTime, utcnow


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UtcDateTime}


def new_id() -> str:
    return str(uuid.uuid4())


class User(Base):
    __tablename__ = "users"
    __table_args__ = TABLE_OPTIONS

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # Normalised and lower-cased, so the unique index is case-insensitive.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(100))
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    roles: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["viewer"])
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Access tokens issued before this are refused by the auth service itself.
    password_changed_at: Mapped[dt.datetime | None]


class VerificationToken(Base):
    __tablename__ = "verification_tokens"
    __table_args__ = TABLE_OPTIONS

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256, hex
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The address the token confirms: a token for an old address must not verify a new one.
    email: Mapped[str] = mapped_column(String(320))
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"
    __table_args__ = TABLE_OPTIONS

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256, hex
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # Every token rotated from one login shares its family; reusing a spent one revokes them all.
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class SigningKey(Base):
    """Token signing keys; the newest signs, every one is published until retired."""

    __tablename__ = "signing_keys"
    __table_args__ = TABLE_OPTIONS

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # 1 for the first key, +1 per rotation: unique, so replicas starting together agree on one key.
    generation: Mapped[int] = mapped_column(Integer, unique=True)
    private_key_pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[dt.datetime | None]


class OutgoingMail(Base):
    """Mail waiting for delivery; a row is deleted once the message is delivered."""

    __tablename__ = "outgoing_mail"
    __table_args__ = (Index("ix_outgoing_mail_due", "next_attempt_at"), TABLE_OPTIONS)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    recipient: Mapped[str] = mapped_column(String(320))
    message: Mapped[bytes] = mapped_column(LargeBinary)  # the RFC 5322 message, ready to send
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Throttle(Base):
    """An abuse counter: attempts at one action by one account or client address in a fixed window.

    The key is `<action>:<SHA-256 of the account or address>`: what was typed into an email
    field (sometimes a password) is never stored. Rows whose window ended are pruned.
    """

    __tablename__ = "throttles"
    __table_args__ = TABLE_OPTIONS

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer)
    window_ends_at: Mapped[dt.datetime] = mapped_column(index=True)
