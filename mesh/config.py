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

from mesh import tls
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
    """Every setting, by its environment variable (docs/configuration.md is generated from it)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    invmesh_data_dir: Path = Field(
        Path(".invmesh"),
        description="Folder for the SQLite databases (`<service>.db`) and the mail outbox (`outbox/`).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="The least level that is logged; read in any case."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` (logfmt) or `json` (one object per line); written to stderr."
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="How long calls in flight may run once a stopping service refuses new calls. "
        "Calls still running then fail with `UNAVAILABLE`, which a client may resend.",
    )
    shutdown_lame_duck_seconds: float = Field(
        0.5,
        ge=0,
        description="How long a stopping service goes on serving after its health turns NOT_SERVING, "
        "so that clients watching its health (every channel of the mesh and of the facade) send their "
        "calls to other replicas first, and a rolling restart fails no call.",
    )
    grpc_max_connection_age_seconds: float = Field(
        300.0,
        ge=0,
        description="How long a service keeps a client's connection before asking the client to "
        "reconnect (an HTTP/2 GOAWAY, gRFC A9; gRPC varies it by up to 10% either way). Each "
        "reconnect makes the client resolve its target again, so a `dns:///` target finds replicas "
        "added since it connected (a scale-up) and spreads its calls over them. New calls go over "
        "the new connection; calls in flight finish on the old one. 0: never.",
    )
    grpc_max_connection_age_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="How long calls already running on a connection that reached its age may go on "
        "(new calls go over the client's new connection); any still running then fail with "
        "`UNAVAILABLE`. 0: no limit.",
    )

    auth_addr: str = Field(
        "127.0.0.1:50051",
        description="Where the auth service listens, and where products, inventory and the facade call "
        "it. `invmesh up` also uses it for health checks. A caller may be given several replicas: a "
        "comma list of `host:port` (resolved once at startup) or a gRPC target such as "
        "`dns:///auth.internal:50051` (re-resolved); calls are balanced round-robin. Accepted forms: "
        "`host:port`, `[ipv6]:port`, comma lists of those, `dns:///host:port`, `ipv4:`/`ipv6:` address "
        "lists and `unix:PATH`; every port 1-65535. A service listens on the first place its setting "
        "names. The same holds for `PRODUCTS_ADDR` and `INVENTORY_ADDR`.",
    )
    auth_database_url: SecretStr | None = Field(
        None,
        description="The auth database, as an async SQLAlchemy URL: `sqlite+aiosqlite:///path.db`, "
        "`postgresql+asyncpg://user:pass@host:5432/db` or `mysql+asyncmy://user:pass@host:3306/db` "
        "(MariaDB or MySQL). Unset: `sqlite+aiosqlite:///<INVMESH_DATA_DIR>/auth.db`.",
    )
    products_addr: str = Field(
        "127.0.0.1:50052",
        description="Where the products service listens, and where inventory and the facade call it. "
        "`invmesh up` also uses it for health checks.",
    )
    products_database_url: SecretStr | None = Field(
        None,
        description="As `AUTH_DATABASE_URL`, for the products database. "
        "Unset: `sqlite+aiosqlite:///<INVMESH_DATA_DIR>/products.db`.",
    )
    inventory_addr: str = Field(
        "127.0.0.1:50053",
        description="Where the inventory service listens, and where products and the facade call it. "
        "`invmesh up` also uses it for health checks.",
    )
    inventory_database_url: SecretStr | None = Field(
        None,
        description="As `AUTH_DATABASE_URL`, for the inventory database. "
        "Unset: `sqlite+aiosqlite:///<INVMESH_DATA_DIR>/inventory.db`.",
    )
    facade_metrics_addr: str = Field(
        "127.0.0.1:9100",
        description="Where the facade serves its Prometheus metrics, at `http://<address>/metrics` "
        "(`host:port`); empty: no metrics, and none are counted. Each process serves its own: "
        "`AUTH_METRICS_ADDR`, `PRODUCTS_METRICS_ADDR` and `INVENTORY_METRICS_ADDR` likewise. "
        "`invmesh up --replicas` gives replica k the port + 10*k, as it does their gRPC ports.",
    )
    auth_metrics_addr: str = Field(
        "127.0.0.1:9101", description="Where auth serves its metrics (`/metrics`); empty: none."
    )
    products_metrics_addr: str = Field(
        "127.0.0.1:9102", description="Where products serves its metrics (`/metrics`); empty: none."
    )
    inventory_metrics_addr: str = Field(
        "127.0.0.1:9103", description="Where inventory serves its metrics (`/metrics`); empty: none."
    )
    db_pool_size: int = Field(
        20,
        ge=1,
        description="Connections each service keeps open to a PostgreSQL or MariaDB database, opened "
        "as calls first need them. SQLite uses no pool setting.",
    )
    db_max_overflow: int = Field(
        0,
        ge=0,
        description="Extra connections a service may open beyond `DB_POOL_SIZE` under load, each "
        "closed when returned: under steady load above the pool's size, every call past it opens and "
        "closes one (a connection's handshake costs more CPU than most calls), so the default is none "
        "and calls wait for a pooled connection instead.",
    )
    db_pool_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long a call waits for a free connection when all are busy; then it fails "
        "with `UNAVAILABLE` (`DATABASE_UNAVAILABLE`).",
    )
    db_connect_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long opening a connection may take, handshake included; a server that is "
        "down or silent gives `UNAVAILABLE` after at most this.",
    )
    health_db_check_seconds: float = Field(
        1.0,
        ge=0,
        description="How often each service pings its database (`SELECT 1`) for its readiness: the "
        "health of its own service name (`invmesh.inventory.v1.InventoryService`) turns NOT_SERVING "
        "after `HEALTH_DB_FAILURES` failed pings in a row and SERVING again after "
        '`HEALTH_DB_SUCCESSES` answered ones. The server\'s overall health (`""`, liveness) does not '
        "follow the database. A call failing with `DATABASE_UNAVAILABLE` brings the next ping "
        "forward. 0: no pings, the service stays SERVING whatever its database does.",
    )
    health_db_timeout_seconds: float = Field(
        1.0,
        gt=0,
        description="How long a health ping of the database may take, waiting for a free pooled "
        "connection included; a slower one counts as failed (so a pool that stays exhausted longer "
        "than this also turns readiness off).",
    )
    health_db_failures: int = Field(
        3,
        ge=1,
        description="Failed database pings in a row that turn a service's readiness NOT_SERVING. "
        "With the defaults: about 2 to 4 s after its database stops answering.",
    )
    health_db_successes: int = Field(
        2,
        ge=1,
        description="Answered database pings in a row that turn a service's readiness SERVING "
        "again (1 to 2 s after its database is back, with the defaults).",
    )
    db_auto_migrate: bool | None = Field(
        None,
        description="`true`: a service whose database schema is older than its code migrates it at "
        "startup. `false`: it refuses to start and says to run `invmesh migrate <service>`. "
        "Unset: on for SQLite, off for database servers.",
    )
    peer_timeout_seconds: float = Field(
        3.0,
        gt=0,
        description="Deadline of a call from one service to another when the caller set none: the "
        "products relay's `DeleteInventoryItem` and inventory's `BatchGetProducts` and "
        "`UpdateStockLevels`. When the incoming call has less time left, its remaining time is used "
        "instead. The retirement relay's lease on a row is twice this.",
    )
    product_check_cache_seconds: float = Field(
        60.0,
        ge=0,
        description="How long inventory remembers that products confirmed a product exists, instead "
        "of asking on every movement and stock read (0: ask every time). A deleted product is still "
        "refused at once; see docs/architecture.md.",
    )
    stock_report_wait_seconds: float = Field(
        1.0,
        ge=0,
        description="The longest a write that changes a product's stock (a movement, a count, a "
        "reservation's confirmation) waits, before answering, for inventory's stock feed to report "
        "it to products, so that the caller's next product read shows it (read-your-writes); at "
        "most half the call's time left. Past it the write answers all the same (it is committed), "
        "products shows the change once the feed reaches it, and "
        "`invmesh_stock_report_waits_timed_out_total` counts it. 0: writes do not wait, and products "
        "shows a change within about 50 ms.",
    )
    reservation_sweep_seconds: float = Field(
        30.0,
        gt=0,
        description="How often inventory marks reservations past their expiry EXPIRED, for reads and "
        "lists. Availability does not wait for it: a reservation stops holding stock at its "
        "expires_at either way.",
    )
    watch_max_streams: int = Field(
        1000,
        ge=1,
        description="How many WatchMovements streams one inventory process follows at once; one more "
        "is refused with RESOURCE_EXHAUSTED (TOO_MANY_WATCHERS), so a client tries another replica.",
    )
    watch_buffer_events: int = Field(
        1000,
        ge=1,
        description="Movements (each with the low-stock signal it caused, if any) a WatchMovements stream "
        "holds for a client that reads slower than movements are recorded; when they fill, the stream "
        "sends them and ends with RESOURCE_EXHAUSTED (SLOW_CONSUMER), and the client resumes from its "
        "last cursor. Memory per stream stays bounded by it.",
    )
    watch_heartbeat_seconds: float = Field(
        15.0,
        gt=0,
        description="Seconds without an event after which a WatchMovements stream sends a heartbeat (with "
        "its cursor), so proxies and load balancers keep an idle stream open.",
    )
    watch_linger_seconds: float = Field(
        0.2,
        ge=0,
        le=1,
        description="The least time between two messages of a WatchMovements stream while movements "
        "keep coming: a stream that sent less than this ago waits out the rest, and its next message "
        "carries every event that came meanwhile (sooner if they fill half of WATCH_BUFFER_EVENTS). "
        "An idle stream's first event goes at once. Most of a stream's cost is per message: at 0.05 "
        "10 busy streams cost inventory about 2.5 times what they cost at 0.2; 0 sends each batch "
        "as soon as it is ready.",
    )
    product_cache_seconds: float = Field(
        30.0,
        ge=0,
        description="The longest a products process answers `GetProduct` or a `ListProducts` page from "
        "memory after reading it (0: read the database every time); at most 10,000 products and "
        "2 MB of pages, kept as their serialized answers, the least recently read out first. Its "
        "own writes and stock reports replace its copy at once, and another replica's within "
        "about 0.1 s through the `product_changes` log. This time only bounds a change the log "
        "could not carry in time: one whose transaction was open when the process started, or "
        "committed more than 2 s after it was logged.",
    )

    grpc_tls_cert_file: Path | None = Field(
        None,
        description="A PEM certificate (chain) for this process's gRPC servers; with "
        "`GRPC_TLS_KEY_FILE`, every gRPC server of the process serves TLS with it, and its gRPC "
        "clients present it to servers that ask for one (mTLS). The servers use renewed files from the "
        "next connection on, without a restart; the clients present what they read at startup until "
        "the next. Every TLS file setting is checked at startup (it exists, is PEM, the key fits). "
        "Unset: the servers speak plaintext.",
    )
    grpc_tls_key_file: Path | None = Field(
        None,
        description="The unencrypted PEM private key of `GRPC_TLS_CERT_FILE`; set both or neither.",
    )
    grpc_tls_client_ca_file: Path | None = Field(
        None,
        description="A PEM CA certificate: the gRPC servers accept only clients presenting a "
        "certificate it signed (mTLS). Needs `GRPC_TLS_CERT_FILE`. Re-read when it changes, as the "
        "certificate is.",
    )
    grpc_tls_ca_file: Path | None = Field(
        None,
        description="A PEM CA certificate: every gRPC client of the process (calls between services, "
        "the facade's calls, `invmesh up`'s health checks) uses TLS and accepts only servers whose "
        "certificate it signed, for the host name of their address. Read when a channel opens (at "
        "startup): a client certificate or CA renewed on disk is used after a restart. Unset: the "
        "clients speak plaintext.",
    )
    grpc_probe_addr: str = Field(
        "",
        description="`host:port` of an extra plaintext listener serving only `grpc.health.v1.Health` "
        "(the same states as the main server, which it stops with), for probes that cannot speak TLS "
        "such as kubelet's gRPC probe: `0.0.0.0:8086` in Kubernetes. Empty: none.",
    )

    facade_host: str = Field(
        "127.0.0.1", description="Where the REST facade listens (`0.0.0.0` for every interface)."
    )
    facade_ports: Annotated[list[int], NoDecode] = Field(
        [8000, 8001, 8002],
        min_length=1,
        description="The facade's ports, comma-separated, distinct, each 1-65535; it serves every route on "
        "each. 8000 is the one to use; 8001 and 8002 keep clients of the original layout working.",
    )
    facade_tls_cert_file: Path | None = Field(
        None,
        description="A PEM certificate (chain): with `FACADE_TLS_KEY_FILE`, the facade serves HTTPS "
        "on every port. Renewed files are used from the next connection on, without a restart.",
    )
    facade_tls_key_file: Path | None = Field(
        None, description="The unencrypted PEM private key of `FACADE_TLS_CERT_FILE`; set both or neither."
    )
    facade_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Deadline of the facade's call to a service when the client sends no "
        "`Grpc-Timeout` header.",
    )
    facade_max_timeout_seconds: float = Field(
        60.0, gt=0, description="The longest deadline a client may ask for with `Grpc-Timeout`."
    )
    facade_max_body_bytes: int = Field(
        1 << 20, ge=1024, description="Largest request body the facade reads; a larger one gets 413."
    )
    facade_max_head_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Largest request head (request line and headers together) the facade reads; "
        "past it the facade answers 431 and closes the connection, before the head is parsed further.",
    )
    facade_head_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long a client may take to send a request head, from its first byte (or from "
        "opening the connection); then the facade answers 408 and closes the connection. A connection "
        "that sent nothing is closed without an answer.",
    )
    facade_max_connections: int = Field(
        500,
        ge=1,
        description="Open connections each facade process keeps, over all its ports; one more is "
        "answered 503 with `Retry-After` and closed. Keep it below the process's open-file limit "
        "(`ulimit -n`).",
    )
    facade_cors_origins: Annotated[list[str], NoDecode] = Field(
        [],
        description="Origins allowed to call the facade from a browser, comma-separated, or `*`. "
        "Unset: CORS is off.",
    )

    jwt_issuer: str = Field(
        "invmesh-auth",
        min_length=1,
        description="The `iss` claim of access tokens, which every verifier requires.",
    )
    jwt_audience: str = Field(
        "invmesh",
        min_length=1,
        description="The `aud` claim of access tokens, which every verifier requires.",
    )
    token_clock_skew_seconds: int = Field(
        5,
        ge=0,
        le=300,
        description="How far the clocks of the auth service and of a verifying service may disagree: "
        "a token is accepted this long before its `iat` and after its `exp`.",
    )
    admin_emails: Annotated[list[str], NoDecode] = Field(
        [],
        description="Addresses, comma-separated, that become admins when they are verified (compared "
        "in lower case). Others start as viewers.",
    )
    jwt_private_key: SecretStr | None = Field(
        None,
        description="A P-256 (ES256) private key in PEM, unencrypted. When set, only this key signs "
        "tokens, GetJwks publishes only this key, and `invmesh keys rotate` refuses. Unset: keys are "
        "generated on first start, kept in the auth database, and rotate "
        "(see docs/operations.md). To make one: "
        "`openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt`.",
    )
    access_token_ttl_seconds: int = Field(
        900,
        ge=30,
        le=86_400,
        description="Access token lifetime. Also how long an access token from before a password "
        "change still works at products and inventory (the auth service refuses it at once).",
    )
    service_secrets: SecretStr | None = Field(
        None,
        description="Auth only: the services' client credentials, "
        "`products:SECRET,inventory:SECRET,facade:SECRET` (each secret 16 characters or more). "
        "`IssueServiceToken` gives a service with a listed secret a token with the `service` role; "
        "any other is `INVALID_CLIENT`. The facade's secret only proves the client addresses it "
        "passes on (it gets no token); without it, every login through the facade counts against "
        "the facade's own address. Unset: `invmesh up` "
        "makes fresh ones at each start. When set, `invmesh up` makes none, and each service needs "
        "its `SERVICE_SECRET`.",
    )
    service_secret: SecretStr | None = Field(
        None,
        description="This process's own secret among `SERVICE_SECRETS` (its service name is the "
        "client id); `invmesh up` makes it when `SERVICE_SECRETS` is unset. Products needs it to "
        "retire a deleted product's stock; without it, retirements wait in the outbox and the relay "
        "logs that `SERVICE_SECRET` is not set. The facade needs it to pass on its clients' "
        "addresses to auth (its client id is `facade`).",
    )
    service_token_ttl_seconds: int = Field(
        300,
        ge=30,
        le=3600,
        description="Lifetime of a service token. A service renews its token at 80 % of it.",
    )
    refresh_token_ttl_seconds: int = Field(
        30 * 86_400, ge=60, description="Refresh token lifetime (30 days by default)."
    )
    jwks_refetch_interval_seconds: float = Field(
        30.0,
        ge=0,
        description="Minimum time between two GetJwks fetches that a token with an unknown `kid` "
        "triggers, in products and inventory. The auth service reloads its own keys from the "
        "database as often, and a rotated-in key starts signing twice this long after it is stored.",
    )

    bcrypt_rounds: int = Field(12, ge=4, le=31, description="bcrypt cost for passwords.")
    verification_token_ttl_seconds: int = Field(
        86_400, ge=60, description="Lifetime of the link in a verification mail."
    )
    login_failures_per_account: int = Field(
        10,
        ge=1,
        description="Failed logins allowed per email address (typed, whether or not it has an "
        "account) in a window of `LOGIN_FAILURE_WINDOW_SECONDS`; then Login is `RESOURCE_EXHAUSTED` "
        "(HTTP 429 with `Retry-After`), even with the right password, until the window ends. A "
        "successful login starts the count again. Attempts are counted before bcrypt runs, in the "
        "auth database (so across replicas); a login in flight counts until it succeeds. "
        "ChangePassword counts against the same limit.",
    )
    login_failures_per_address: int = Field(
        100,
        ge=1,
        description="The same limit per client address, higher because many users may share one "
        "(a NAT, an office).",
    )
    login_failure_window_seconds: int = Field(
        900, ge=1, description="The window of both login limits, from the first failure in it."
    )
    verification_resends_per_account: int = Field(
        3,
        ge=1,
        description="Verification mails that may be requested (`VerifyEmail` with `email`) per email "
        "address in a window of `VERIFICATION_RESEND_WINDOW_SECONDS`; then `RESOURCE_EXHAUSTED` "
        "(429), for unknown addresses alike.",
    )
    verification_resends_per_address: int = Field(
        30,
        ge=1,
        description="The same limit per client address; it also bounds registrations per client "
        "(`TOO_MANY_REGISTRATIONS`).",
    )
    verification_resend_window_seconds: int = Field(
        3600, ge=1, description="The window of both re-send limits."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        [],
        description="Facade only: addresses or networks of load balancers in front of the facade, "
        "comma-separated, whose `X-Forwarded-For` names the client (for auth's per-address limits). "
        "Unset: no forwarding header is believed, from loopback neither. Auth believes a client "
        "address only from the facade, which proves itself with its `SERVICE_SECRET` "
        "(`facade:…` in auth's `SERVICE_SECRETS`).",
    )

    public_url: str = Field(
        "http://localhost:8000",
        description="Public base URL of the REST facade (`http://` or `https://`). Verification links "
        "are built from it: `<PUBLIC_URL>/users/verify?token=…`.",
    )
    smtp_url: SecretStr | None = Field(
        None,
        description="`smtp://[user:pass@]host[:port][?starttls=1]` (port 25 by default) or "
        "`smtps://…` (implicit TLS, port 465 by default). Percent-encode special characters in the "
        "user name and password. Unset: mail is not sent; each message is written to "
        "`<INVMESH_DATA_DIR>/outbox/*.eml`.",
    )
    mail_from: str = Field(
        "invmesh <no-reply@localhost>",
        description="The `From` header. Its address is also the SMTP envelope sender.",
    )
    smtp_timeout_seconds: float = Field(
        15.0,
        gt=0,
        description="Timeout of one SMTP delivery. A claimed message becomes deliverable again after "
        "twice this value.",
    )
    mail_retry_initial_seconds: float = Field(
        5.0,
        gt=0,
        description="First retry delay after a failed delivery. The delay doubles after each failure.",
    )
    mail_retry_max_seconds: float = Field(
        600.0,
        gt=0,
        description="Longest retry delay, at least `MAIL_RETRY_INITIAL_SECONDS`. It is also the idle "
        "poll interval of the mail relay.",
    )
    outbox_retry_initial_seconds: float = Field(
        0.5,
        gt=0,
        description="First retry delay of the relays that deliver work to another service (products "
        "retiring a deleted product's stock in inventory; inventory's stock feed), after a failed "
        "call. The delay doubles after each failure.",
    )
    outbox_retry_max_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest retry delay of those relays, and the retirement relay's idle poll "
        "interval; at least `OUTBOX_RETRY_INITIAL_SECONDS`.",
    )

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

    @field_validator(
        "grpc_tls_cert_file",
        "grpc_tls_key_file",
        "grpc_tls_client_ca_file",
        "grpc_tls_ca_file",
        "facade_tls_cert_file",
        "facade_tls_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "grpc_tls_cert_file", "grpc_tls_client_ca_file", "grpc_tls_ca_file", "facade_tls_cert_file"
    )
    @classmethod
    def _pem_certificate(cls, value: Path | None) -> Path | None:
        if value is not None:
            tls.read_pem(value, tls.CERTIFICATE)
        return value

    @field_validator("grpc_tls_key_file", "facade_tls_key_file")
    @classmethod
    def _pem_key(cls, value: Path | None) -> Path | None:
        if value is not None:
            tls.read_pem(value, tls.PRIVATE_KEY)
        return value

    @field_validator("grpc_probe_addr")
    @classmethod
    def _probe_address(cls, value: str) -> str:
        if value.strip():
            parse_host_port(value)
        return value.strip()

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        for prefix in ("GRPC", "FACADE"):
            cert, key = (getattr(self, f"{prefix.lower()}_tls_{part}_file") for part in ("cert", "key"))
            if (cert is None) != (key is None):
                given, missing = ("CERT", "KEY") if key is None else ("KEY", "CERT")
                raise ValueError(
                    f"{prefix}_TLS_{given}_FILE is set without {prefix}_TLS_{missing}_FILE; "
                    "set both or neither"
                )
            if cert is not None:
                tls.check_pair(cert.read_bytes(), key.read_bytes(), cert, key)
        if self.grpc_tls_client_ca_file is not None and self.grpc_tls_cert_file is None:
            raise ValueError(
                "GRPC_TLS_CLIENT_CA_FILE (mTLS) needs the servers' own certificate: "
                "GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE"
            )
        return self

    @property
    def grpc_server_tls(self) -> tls.KeyPair | None:
        """The gRPC servers' key pair and client CA, when they serve TLS."""
        if self.grpc_tls_cert_file is None or self.grpc_tls_key_file is None:
            return None
        return tls.KeyPair(self.grpc_tls_cert_file, self.grpc_tls_key_file, self.grpc_tls_client_ca_file)

    @property
    def facade_tls(self) -> tls.KeyPair | None:
        """The facade's HTTPS key pair, when it serves HTTPS."""
        if self.facade_tls_cert_file is None or self.facade_tls_key_file is None:
            return None
        return tls.KeyPair(self.facade_tls_cert_file, self.facade_tls_key_file)

    @field_validator(
        "facade_metrics_addr", "auth_metrics_addr", "products_metrics_addr", "inventory_metrics_addr"
    )
    @classmethod
    def _metrics_address(cls, value: str) -> str:
        if value.strip():
            join_host_port(*parse_host_port(value))
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

    def metrics_address(self, component: str) -> str | None:
        """`<COMPONENT>_METRICS_ADDR` of a service or the facade; None when metrics are off."""
        address: str = getattr(self, f"{component}_metrics_addr")
        return address or None

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
            # A validator's own ValueError reads as its message alone, without pydantic's prefix.
            message = error["ctx"]["error"] if error["type"] == "value_error" else error["msg"]
            problems.append(f"  {where}{message}")
        raise ConfigError("invalid configuration:\n" + "\n".join(problems)) from None
