"""The systems under test, started, seeded and stopped by the benchmark.

invmesh: `invmesh up` with a throwaway data directory and free ports, seeded through the facade.
The peer: a writable copy of ../shared/bench/peer_fastapi with its own venv (cached in .bench/),
seeded by its own seed.py, served by its own run.sh.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness import free_port, process_group, wait_for

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".bench"
USER = {"email": "bench@example.com", "password": "bench-password", "name": "Bench"}
STOCK = 1_000_000  # as the peer's seed.py
SEED_CONCURRENCY = 16


def product(i: int) -> dict[str, str]:
    """Product `i` as the peer's seed.py makes it (the peer's `category` has no invmesh field)."""
    return {
        "sku": f"SKU-{i:05d}",
        "name": f"Product {i}",
        "description": f"Description of product {i}",
        "price": f"{i % 1000}.99",
    }


# ---- invmesh -----------------------------------------------------------------


@dataclass(frozen=True)
class Invmesh:
    url: str  # the facade
    products_addr: str  # the products service, for direct gRPC calls
    token: str  # an access token of a verified user
    product_ids: list[str]
    healthy_after: float  # seconds from `invmesh up` to all healthy, as it reports
    log: Path

    def problems(self) -> list[str]:
        """What the services logged besides `invmesh up`'s own lines (LOG_LEVEL=WARNING: warnings, errors)."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if line.strip() and not line.startswith("invmesh: ")]


@contextlib.contextmanager
def invmesh(workdir: Path, products: int) -> Iterator[Invmesh]:
    """`invmesh up` on free ports, all healthy, with a verified user and `products` products in stock."""
    data_dir = workdir / "invmesh"
    facade = f"127.0.0.1:{free_port()}"
    services = ("AUTH_ADDR", "PRODUCTS_ADDR", "INVENTORY_ADDR")
    addresses = {name: f"127.0.0.1:{free_port()}" for name in services}
    env = {
        **os.environ,
        **addresses,
        "INVMESH_DATA_DIR": str(data_dir),
        "FACADE_HOST": "127.0.0.1",
        "FACADE_PORTS": facade.rsplit(":", 1)[1],
        "PUBLIC_URL": f"http://{facade}",
        "BCRYPT_ROUNDS": "4",  # setup speed; no login is measured here
        "LOG_LEVEL": "WARNING",
        "SHUTDOWN_GRACE_SECONDS": "2",
        "ACCESS_TOKEN_TTL_SECONDS": "3600",  # outlives the run
        # SQLite files and the outbox in data_dir: never a configured database or mail server.
        "AUTH_DATABASE_URL": "",
        "PRODUCTS_DATABASE_URL": "",
        "INVENTORY_DATABASE_URL": "",
        "SMTP_URL": "",
    }
    log = workdir / "invmesh.log"
    with process_group([sys.executable, "-m", "mesh", "up"], env=env, cwd=REPO, log=log) as process:
        wait_for(lambda: "all healthy in" in log.read_text(errors="replace"), what="invmesh up",
                 process=process, log=log)  # fmt: skip
        healthy = re.search(r"all healthy in ([\d.]+)s", log.read_text(errors="replace"))
        url = f"http://{facade}"
        token, ids = seed_invmesh(url, data_dir / "outbox", products)
        yield Invmesh(url, addresses["PRODUCTS_ADDR"], token, ids, float(healthy[1]) if healthy else 0.0, log)


def seed_invmesh(url: str, outbox: Path, count: int) -> tuple[str, list[str]]:
    """Register, verify by the mail's link, log in, then create `count` products with stock: all over REST."""
    with httpx.Client(base_url=url, timeout=30) as http:
        _checked(http.post("/users/register", json=USER))
        _checked(http.post("/users/verify", json={"token": _verification_token(outbox)}))
        login = http.post("/users/login", json={"email": USER["email"], "password": USER["password"]})
        token: str = _checked(login)["access_token"]
    return token, asyncio.run(_create_products(url, token, count))


