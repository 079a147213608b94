"""Roles (viewer < staff < admin), checked by every service from the method's declared access
rule; role management by admins, `ADMIN_EMAILS` and `invmesh users grant`; password changes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable

import grpc
import pytest

from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2 as products_pb
from mesh.config import Settings
from tests.conftest import Mesh, SmtpServer, link_token, user_token
from tests.rpc import error_reason, expect_error

PASSWORD = "mesh-password"  # what user_token registers with


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"admin_emails": ["boss@example.com"]})


async def denied(call: Awaitable[object], reason: str = "ROLE_REQUIRED") -> None:
    error = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED)
    assert error_reason(error) == reason, error.details()


def new_product(sku: str) -> products_pb.CreateProductRequest:
    return products_pb.CreateProductRequest(product=products_pb.Product(sku=sku, name=sku, price="1.00"))


async def test_each_role_may_do_what_it_includes_and_no_more(mesh: Mesh, smtp: SmtpServer) -> None:
    viewer = mesh.as_user(
        await user_token(mesh.auth, "viewer@example.com", smtp.inbox, mesh.settings, "viewer")
    )
    staff = mesh.as_user(await user_token(mesh.auth, "clerk@example.com", smtp.inbox, mesh.settings, "staff"))
    admin = mesh.as_user()

    pid = (await mesh.products.CreateProduct(new_product("ROLE-1"), metadata=staff)).product.id
    update = products_pb.UpdateProductRequest(
        product=products_pb.Product(id=pid, sku="ROLE-1", name="R", price="2")
    )
    movement = pb.RecordMovementRequest(product_id=pid, type=pb.RecordMovementRequest.IN, quantity=5)
    count = pb.SetStockRequest(product_id=pid, quantity=3)
    delete = products_pb.DeleteProductRequest(id=pid)

    # A viewer reads everything and writes nothing, at each service.
    assert (await mesh.products.GetProduct(products_pb.GetProductRequest(id=pid), metadata=viewer)).product.id
    await mesh.inventory.GetInventoryItem(pb.GetInventoryItemRequest(product_id=pid), metadata=viewer)
    await mesh.inventory.ListMovements(pb.ListMovementsRequest(product_id=pid), metadata=viewer)
    await denied(mesh.products.CreateProduct(new_product("ROLE-2"), metadata=viewer))
    await denied(mesh.products.UpdateProduct(update, metadata=viewer))
    await denied(mesh.inventory.RecordMovement(movement, metadata=viewer))
    await denied(mesh.inventory.SetStock(count, metadata=viewer))
    await denied(mesh.products.DeleteProduct(delete, metadata=viewer))
    await denied(
        mesh.inventory.DeleteInventoryItem(pb.DeleteInventoryItemRequest(product_id=pid), metadata=viewer)
    )

    # Staff write products and stock, but neither delete nor manage roles.
    assert (await mesh.products.UpdateProduct(update, metadata=staff)).product.name == "R"
    assert (await mesh.inventory.RecordMovement(movement, metadata=staff)).item.quantity == 5
    assert (await mesh.inventory.SetStock(count, metadata=staff)).item.quantity == 3
    await denied(mesh.products.DeleteProduct(delete, metadata=staff))
    await denied(
        mesh.auth.SetUserRole(
            auth_pb.SetUserRoleRequest(email="viewer@example.com", role="admin"), metadata=staff
        )
    )
    assert (
        await mesh.inventory.GetInventoryItem(pb.GetInventoryItemRequest(product_id=pid), metadata=staff)
    ).item

    # An admin deletes.
    await mesh.products.DeleteProduct(delete, metadata=admin)
    await expect_error(
        mesh.products.GetProduct(products_pb.GetProductRequest(id=pid), metadata=admin),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_admins_manage_roles_and_the_new_role_arrives_with_the_next_token(
    mesh: Mesh, smtp: SmtpServer
) -> None:
    admin = mesh.as_user()
    await user_token(mesh.auth, "later@example.com", smtp.inbox, mesh.settings, "viewer")
    set_role = mesh.auth.SetUserRole
    promoted = await set_role(
        auth_pb.SetUserRoleRequest(email="LATER@example.com", role="staff"), metadata=admin
    )
    assert list(promoted.user.roles) == ["staff"]
    login = await mesh.auth.Login(auth_pb.LoginRequest(email="later@example.com", password=PASSWORD))
    made = await mesh.products.CreateProduct(
        new_product("LATER-1"), metadata=mesh.as_user(login.access_token)
    )
    assert made.product.id

    for request, code, reason in [
        (
            auth_pb.SetUserRoleRequest(email="later@example.com", role="owner"),
            "INVALID_ARGUMENT",
            "INVALID_ROLE",
        ),
        (auth_pb.SetUserRoleRequest(email="nobody@example.com", role="staff"), "NOT_FOUND", "USER_NOT_FOUND"),
        (auth_pb.SetUserRoleRequest(email="not an email", role="staff"), "INVALID_ARGUMENT", "INVALID_EMAIL"),
        (
            auth_pb.SetUserRoleRequest(email="not an email", role="owner"),
            "INVALID_ARGUMENT",
            "INVALID_FIELDS",
        ),
        (
            auth_pb.SetUserRoleRequest(email="staff@example.com", role="viewer"),
            "FAILED_PRECONDITION",
            "SELF_DEMOTION",
        ),
    ]:
        error = await expect_error(set_role(request, metadata=admin), grpc.StatusCode[code])
        assert error_reason(error) == reason, (request, error.details())

    # A second admin demotes the first; the first one's token, issued before, no longer manages roles.
    second = mesh.as_user(
        await user_token(mesh.auth, "second@example.com", smtp.inbox, mesh.settings, "admin")
    )
    await set_role(auth_pb.SetUserRoleRequest(email="staff@example.com", role="staff"), metadata=second)
    stale = await expect_error(
        set_role(auth_pb.SetUserRoleRequest(email="later@example.com", role="admin"), metadata=admin),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error_reason(stale) == "TOKEN_REVOKED"


async def test_admin_emails_become_admins_once_verified(mesh: Mesh, smtp: SmtpServer) -> None:
    await mesh.auth.Register(auth_pb.RegisterRequest(email="Boss@Example.com", password=PASSWORD))
    unverified = await mesh.auth.Login(auth_pb.LoginRequest(email="boss@example.com", password=PASSWORD))
    me = await mesh.auth.GetMe(auth_pb.GetMeRequest(), metadata=mesh.as_user(unverified.access_token))
    assert list(me.user.roles) == ["viewer"]  # not before the address is proven

    (mail,) = await smtp.inbox.mail_to("boss@example.com")
    token = link_token(mail, mesh.settings.public_url)
    verified = await mesh.auth.VerifyEmail(auth_pb.VerifyEmailRequest(token=token))
    assert list(verified.user.roles) == ["admin"]
    boss = await mesh.auth.Login(auth_pb.LoginRequest(email="boss@example.com", password=PASSWORD))
    await user_token(mesh.auth, "hire@example.com", None, mesh.settings, "viewer")
    promoted = await mesh.auth.SetUserRole(
        auth_pb.SetUserRoleRequest(email="hire@example.com", role="staff"),
        metadata=mesh.as_user(boss.access_token),
    )
    assert list(promoted.user.roles) == ["staff"]


async def test_invmesh_users_grant_sets_a_role_in_the_auth_database(mesh: Mesh, smtp: SmtpServer) -> None:
    await user_token(mesh.auth, "ops@example.com", smtp.inbox, mesh.settings, "viewer")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")} | {
        "INVMESH_DATA_DIR": str(mesh.settings.data_dir),
        "AUTH_DATABASE_URL": mesh.settings.database_url("auth"),
    }

    async def grant(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "launcher", "users", "grant", *args, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await process.communicate()
        return process.returncode or 0, err.decode()

    assert await grant("OPS@example.com", "admin") == (
        0,
        "invmesh: ops@example.com is now admin; it takes effect at the next sign-in\n",
    )
    login = await mesh.auth.Login(auth_pb.LoginRequest(email="ops@example.com", password=PASSWORD))
    me = await mesh.auth.GetMe(auth_pb.GetMeRequest(), metadata=mesh.as_user(login.access_token))
    assert list(me.user.roles) == ["admin"]

    assert await grant("ops@example.com", "admin") == (0, "invmesh: ops@example.com is already admin\n")
    assert await grant("Nobody@example.com", "staff") == (1, "invmesh: no account nobody@example.com\n")
    status, said = await grant("ops@example.com", "owner")
    assert status == 2 and "invalid choice: 'owner'" in said


async def test_a_password_change_revokes_what_the_old_password_gave(mesh: Mesh, smtp: SmtpServer) -> None:
    await mesh.auth.Register(auth_pb.RegisterRequest(email="change@example.com", password=PASSWORD))
    old = await mesh.auth.Login(auth_pb.LoginRequest(email="change@example.com", password=PASSWORD))
    caller = mesh.as_user(old.access_token)
    change = mesh.auth.ChangePassword

    wrong = await expect_error(
        change(
            auth_pb.ChangePasswordRequest(current_password="not-it", new_password="a new password"),
            metadata=caller,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error_reason(wrong) == "INVALID_CREDENTIALS"
    short = await expect_error(
        change(
            auth_pb.ChangePasswordRequest(current_password=PASSWORD, new_password="short"), metadata=caller
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "new_password must be at least" in (short.details() or "")

    new = await change(
        auth_pb.ChangePasswordRequest(current_password=PASSWORD, new_password="a new password"),
        metadata=caller,
    )
    assert new.access_token and new.refresh_token and new.token_type == "Bearer"
    revoked = await expect_error(
        mesh.auth.GetMe(auth_pb.GetMeRequest(), metadata=caller), grpc.StatusCode.UNAUTHENTICATED
    )
    assert error_reason(revoked) == "TOKEN_REVOKED"
    await expect_error(
        mesh.auth.RefreshToken(auth_pb.RefreshTokenRequest(refresh_token=old.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    me = await mesh.auth.GetMe(auth_pb.GetMeRequest(), metadata=mesh.as_user(new.access_token))
    assert me.user.email == "change@example.com"
    assert await mesh.auth.RefreshToken(auth_pb.RefreshTokenRequest(refresh_token=new.refresh_token))
    await expect_error(
        mesh.auth.Login(auth_pb.LoginRequest(email="change@example.com", password=PASSWORD)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert await mesh.auth.Login(auth_pb.LoginRequest(email="change@example.com", password="a new password"))
