"""Signing-key rotation: `invmesh keys rotate` makes a new key current; tokens of the old one
keep verifying everywhere until they could have expired, then the old key is dropped."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from auth.keys import Key, KeyStore, Schedule, thumbprint
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb
from invmesh.products.v1 import products_service_pb2 as products_pb
from launcher.admin import rotate_keys
from mesh.config import Settings
from mesh.db import Database, utcnow
from tests.conftest import Mesh
from tests.rpc import expect_error


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Keys from the database (not JWT_PRIVATE_KEY); verifiers may refetch keys at any time, so
    # a new key may sign at once.
    return settings.model_copy(update={"jwt_private_key": None, "jwks_refetch_interval_seconds": 0})


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def accepted_everywhere(mesh: Mesh, token: str) -> None:
    bearer = mesh.as_user(token)
    await mesh.auth.GetMe(auth_pb.GetMeRequest(), metadata=bearer)
    await mesh.products.ListProducts(products_pb.ListProductsRequest(), metadata=bearer)
    await mesh.inventory.ListInventoryItems(inventory_pb.ListInventoryItemsRequest(), metadata=bearer)


async def published(mesh: Mesh) -> list[str]:
    return [key.kid for key in (await mesh.auth.GetJwks(auth_pb.GetJwksRequest())).keys]


async def test_a_rotation_keeps_old_tokens_verifying_and_signs_new_ones_with_the_new_key(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = mesh.verified_token
    await accepted_everywhere(mesh, before)  # products and inventory have the old key cached
    assert await published(mesh) == [kid(before)]

    monkeypatch.setenv("AUTH_DATABASE_URL", mesh.settings.database_url("auth"))
    monkeypatch.setenv("JWKS_REFETCH_INTERVAL_SECONDS", "0")
    monkeypatch.delenv("JWT_PRIVATE_KEY", raising=False)
    assert await rotate_keys() == 0
    new_kid = capsys.readouterr().err.split("new signing key ", 1)[1].split()[0]
    assert new_kid != kid(before)

    assert await published(mesh) == [kid(before), new_kid]
    login = await mesh.auth.Login(auth_pb.LoginRequest(email="staff@example.com", password="mesh-password"))
    after = login.access_token
    assert kid(after) == new_kid
    await accepted_everywhere(mesh, before)  # still within its lifetime: still good
    await accepted_everywhere(mesh, after)  # a kid the other services did not know: refetched

    # Once every token of the old key could have expired, a start (or the next rotation)
    # retires it: it leaves the JWKS, and its tokens verify nowhere.
    later = utcnow() + dt.timedelta(seconds=mesh.settings.access_token_ttl_seconds + 1)
    db = Database(mesh.settings.database_url("auth"))
    try:
        store = await KeyStore.load(db, None, schedule=Schedule.from_settings(mesh.settings), now=later)
    finally:
        await db.dispose()
    assert [jwk["kid"] for jwk in store.jwks] == [new_kid] and store.signing_kid == new_kid
    assert await published(mesh) == [new_kid]
    await expect_error(
        mesh.auth.GetMe(auth_pb.GetMeRequest(), metadata=mesh.as_user(before)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await accepted_everywhere(mesh, after)


def test_a_new_key_is_published_before_it_signs_and_the_old_one_until_its_tokens_expire() -> None:
    schedule = Schedule(access_ttl=dt.timedelta(minutes=15), activation_delay=dt.timedelta(minutes=1))
    start = dt.datetime(2026, 11, 28, 12, tzinfo=dt.UTC)
    rotated = start + dt.timedelta(days=3)
    keys = [
        Key(thumbprint(k.public_key()), n, created, k)
        for n, (created, k) in enumerate(
            [
                (start, ec.generate_private_key(ec.SECP256R1())),
                (rotated, ec.generate_private_key(ec.SECP256R1())),
            ],
            start=1,
        )
    ]
    old, new = keys

    def state(at: dt.timedelta) -> tuple[str, list[str]]:
        now = rotated + at
        live = schedule.live(keys, now)
        return schedule.signer(live, now).kid, [key.kid for key in live]

    assert state(dt.timedelta(seconds=59)) == (old.kid, [old.kid, new.kid])  # published, not yet signing
    assert state(dt.timedelta(minutes=1)) == (new.kid, [old.kid, new.kid])  # signing; old tokens live on
    assert state(dt.timedelta(minutes=16) - dt.timedelta(seconds=1)) == (new.kid, [old.kid, new.kid])
    assert state(dt.timedelta(minutes=16)) == (new.kid, [new.kid])  # the old key's last token expired
    assert schedule.signer([old], start) is old  # the very first key signs at once


def test_rotate_refuses_while_a_configured_key_signs(settings: Settings) -> None:
    env = {**os.environ, "INVMESH_DATA_DIR": str(settings.data_dir), "JWT_PRIVATE_KEY": "-----BEGIN…"}
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "keys", "rotate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "JWT_PRIVATE_KEY is set" in done.stderr
