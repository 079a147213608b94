"""The systems under test, started, seeded and stopped by the benchmark.

invmesh: `invmesh up` with a throwaway data directory and free ports on the given databases,
seeded through the facade. The peer: a writable copy of ../shared/bench/peer_fastapi with its own
venv (cached in .bench/), seeded by its own seed.py, served by its own run.sh. Both report their
processes' peak memory and how long they took to be ready.
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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx

from bench.harness import command_line, free_port, peak_rss_mib, process_group, process_tree, wait_for

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
    addresses: dict[str, str]  # service -> the address of its first replica, for direct gRPC calls
    token: str  # an access token of a verified admin
    product_ids: list[str]
    ready_after: float  # seconds from starting `invmesh up` to its "all healthy" line
    healthy_after: float  # what `invmesh up` itself reports
    log: Path
    pid: int  # `invmesh up`; the services and the facade are its children
    location_id: str  # a second location besides DEFAULT, for transfers

    def logged(self, since: int = 0) -> list[str]:
        """What the services logged (LOG_LEVEL=WARNING: warnings, errors) from byte `since` of the log on,
        besides `invmesh up`'s own lines."""
        with self.log.open("rb") as file:
            file.seek(since)
            lines = file.read().decode(errors="replace").splitlines()
        return [line for line in lines if line.strip() and not line.startswith("invmesh: ")]

    def memory(self) -> list[tuple[str, float]]:
        """Peak RSS (MiB) of `invmesh up` and of each process it started, named as it names them."""
        return memory(self.pid, invmesh_label)


def tally(lines: list[str]) -> Counter[str]:
    """Log lines counted by what they say: level, service and message, without time or request id."""
    counts: Counter[str] = Counter()
    for line in lines:
        fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line))
        if "msg" in fields:
            message = fields["msg"].strip('"')
            counts[f"{fields.get('level', '?')} {fields.get('service', '?')}: {message}"] += 1
        else:
            counts[line.strip()[:200]] += 1
    return counts


def invmesh_label(pid: int, root: bool) -> str:
    args = command_line(pid)
    return args[args.index("serve") + 1] if "serve" in args[:-1] else ("up" if root else " ".join(args)[:40])


@contextlib.contextmanager
def invmesh(
    workdir: Path, database_env: dict[str, str], *, products: int | list[str], rounds: int,
    replicas: dict[str, int] | None = None, repo: Path = REPO, metrics: bool = True, name: str = "invmesh",
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Invmesh]:  # fmt: skip
    """`invmesh up` on free ports, all healthy, with a verified admin and products in stock: `products`
    new ones, or the ids of those a previous run made in the same databases. `repo` is the checkout
    whose code runs (`python -m launcher` there), for comparing versions; `metrics=False` blanks the
    `*_METRICS_ADDR` settings, so no process counts or serves metrics. It logs to `<name>.log`
    in `workdir`; `extra_env` adds to (or overrides) its environment."""
    data_dir = workdir / "invmesh"
    facade = f"127.0.0.1:{free_port()}"
    addresses = {service: f"127.0.0.1:{free_port()}" for service in ("auth", "products", "inventory")}
    env = {
        **os.environ,
        **{f"{service.upper()}_ADDR": address for service, address in addresses.items()},
        # Metrics on, as deployed, on ports of their own (replica k: + 10*k, as `up` gives them).
        **{
            f"{name}_METRICS_ADDR": f"127.0.0.1:{free_port()}" if metrics else ""
            for name in ("FACADE", "AUTH", "PRODUCTS", "INVENTORY")
        },
        **database_env,  # blank: SQLite files in data_dir, never a configured database
        "DB_AUTO_MIGRATE": "true",
        "INVMESH_DATA_DIR": str(data_dir),
        "FACADE_HOST": "127.0.0.1",
        "FACADE_PORTS": facade.rsplit(":", 1)[1],
        "PUBLIC_URL": f"http://{facade}",
        "ADMIN_EMAILS": USER["email"],  # may create products and record movements
        "BCRYPT_ROUNDS": str(rounds),
        # Logins in flight count as failures until they succeed, and wrk abandons up to 8 at the end of
        # each run that the server still works through: with the default 10 per account, the next run
        # would be refused (429). The peer has no such limit. Counting still happens, at its usual cost.
        "LOGIN_FAILURES_PER_ACCOUNT": "1000000",
        "LOGIN_FAILURES_PER_ADDRESS": "1000000",
        "LOG_LEVEL": "WARNING",
        "SHUTDOWN_GRACE_SECONDS": "2",
        "ACCESS_TOKEN_TTL_SECONDS": "3600",  # outlives the run
        "SMTP_URL": "",  # mail goes to the outbox in data_dir
        **(extra_env or {}),
    }
    up = [sys.executable, "-m", "launcher", "up"]
    log = workdir / f"{name}.log"
    if replicas:
        layout = ",".join(f"{service}={count}" for service, count in replicas.items())
        up, log = [*up, "--replicas", layout], workdir / f"{name}-{layout}.log"
    with process_group(up, env=env, cwd=repo, log=log) as process:
        ready = wait_for(lambda: "all healthy in" in log.read_text(errors="replace"), what="invmesh up",
                         process=process, log=log, poll=0.02)  # fmt: skip
        healthy = re.search(r"all healthy in ([\d.]+)s", log.read_text(errors="replace"))
        url = f"http://{facade}"
        if isinstance(products, int):
            token, ids = seed_invmesh(url, data_dir / "outbox", products)
        else:
            token, ids = log_in(url), products
        location = second_location(url, token)
        yield Invmesh(
            url, addresses, token, ids, ready, float(healthy[1]) if healthy else 0.0, log, process.pid,
            location,
        )  # fmt: skip


