"""Typed settings from the environment, validated once at startup.

Every service reads the same `Settings`; each uses the part it needs. Secrets are
`SecretStr`, so neither `repr()` nor a validation error ever shows them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mesh.services import SERVICES


class ConfigError(Exception):
    """The environment does not describe a valid configuration; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class SmtpServer:
    hostname: str
    port: int
    implicit_tls: bool
    starttls: bool
    username: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpServer:
    """`smtp://[user:pass@]host:port[?starttls=1]` or `smtps://…` (implicit TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("must name a host, as in smtp://mail.example.com:587")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    starttls = parse_qs(parts.query).get("starttls", ["0"])[-1].lower() in ("1", "true", "yes")
    return SmtpServer(
        hostname=parts.hostname,
        port=port or (465 if parts.scheme == "smtps" else 25),
        implicit_tls=parts.scheme == "smtps",
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def parse_service_secrets(text: str) -> dict[str, bytes]:
    """`products:s1,inventory:s2` -> {"products": b"s1", ...}; ValueError if malformed."""
    parsed: dict[str, bytes] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        client_id, sep, secret = entry.partition(":")
        if not sep or not client_id.strip() or len(secret) < 16:
            raise ValueError("must be NAME:SECRET pairs, each secret 16 characters or more")
        parsed[client_id.strip()] = secret.encode()
    return parsed


_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def parse_host_port(text: str) -> tuple[str, int]:
    """`host:port`, or `[ipv6]:port` -> (host without brackets, port); ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not host:port, as in 127.0.0.1:50051")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, as in [::1]:50051")
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{text!r} names no valid host, as in 127.0.0.1:50051 or inventory:50053")
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"{text!r}: the port {port!r} is not a number")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port {int(port)} is out of range (1-65535)")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def service_endpoints(address: str) -> list[str]:
    """The places a `<SERVICE>_ADDR` names, in order, each one a server could listen on:
    `host:port` (one, or a comma list of replicas), the `host:port` of a `dns:[//authority/]`
    target, the addresses of an `ipv4:`/`ipv6:` list, or a `unix:` socket path as it is.
    ValueError says what is wrong."""
    scheme, colon, rest = address.strip().partition(":")
    if colon and scheme == "unix":
        if not rest.strip("/"):
            raise ValueError(f"{address!r} names no socket path, as in unix:///run/invmesh/auth.sock")
        return [address.strip()]
    if colon and scheme == "dns":
        if rest.startswith("//"):  # dns://authority/host:port, the authority (a DNS server) often empty
            _, slash, rest = rest[2:].partition("/")
            if not slash:
                raise ValueError(f"{address!r} is not dns:///host:port")
        return [join_host_port(*parse_host_port(rest))]
    if colon and scheme in ("ipv4", "ipv6"):
        version, family = (
            (ipaddress.IPv4Address, "IPv4") if scheme == "ipv4" else (ipaddress.IPv6Address, "IPv6")
        )
        listed = []
        for entry in rest.split(","):
            host, port = parse_host_port(entry)
            try:
                version(host)
            except ValueError:
                raise ValueError(f"{address!r}: {host!r} is not an {family} address") from None
            listed.append(join_host_port(host, port))
        return listed
    if not address.strip():
        raise ValueError(
            "must be host:port, a comma list of them, or a gRPC target such as dns:///auth:50051"
        )
    return [join_host_port(*parse_host_port(entry)) for entry in address.split(",")]