async def _create_products(url: str, token: str, count: int) -> list[str]:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
        gate = asyncio.Semaphore(SEED_CONCURRENCY)
        return list(await asyncio.gather(*(_create_product(http, gate, i) for i in range(1, count + 1))))


async def _create_product(http: httpx.AsyncClient, gate: asyncio.Semaphore, i: int) -> str:
    async with gate:
        created = _checked(await http.post("/products", json=product(i)))
        movement = {"product_id": created["id"], "type": "IN", "quantity": STOCK, "reason": "bench seed"}
        _checked(await http.post("/inventory", json=movement))
    return created["id"]


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        what = f"{response.request.method} {response.request.url.path}"
        raise RuntimeError(f"seeding invmesh: {what} answered {response.status_code}: {response.text}")
    return response.json()


def _verification_token(outbox: Path, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while not (mails := sorted(outbox.glob("*.eml"))):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no verification mail in {outbox} after {timeout:g}s")
        time.sleep(0.05)
    with mails[-1].open("rb") as file:
        message = email.message_from_binary_file(file, policy=email.policy.default)
    body = message.get_body(("plain",))  # type: ignore[attr-defined]
    found = re.search(r"[?&]token=([\w.~-]+)", body.get_content() if body else "")
    if found is None:
        raise RuntimeError(f"no verification link in {mails[-1]}")
    return found[1]


# ---- the FastAPI peer --------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    folder: Path  # holds peer_fastapi/, .venv (a link to the cached venv) and the database
    database_url: str
    product_ids: list[str]
    versions: str


def prepare_peer(source: Path, workdir: Path, products: int) -> Peer:
    """Copies the peer out of the read-only `source`, gives it its venv and seeds `products` products."""
    if not (source / "peer_fastapi" / "app.py").is_file():
        sys.exit(f"bench: no FastAPI peer in {source} (expected peer_fastapi/app.py); see --peer-dir")
    venv = peer_venv(source / "requirements.txt")
    folder = workdir / "peer"
    _copy_writable(source / "peer_fastapi", folder / "peer_fastapi")
    (folder / ".venv").symlink_to(venv, target_is_directory=True)
    database_url = f"sqlite+aiosqlite:///{folder / 'peer.db'}"
    subprocess.run(
        [str(venv / "bin" / "python"), "seed.py", str(products)],
        cwd=folder / "peer_fastapi", env=_peer_env(database_url), check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return Peer(folder, database_url, [str(i) for i in range(1, products + 1)], _versions(venv))


def peer_venv(requirements: Path) -> Path:
    """A venv with the peer's requirements in .bench/peer-venv, reused while they and Python are unchanged."""
    venv = CACHE / "peer-venv"
    key = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()
    stamp = venv / ".requirements-sha256"
    if stamp.is_file() and stamp.read_text() == key:
        return venv
    print(f"bench: installing the peer's requirements into {venv} (later runs reuse it)", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    stamp.write_text(key)
    return venv


@contextlib.contextmanager
def peer_running(peer: Peer, workers: int) -> Iterator[str]:
    """The peer's own run.sh (uvicorn, uvloop, httptools) with `workers` workers; yields its base URL."""
    port = free_port()
    log = peer.folder / f"peer-{workers}w.log"
    command = ["bash", "peer_fastapi/run.sh", str(port), str(workers)]
    with process_group(command, env=_peer_env(peer.database_url), cwd=peer.folder, log=log) as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/products/{peer.product_ids[0]}"), what="the peer",
                 process=process, log=log)  # fmt: skip
        yield url


def _peer_env(database_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "BCRYPT_ROUNDS": "4"}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _copy_writable(source: Path, destination: Path) -> None:
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    for path in [destination, *destination.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _versions(venv: Path) -> str:
    script = (
        "import importlib.metadata as m; "
        "print(', '.join(f'{p} {m.version(p)}' for p in ('fastapi', 'uvicorn', 'sqlalchemy', 'aiosqlite')))"
    )
    python = str(venv / "bin" / "python")
    return subprocess.run([python, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
