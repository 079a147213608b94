"""Runs the facade under uvicorn (uvloop, httptools) on every configured port at once."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from facade.app import create_app
from facade.limits import ConnectionLimits, guarded_protocol
from mesh.config import Settings
from mesh.tls import ReloadingSslContext


def bind(host: str, ports: list[int]) -> list[socket.socket]:
    """Listening sockets, bound before uvicorn starts so a taken port fails loudly and early."""
    sockets: list[socket.socket] = []
    for port in ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets it knows are TCP.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            for opened in sockets:
                opened.close()
            raise SystemExit(f"invmesh: the facade cannot listen on {host}:{port}: {exc.strerror}") from None
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """How uvicorn serves the facade: httptools with the limits of facade.limits, over HTTPS
    when FACADE_TLS_CERT_FILE and FACADE_TLS_KEY_FILE are set."""
    limits = ConnectionLimits(
        max_head_bytes=settings.facade_max_head_bytes,
        head_timeout_seconds=settings.facade_head_timeout_seconds,
        max_connections=settings.facade_max_connections,
    )
    https: dict[str, Any] = {}
    if (pair := settings.facade_tls) is not None:
        # A context whose certificate is read again once its files change (mesh.tls): uvicorn's
        # own would keep the first one until a restart.
        https = {
            "ssl_certfile": pair.cert_path,
            "ssl_keyfile": pair.key_path,
            "ssl_context_factory": lambda config, default: ReloadingSslContext(pair, default).context,
        }
    return uvicorn.Config(
        app,
        loop="uvloop",
        http=guarded_protocol(limits),
        lifespan="on",
        access_log=False,  # RequestIdMiddleware writes the access log, with the request id
        log_config=None,  # keep the process's own logging setup
        server_header=False,
        # The client address (which auth's abuse limits count) from a load balancer's
        # X-Forwarded-For, when the load balancer is one of TRUSTED_PROXIES.
        forwarded_allow_ips=settings.trusted_proxies,
        # uvicorn waits any number of seconds; its hint says int
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]
        **https,
    )


def run(settings: Settings) -> None:
    """Serves until SIGINT or SIGTERM, then lets in-flight requests finish."""
    sockets = bind(settings.facade_host, settings.facade_ports)
    uvicorn.Server(uvicorn_config(create_app(settings), settings)).run(sockets=sockets)
