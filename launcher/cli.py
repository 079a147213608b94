"""`invmesh`: run the services.

invmesh up             every service and the REST facade, each in its own process,
                       until Ctrl-C or SIGTERM (exit status 0); a process that exits is
                       restarted, with a backoff, and given up after 5 exits in 2 minutes
                       (exit status 1 once all are); nothing starts if a port it needs is taken
invmesh up --replicas inventory=2,products=2
                       the same with several processes of a service: replica k listens on
                       the port of its `<SERVICE>_ADDR` + 10*k, and every process is given
                       the comma list of all replicas as that `<SERVICE>_ADDR`
invmesh up --tls [DIR]  the same over TLS: every gRPC hop mTLS, the facade HTTPS, each
                       component with its own certificate from DIR (default
                       <INVMESH_DATA_DIR>/tls), made by `certs init` first if DIR has none
invmesh serve NAME [--listen HOST:PORT]
                       one service (or the facade) in this process; a service listens on
                       HOST:PORT (default: the first address of its `<SERVICE>_ADDR`)
invmesh migrate [NAME…] bring the services' database schemas to the newest migration
invmesh keys rotate    store a new token signing key: published at once, signing once every
                       verifier can know it; older keys are dropped once their tokens expired
invmesh users list [--after EMAIL] [--page-size N] [--json]
                       the accounts by email, a page at a time (50 by default, 500 at most)
invmesh users show EMAIL [--json]
                       one account: id, name, roles, verification, sign-ins, failed logins
invmesh users grant EMAIL ROLE
                       give an account the role viewer, staff or admin, straight in the
                       auth database (how the first admin is made without ADMIN_EMAILS)
invmesh certs init DIR [--namespace NS] [--days N] [--force]
                       a development CA and a certificate for each component, in
                       cert-manager's Secret layout (DIR/<name>/tls.crt, tls.key, ca.crt)
invmesh --version      the installed version; `invmesh` alone lists the commands
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from importlib import metadata
from pathlib import Path
from typing import Any

import uvloop

from launcher.admin import grant, list_users, migrate, rotate_keys, show_user
from launcher.layout import (
    COMPONENTS,
    FACADE,
    listen_address,
    parse_listen,
    parse_replicas,
    replica_addresses,
    settings_or_exit,
)
from launcher.lifetime import stop_with_supervisor
from launcher.ports import listen_problem
from launcher.supervisor import up
from mesh.logs import configure_logging
from mesh.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from mesh.services import SERVICES


def serve(name: str, listen: str | None = None) -> None:
    stop_with_supervisor()
    settings = settings_or_exit()
    configure_logging(name, settings.log_level, settings.log_format)
    if name == FACADE:
        from facade.server import run  # only the facade process needs uvicorn and starlette

        run(settings)
        return
    # Only a service process needs the database and the gRPC server: the facade's stays smaller.
    from mesh.db import StartupError
    from mesh.server import ListenError, serve_until_signalled

    module = importlib.import_module(SERVICES[name].module)
    running: Callable[..., AbstractAsyncContextManager[Any]] = module.running
    address = listen or listen_address(settings.address(name))
    # Before the database is opened (and maybe migrated): a taken port is the likelier mistake.
    if problem := listen_problem(address):
        sys.exit(f"invmesh: {name}: cannot listen on {address}: {problem.strerror}")
    try:
        # uvloop, as the facade under uvicorn: grpc.aio runs on it, and its loop costs less per call.
        uvloop.run(serve_until_signalled(running(settings, address=address)))
    # An outdated schema or an unreachable database: say what to do. A port taken since the
    # check above: gRPC has logged why.
    except (StartupError, ListenError) as exc:
        sys.exit(f"invmesh: {name}: {exc}")


def installed_version() -> str:
    try:
        return metadata.version("invmesh")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def page_size(text: str) -> int:
    """argparse type of --page-size: a whole number from 1 to MAX_PAGE_SIZE."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_PAGE_SIZE}, not {text!r}")
    return int(text)