def seed_invmesh(url: str, outbox: Path, count: int) -> tuple[str, list[str]]:
    """Register, verify by the mail's link, log in, then create `count` products with stock: all over REST."""
    with httpx.Client(base_url=url, timeout=30) as http:
        _checked(http.post("/users/register", json=USER))
        _checked(http.post("/users/verify", json={"token": _verification_token(outbox)}))
    token = log_in(url)
    return token, asyncio.run(_create_products(url, token, count))


def second_location(url: str, token: str) -> str:
    """The id of the location `BENCH-2`, made if a previous run on the same databases did not."""
    location = {"code": "BENCH-2", "name": "Benchmark, second location"}
    with httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {token}"}) as http:
        made = http.post("/locations", json=location)
        if made.status_code != 409:
            return str(_checked(made)["id"])
        listed = _checked(http.get("/locations", params={"page_size": 100}))["locations"]
        return next(str(found["id"]) for found in listed if found["code"] == location["code"])


def log_in(url: str, attempts: int = 5) -> str:
    """An access token for the benchmark user: the same request on invmesh's facade and on the peer.
    A 429 (invmesh's bcrypt admission, on a busy machine) is tried again after its Retry-After."""
    credentials = {"email": USER["email"], "password": USER["password"]}
    for _ in range(attempts - 1):
        response = httpx.post(f"{url}/users/login", json=credentials, timeout=30)
        if response.status_code != 429:
            break
        time.sleep(float(response.headers.get("retry-after", 1)))
    else:
        response = httpx.post(f"{url}/users/login", json=credentials, timeout=30)
    return str(_checked(response)["access_token"])


def stock_levels(url: str, token: str, page_size: int) -> dict[str, int]:
    """Every product's stock by its id, page by page from GET /inventory (the same API on both sides)."""
    levels: dict[str, int] = {}
    page_token = ""
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30) as http:
        while True:
            page = _checked(http.get("/inventory", params={"page_size": page_size, "page_token": page_token}))
            levels.update((str(item["product_id"]), int(item["quantity"])) for item in page["items"])
            if not (page_token := page.get("next_page_token", "")):
                return levels


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
    return str(created["id"])


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        what = f"{response.request.method} {response.request.url.path}"
        raise RuntimeError(f"{response.request.url.host}:{response.request.url.port}: {what} answered "
                           f"{response.status_code}: {response.text}")  # fmt: skip
    return cast(dict[str, Any], response.json())