class Settings(BaseSettings):
    """Every setting, by its environment variable (see the table in README.md)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    invmesh_data_dir: Path = Path(".invmesh")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    # After health turns NOT_SERVING, a stopping service goes on serving this long, while the
    # channels that watch its health (every mesh channel) move their calls to other replicas.
    shutdown_lame_duck_seconds: float = Field(0.5, ge=0)

    auth_addr: str = "127.0.0.1:50051"
    auth_database_url: SecretStr | None = None
    products_addr: str = "127.0.0.1:50052"
    products_database_url: SecretStr | None = None
    inventory_addr: str = "127.0.0.1:50053"
    inventory_database_url: SecretStr | None = None
    # Each service's connection pool on PostgreSQL and MariaDB: size + overflow connections at most;
    # a call that waits longer than the timeout for one, or for a new connection, gets UNAVAILABLE.
    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    db_pool_timeout_seconds: float = Field(5.0, gt=0)
    db_connect_timeout_seconds: float = Field(5.0, gt=0)
    # Migrate an outdated schema at startup; unset means on for SQLite, off for database servers.
    db_auto_migrate: bool | None = None
    # Deadline of a call to another service when the caller set none; a caller's own shorter
    # remaining deadline always wins.
    peer_timeout_seconds: float = Field(3.0, gt=0)
    # Inventory remembers that a product exists this long rather than asking products on every
    # movement and read (0: ask every time). See inventory/product_check.py.
    product_check_cache_seconds: float = Field(60.0, ge=0)
    # Products serves GetProduct and ListProducts pages from memory at most this long after
    # reading them (0: read every time). Its own writes and stock reports replace them at once,
    # another replica's within about 0.1 s through the change log; this is the bound should the
    # log miss one. See products/change_watch.py.
    product_cache_seconds: float = Field(30.0, ge=0)

    # The REST facade: every route on each port (the original layout's 8000, 8001, 8002).
    facade_host: str = "127.0.0.1"
    facade_ports: Annotated[list[int], NoDecode] = Field([8000, 8001, 8002], min_length=1)
    # Deadline of a backend call when the client sends no Grpc-Timeout header, and the most
    # a client may ask for.
    facade_timeout_seconds: float = Field(10.0, gt=0)
    facade_max_timeout_seconds: float = Field(60.0, gt=0)
    facade_max_body_bytes: int = Field(1 << 20, ge=1024)
    # Origins allowed by CORS (comma list, or *); none by default, so CORS is off.
    facade_cors_origins: Annotated[list[str], NoDecode] = []

    jwt_issuer: str = Field("invmesh-auth", min_length=1)
    jwt_audience: str = Field("invmesh", min_length=1)
    # How far the clocks of auth and a verifying service may disagree: a token is accepted
    # this long before its `iat` and after its `exp`.
    token_clock_skew_seconds: int = Field(5, ge=0, le=300)
    # These addresses become admins when they verify (compared in lower case); others start as viewers.
    admin_emails: Annotated[list[str], NoDecode] = []
    jwt_private_key: SecretStr | None = None
    access_token_ttl_seconds: int = Field(900, ge=30, le=86_400)
    # Client credentials of the services, known to auth: `products:SECRET,inventory:SECRET`.
    # `invmesh up` makes fresh ones at each start when unset.
    service_secrets: SecretStr | None = None
    # This process's own secret among them (its service name is the client id).
    service_secret: SecretStr | None = None
    service_token_ttl_seconds: int = Field(300, ge=30, le=3600)
    refresh_token_ttl_seconds: int = Field(30 * 86_400, ge=60)
    jwks_refetch_interval_seconds: float = Field(30.0, ge=0)

    bcrypt_rounds: int = Field(12, ge=4, le=31)
    verification_token_ttl_seconds: int = Field(86_400, ge=60)
    # Abuse limits, counted in the auth database (so across replicas) per fixed window: over
    # one, the call is RESOURCE_EXHAUSTED (HTTP 429) with a RetryInfo (Retry-After).
    login_failures_per_account: int = Field(10, ge=1)
    login_failures_per_address: int = Field(100, ge=1)
    login_failure_window_seconds: int = Field(900, ge=1)
    verification_resends_per_account: int = Field(3, ge=1)
    verification_resends_per_address: int = Field(30, ge=1)
    verification_resend_window_seconds: int = Field(3600, ge=1)
    # Peers whose X-Forwarded-For is believed (addresses or networks): the facade's, by auth;
    # a load balancer's, by the facade. Anyone else is the client address itself.
    trusted_proxies: Annotated[list[str], NoDecode] = ["127.0.0.0/8", "::1"]

    public_url: str = "http://localhost:8000"
    smtp_url: SecretStr | None = None
    mail_from: str = "invmesh <no-reply@localhost>"
    smtp_timeout_seconds: float = Field(15.0, gt=0)
    mail_retry_initial_seconds: float = Field(5.0, gt=0)
    mail_retry_max_seconds: float = Field(600.0, gt=0)
    # Backoff of the relays that deliver work to another service (products retiring inventory items).
    outbox_retry_initial_seconds: float = Field(0.5, gt=0)
    outbox_retry_max_seconds: float = Field(30.0, gt=0)

    @field_validator("facade_ports", "facade_cors_origins", "trusted_proxies", "admin_emails", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("facade_ports")
    @classmethod
    def _ports_in_range(cls, value: list[int]) -> list[int]:
        for k, port in enumerate(value):
            if not 1 <= port <= 65535:
                raise ValueError(f"the port {port} is out of range (1-65535)")
            if port in value[:k]:
                raise ValueError(f"lists the port {port} twice; each port takes one listener")
        return value

    @field_validator("auth_addr", "products_addr", "inventory_addr")
    @classmethod
    def _service_address(cls, value: str) -> str:
        service_endpoints(value)
        return value.strip()

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network, as in 10.0.0.0/8") from None
        return value

    @field_validator("service_secrets")
    @classmethod
    def _service_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_service_secrets(value.get_secret_value())
        return value

    @field_validator("admin_emails")
    @classmethod
    def _lower_case(cls, value: list[str]) -> list[str]:
        return [address.lower() for address in value]

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _retry_bounds_ordered(self) -> Settings:
        bounds = {
            "MAIL": (self.mail_retry_initial_seconds, self.mail_retry_max_seconds),
            "OUTBOX": (self.outbox_retry_initial_seconds, self.outbox_retry_max_seconds),
        }
        for name, (initial, most) in bounds.items():
            if most < initial:
                raise ValueError(f"{name}_RETRY_MAX_SECONDS must be at least {name}_RETRY_INITIAL_SECONDS")
        return self

    @property
    def data_dir(self) -> Path:
        return self.invmesh_data_dir

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url_parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            parse_smtp_url(value.get_secret_value())
            return value
        return None

    @field_validator("public_url")
    @classmethod
    def _public_url_is_http(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    def database_url(self, service: str) -> str:
        """`<SERVICE>_DATABASE_URL`, or an SQLite file in the data directory."""
        configured: SecretStr | None = getattr(self, SERVICES[service].database_setting)
        if configured is not None and configured.get_secret_value():
            return configured.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    def address(self, service: str) -> str:
        """`<SERVICE>_ADDR`: one `host:port`, a comma list of replicas, or a gRPC target."""
        address: str = getattr(self, SERVICES[service].address_setting)
        return address

    def auto_migrate(self, service: str) -> bool:
        """Whether `service` migrates its own schema at startup (DB_AUTO_MIGRATE, else only on SQLite)."""
        if self.db_auto_migrate is not None:
            return self.db_auto_migrate
        return self.database_url(service).startswith("sqlite")

    @property
    def smtp_server(self) -> SmtpServer | None:
        return parse_smtp_url(self.smtp_url.get_secret_value()) if self.smtp_url else None

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"


def load_settings(**overrides: object) -> Settings:
    """Reads the environment (overrides win); raises ConfigError naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = f"{str(error['loc'][0]).upper()}: " if error["loc"] else ""
            problems.append(f"  {where}{error['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(problems)) from None