def days(text: str) -> int:
    """argparse type of --days: a whole number of days, 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of days, 1 or more, not {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="invmesh", description="Run the invmesh services and administer them."
    )
    parser.add_argument("--version", action="version", version=f"invmesh {installed_version()}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    up_parser = commands.add_parser("up", help="start every service and supervise them")
    up_parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"a subset of: {', '.join(COMPONENTS)}"
    )
    up_parser.add_argument(
        "--replicas",
        type=parse_replicas,
        metavar="SERVICE=N[,…]",
        help="run N processes of a service; replica k listens on the port of <SERVICE>_ADDR + 10*k",
    )
    up_parser.add_argument(
        "--tls",
        nargs="?",
        const="",  # --tls alone: the folder is known once the settings are read
        metavar="DIR",
        help="TLS on every hop, with the certificates in DIR (default: <INVMESH_DATA_DIR>/tls; "
        "made if there are none); name the services before --tls, or write --tls=DIR",
    )
    serve_parser = commands.add_parser("serve", help="run one service in this process")
    serve_parser.add_argument("service", choices=COMPONENTS)
    serve_parser.add_argument(
        "--listen",
        type=parse_listen,
        metavar="HOST:PORT",
        help="the address a service listens on (default: the first address of its <SERVICE>_ADDR)",
    )
    migrate_parser = commands.add_parser("migrate", help="apply the database migrations of services")
    migrate_parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"a subset of: {', '.join(SERVICES)} (default: all)"
    )
    keys_parser = commands.add_parser("keys", help="rotate the token signing keys (keys rotate)")
    keys_commands = keys_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    keys_commands.add_parser("rotate", help="store a new signing key; old ones retire as tokens expire")
    users_parser = commands.add_parser(
        "users", help="the accounts: users list, users show EMAIL, users grant EMAIL ROLE"
    )
    users_commands = users_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    list_parser = users_commands.add_parser("list", help="the accounts by email, a page at a time")
    list_parser.add_argument(
        "--after", metavar="EMAIL", help="start after this email (a page that is not the last says which)"
    )
    list_parser.add_argument(
        "--page-size",
        type=page_size,
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help=f"accounts per page, at most {MAX_PAGE_SIZE} (default: {DEFAULT_PAGE_SIZE})",
    )
    list_parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    show_parser = users_commands.add_parser("show", help="everything about one account")
    show_parser.add_argument("email", metavar="EMAIL")
    show_parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    grant_parser = users_commands.add_parser("grant", help="give an account a role")
    grant_parser.add_argument("email", metavar="EMAIL")
    grant_parser.add_argument("role", choices=["viewer", "staff", "admin"])
    certs_parser = commands.add_parser("certs", help="development TLS certificates (certs init DIR)")
    certs_commands = certs_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init_parser = certs_commands.add_parser(
        "init", help="a development CA and a certificate for each component, in DIR"
    )
    init_parser.add_argument("directory", type=Path, metavar="DIR")
    init_parser.add_argument(
        "--namespace",
        default="invmesh",
        metavar="NS",
        help="the Kubernetes namespace in the certificates' Service names (default: invmesh)",
    )
    init_parser.add_argument(
        "--days",
        type=days,
        default=365,
        metavar="N",
        help="how long the certificates are valid (default: 365)",
    )
    init_parser.add_argument("--force", action="store_true", help="replace the files that are there")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(0)
    if args.command == "keys":
        # Only errors: the command says itself what it did, or why it could not.
        configure_logging("keys", "ERROR", "text")
        sys.exit(asyncio.run(rotate_keys()))
    if args.command == "users":
        configure_logging("users", "ERROR", "text")
        if args.action == "list":
            sys.exit(asyncio.run(list_users(after=args.after, page_size=args.page_size, as_json=args.json)))
        if args.action == "show":
            sys.exit(asyncio.run(show_user(args.email, as_json=args.json)))
        sys.exit(asyncio.run(grant(args.email, args.role)))
    if args.command == "certs":
        from launcher.certs import run_init  # cryptography, which only this command needs

        sys.exit(run_init(args.directory, args.namespace, args.days, args.force))
    if args.command == "serve":
        if args.listen is not None and args.service == FACADE:
            serve_parser.error(
                "--listen is for a gRPC service; the facade listens on FACADE_HOST and FACADE_PORTS"
            )
        serve(args.service, args.listen)
        return
    if args.command == "migrate":
        unknown = set(args.services) - set(SERVICES)
        if unknown:
            parser.error(f"unknown service {', '.join(sorted(unknown))}; choose from {', '.join(SERVICES)}")
        configure_logging("migrate", "WARNING", "text")
        sys.exit(asyncio.run(migrate(args.services or list(SERVICES))))
    unknown = set(args.services) - set(COMPONENTS)
    if unknown:
        parser.error(f"unknown service {', '.join(sorted(unknown))}; choose from {', '.join(COMPONENTS)}")
    names = args.services or COMPONENTS
    if args.replicas:
        idle = set(args.replicas) - set(names)
        if idle:
            up_parser.error(f"--replicas names {', '.join(sorted(idle))}, which this command does not start")
        settings = settings_or_exit()
        for service, count in args.replicas.items():
            try:
                replica_addresses(settings.address(service), count)
            except ValueError as exc:
                up_parser.error(f"--replicas {service}: {service.upper()}_ADDR {exc}")
    tls_dir = None
    if args.tls == "":
        tls_dir = settings_or_exit().data_dir / "tls"
    elif args.tls is not None:
        tls_dir = Path(args.tls)
        if args.tls in COMPONENTS and not tls_dir.exists():
            up_parser.error(
                f"--tls took {args.tls} for its folder; name the services before --tls, or write --tls=DIR"
            )
    sys.exit(asyncio.run(up(names, args.replicas, tls_dir)))