def _verification_token(outbox: Path, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while not (mails := sorted(outbox.glob("*.eml"))):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no verification mail in {outbox} after {timeout:g}s")
        time.sleep(0.05)
    with mails[-1].open("rb") as file:
        message = email.message_from_binary_file(file, policy=email.policy.default)
    body = message.get_body(("plain",))
    found = re.search(r"[?&]token=([\w.~-]+)", body.get_content() if body else "")
    if found is None:
        raise RuntimeError(f"no verification link in {mails[-1]}")
    return found[1]


# ---- the FastAPI peer --------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    folder: Path  # holds peer_fastapi/, .venv (a link to the cached venv) and any SQLite file
    database_url: str
    rounds: int  # its user's bcrypt cost
    product_ids: list[str]
    versions: str


@dataclass(frozen=True)
class PeerRunning:
    url: str
    token: str  # the peer's own bearer token for the benchmark user
    ready_after: float  # seconds from starting run.sh to the first answer
    pid: int  # uvicorn; its workers, if more than one, are its children

    def memory(self) -> list[tuple[str, float]]:
        """Peak RSS (MiB) of uvicorn and of each of its processes."""
        return memory(self.pid, _peer_label)


def _peer_label(pid: int, root: bool) -> str:
    if root:
        return "uvicorn"
    return "resource tracker" if "resource_tracker" in " ".join(command_line(pid)) else "worker"


def prepare_peer(source: Path, workdir: Path, database_url: str, products: int, rounds: int) -> Peer:
    """Copies the peer out of the read-only `source`, gives it its venv and seeds `products` products
    (and its user, hashed at cost `rounds`) into `database_url`."""
    if not (source / "peer_fastapi" / "app.py").is_file():
        sys.exit(f"bench: no FastAPI peer in {source} (expected peer_fastapi/app.py); see --peer-dir")
    venv = peer_venv(source / "requirements.txt")
    folder = workdir / "peer"
    _copy_writable(source / "peer_fastapi", folder / "peer_fastapi")
    (folder / ".venv").symlink_to(venv, target_is_directory=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "seed.py", str(products)], cwd=folder / "peer_fastapi",
        env=_peer_env(database_url, rounds), check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return Peer(folder, database_url, rounds, [str(i) for i in range(1, products + 1)], _versions(venv))


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
def peer_running(peer: Peer, workers: int) -> Iterator[PeerRunning]:
    """The peer's own run.sh (uvicorn, uvloop, httptools) with `workers` workers, answering."""
    port = free_port()
    log = peer.folder / f"peer-{workers}w.log"
    command = ["bash", "peer_fastapi/run.sh", str(port), str(workers)]
    with process_group(command, env=_peer_env(peer.database_url, peer.rounds), cwd=peer.folder,
                       log=log) as process:  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        ready = wait_for(lambda: answers(f"{url}/products/{peer.product_ids[0]}"), what="the peer",
                         process=process, log=log, poll=0.02)  # fmt: skip
        yield PeerRunning(url, log_in(url), ready, process.pid)


def _peer_env(database_url: str, rounds: int) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "BCRYPT_ROUNDS": str(rounds)}


def memory(root: int, label: Callable[[int, bool], str]) -> list[tuple[str, float]]:
    """(name, peak RSS in MiB) of `root` and each of its descendants still running."""
    found = [(label(pid, pid == root), peak_rss_mib(pid)) for pid in process_tree(root)]
    return [(name, mib) for name, mib in found if mib is not None]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _copy_writable(source: Path, destination: Path) -> None:
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    for path in [destination, *destination.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _versions(venv: Path) -> str:
    script = (
        "import importlib.metadata as m; "
        "names = ('fastapi', 'uvicorn', 'sqlalchemy', 'aiosqlite', 'asyncpg'); "
        "print(', '.join(f'{p} {m.version(p)}' for p in names))"
    )
    python = str(venv / "bin" / "python")
    return subprocess.run([python, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
