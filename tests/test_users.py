"""AuthService.ListUsers over gRPC: admins list the accounts by email, a page at a time,
searched by part of the email."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from auth.accounts import grant_role
from invmesh.auth.v1 import auth_service_pb2 as pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from mesh.db import Database
from mesh.paging import encode_token
from tests.conftest import MeshUsers, user_token
from tests.rpc import error_reason, expect_error, field_violations

Metadata = tuple[tuple[str, str], ...]
ADMIN = "staff@example.com"  # the mesh's verified user, an admin
STAFF = "visitor@example.com"  # the mesh's other user, staff
# Registered by each test beside the mesh's two users; first letters apart, so every
# database's collation puts them in this order.
NEWCOMERS = ["cora@example.com", "Ann@Example.com", "bob@example.com", "dave@example.com"]
EVERYONE = ["ann@example.com", "bob@example.com", "cora@example.com", "dave@example.com", ADMIN, STAFF]


@dataclass
class UserListing:
    stub: auth_service_pb2_grpc.AuthServiceStub
    users: MeshUsers
    admin: Metadata
    staff: Metadata

    async def page(
        self, request: pb.ListUsersRequest | None = None, caller: Metadata | None = None
    ) -> pb.ListUsersResponse:
        reply: pb.ListUsersResponse = await self.stub.ListUsers(
            request or pb.ListUsersRequest(), metadata=caller or self.admin
        )
        return reply

    async def pages(self, size: int, q: str = "") -> list[list[str]]:
        """The emails of every page, following the tokens to the last."""
        pages, token = [], ""
        while True:
            reply = await self.page(pb.ListUsersRequest(page_size=size, q=q, page_token=token))
            pages.append([user.email for user in reply.users])
            token = reply.next_page_token
            if not token:
                return pages


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def listing(mesh_users: MeshUsers) -> AsyncIterator[UserListing]:
    async with grpc.aio.insecure_channel(mesh_users.settings.auth_addr) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        for email in NEWCOMERS:
            await stub.Register(pb.RegisterRequest(email=email, password="mesh-password", name="New"))
        yield UserListing(
            stub, mesh_users, bearer(mesh_users.verified_token), bearer(mesh_users.unverified_token)
        )


async def test_an_admin_pages_through_the_users_by_email(listing: UserListing) -> None:
    assert await listing.pages(2) == [EVERYONE[0:2], EVERYONE[2:4], EVERYONE[4:6]]
    assert await listing.pages(0) == [EVERYONE]  # 50 when unset
    everyone = {user.email: user for user in (await listing.page()).users}
    admin, ann = everyone[ADMIN], everyone["ann@example.com"]
    assert list(admin.roles) == ["admin"] and admin.email_verified and admin.id
    assert list(ann.roles) == ["viewer"] and not ann.email_verified and ann.name == "New"
    assert ann.created_at.seconds > 0 and ann.id != admin.id


async def test_the_search_matches_part_of_the_email_in_any_case(listing: UserListing) -> None:
    assert await listing.pages(0, q="AN") == [["ann@example.com"]]
    assert await listing.pages(3, q="@EXAMPLE.com") == [EVERYONE[0:3], EVERYONE[3:6]]
    assert await listing.pages(0, q="%") == [[]]  # LIKE's wildcards match themselves
    assert await listing.pages(0, q="_") == [[]]
    assert await listing.pages(0, q="ann\x00") == [[]]  # no email holds NUL


async def test_a_page_token_works_only_with_the_search_it_came_from(listing: UserListing) -> None:
    first = await listing.page(pb.ListUsersRequest(page_size=1, q="example"))
    assert [user.email for user in first.users] == [EVERYONE[0]] and first.next_page_token
    for q in ("exam", ""):
        error = await expect_error(
            listing.page(pb.ListUsersRequest(page_token=first.next_page_token, q=q)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_reason(error) == "INVALID_PAGE_TOKEN", error.details()


@pytest.mark.parametrize(
    ("bad", "violations"),
    [
        (pb.ListUsersRequest(page_size=-1), {"page_size": "INVALID_PAGE_SIZE"}),
        (pb.ListUsersRequest(page_token="not-a-token"), {"page_token": "INVALID_PAGE_TOKEN"}),
        # Signed for no search, but its position is no email.
        (pb.ListUsersRequest(page_token=encode_token([42])), {"page_token": "INVALID_PAGE_TOKEN"}),
        (pb.ListUsersRequest(q="a" * 321), {"q": "INVALID_QUERY"}),
        (
            pb.ListUsersRequest(page_size=-1, page_token="x", q="a" * 321),
            {"page_size": "INVALID_PAGE_SIZE", "page_token": "INVALID_PAGE_TOKEN", "q": "INVALID_QUERY"},
        ),
    ],
)
async def test_bad_paging_and_search_are_refused(
    listing: UserListing, bad: pb.ListUsersRequest, violations: dict[str, str]
) -> None:
    error = await expect_error(listing.page(bad), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(error) == violations, error.details()
    reasons = set(violations.values())
    assert error_reason(error) == (reasons.pop() if len(reasons) == 1 else "INVALID_FIELDS")


async def test_staff_and_viewers_are_refused_and_so_is_a_demoted_admin_s_token(listing: UserListing) -> None:
    settings = listing.users.settings
    viewer = bearer(await user_token(listing.stub, "viewer@example.com", None, settings, "viewer"))
    for caller in (listing.staff, viewer):
        error = await expect_error(listing.page(caller=caller), grpc.StatusCode.PERMISSION_DENIED)
        assert error_reason(error) == "ROLE_REQUIRED", error.details()

    db = Database(settings.database_url("auth"))
    try:
        await grant_role(db, email=ADMIN, role="staff")
    finally:
        await db.dispose()
    stale = await expect_error(listing.page(), grpc.StatusCode.UNAUTHENTICATED)
    assert error_reason(stale) == "TOKEN_REVOKED", stale.details()
