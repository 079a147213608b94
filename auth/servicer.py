"""AuthService over gRPC: translates protos to `Accounts` calls and back, nothing more."""

from __future__ import annotations

from typing import TypedDict

from auth import throttle
from auth.accounts import Accounts, Tokens
from auth.clients import ServiceClients
from auth.keys import KeyStore
from auth.models import User
from invmesh.auth.v1 import auth_service_pb2 as pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from mesh import forwarding
from mesh.errors import InvalidArgument
from mesh.interceptors import ServicerContext, metadata_value
from mesh.messages import timestamp


def user_message(user: User) -> pb.User:
    return pb.User(
        id=user.id,
        email=user.email,
        name=user.name,
        email_verified=user.email_verified,
        roles=user.roles,
        created_at=timestamp(user.created_at),
    )


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, accounts: Accounts, keys: KeyStore, clients: ServiceClients) -> None:
        self._accounts = accounts
        self._clients = clients
        # Only the facade's client secret vouches for a client address (mesh.forwarding).
        self._forwarder_secret = clients.secret_of(forwarding.FORWARDER)
        self._keys = keys
        self._jwks = pb.GetJwksResponse()

    async def Register(self, request: pb.RegisterRequest, context: ServicerContext) -> pb.RegisterResponse:
        registered = await self._accounts.register(
            email=request.email, password=request.password, name=request.name, client=self._client(context)
        )
        user = pb.User(email=registered.email, name=registered.name, email_verified=False, roles=["viewer"])
        return pb.RegisterResponse(user=user)

    async def Login(self, request: pb.LoginRequest, context: ServicerContext) -> pb.LoginResponse:
        tokens = await self._accounts.login(
            email=request.email, password=request.password, client=self._client(context)
        )
        return pb.LoginResponse(**_token_fields(tokens))

    async def VerifyEmail(
        self, request: pb.VerifyEmailRequest, context: ServicerContext
    ) -> pb.VerifyEmailResponse:
        match request.WhichOneof("action"):
            case "email":
                await self._accounts.resend_verification(request.email, client=self._client(context))
                return pb.VerifyEmailResponse()
            case "token":
                return pb.VerifyEmailResponse(
                    user=user_message(await self._accounts.confirm_email(request.token))
                )
            case _:
                raise InvalidArgument(
                    "send `email` to re-send the verification mail or `token` to confirm it",
                    reason="MISSING_ACTION",
                )

    async def RefreshToken(
        self, request: pb.RefreshTokenRequest, context: ServicerContext
    ) -> pb.RefreshTokenResponse:
        tokens = await self._accounts.refresh(request.refresh_token)
        return pb.RefreshTokenResponse(**_token_fields(tokens))

    async def Logout(self, request: pb.LogoutRequest, context: ServicerContext) -> pb.LogoutResponse:
        await self._accounts.logout(request.refresh_token)
        return pb.LogoutResponse()

    async def GetMe(self, request: pb.GetMeRequest, context: ServicerContext) -> pb.GetMeResponse:
        return pb.GetMeResponse(user=user_message(await self._accounts.caller()))

    async def ListUsers(self, request: pb.ListUsersRequest, context: ServicerContext) -> pb.ListUsersResponse:
        users, token = await self._accounts.list_users(
            page_size=request.page_size, page_token=request.page_token, q=request.q
        )
        return pb.ListUsersResponse(users=[user_message(user) for user in users], next_page_token=token)

    async def SetUserRole(
        self, request: pb.SetUserRoleRequest, context: ServicerContext
    ) -> pb.SetUserRoleResponse:
        user = await self._accounts.set_role(email=request.email, role=request.role)
        return pb.SetUserRoleResponse(user=user_message(user))

    async def ChangePassword(
        self, request: pb.ChangePasswordRequest, context: ServicerContext
    ) -> pb.ChangePasswordResponse:
        tokens = await self._accounts.change_password(
            current_password=request.current_password, new_password=request.new_password
        )
        return pb.ChangePasswordResponse(**_token_fields(tokens))

    def _client(self, context: ServicerContext) -> str:
        """The caller's address, for the abuse limits: the peer's, or the facade's client's
        when the facade proves it sent it (mesh.forwarding)."""
        forwarded = forwarding.proven_address(
            metadata_value(context, forwarding.ADDRESS_KEY),
            metadata_value(context, forwarding.PROOF_KEY),
            self._forwarder_secret,
        )
        return throttle.client_address(context.peer(), forwarded)

    async def IssueServiceToken(
        self, request: pb.IssueServiceTokenRequest, context: ServicerContext
    ) -> pb.IssueServiceTokenResponse:
        token, expires_in = await self._clients.issue(request.client_id, request.client_secret)
        return pb.IssueServiceTokenResponse(access_token=token, token_type="Bearer", expires_in=expires_in)

    async def GetJwks(self, request: pb.GetJwksRequest, context: ServicerContext) -> pb.GetJwksResponse:
        await self._keys.refresh_if_due()
        jwks = self._keys.jwks
        if [key.kid for key in self._jwks.keys] != [jwk["kid"] for jwk in jwks]:  # rotated
            self._jwks = pb.GetJwksResponse(keys=[pb.Jwk(**jwk) for jwk in jwks])
        return self._jwks


class _TokenFields(TypedDict):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str


def _token_fields(tokens: Tokens) -> _TokenFields:
    return {
        "access_token": tokens.access_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in,
        "refresh_token": tokens.refresh_token,
    }
