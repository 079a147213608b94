"""The dev overlay wires up: from the rendered Deployments and Job alone, a stand-in kubelet starts
each workload as a local process and the mesh works.

What the cluster would do, done here:
- each pod gets a loopback address of its own (127.X.Y.N), so container ports stay as written;
  Service names (and `0.0.0.0`) in env values and args become those addresses, the database
  Service the machine's PostgreSQL on fresh databases, the mail Service a real SMTP server;
- the env is built as the kubelet builds it: envFrom, then env in order, `$(NAME)` expanded,
  `secretKeyRef`/`configMapKeyRef` read from the rendered Secrets and ConfigMaps (a missing key
  stops the pod, as CreateContainerConfigError would);
- volumes become folders: an emptyDir an empty one, a Secret its keys as files (the TLS Secrets,
  which the dev overlay leaves to the operator or cert-manager, issued from the cert-manager
  component's Certificates, with the pod's address added, since names became addresses);
- the Job runs first and must exit 0; then the Deployments start, and each probe is checked as
  the kubelet checks it (gRPC Health/Check in plaintext on the probe's port with its `service`;
  an httpGet on the facade, certificate not verified); then register → verify (mail) → login →
  product → movement goes through the facade, over HTTPS verified against the CA.

A wrong env name, port, probe or Secret key breaks it: the mutation tests below prove it.
Needs PostgreSQL (the overlay's databases): INVMESH_TEST_DATABASE=postgresql.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import ipaddress
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2
from sqlalchemy.engine import make_url

from mesh.clients import health_stub
from tests import databases
from tests.conftest import SmtpServer, link_token
from tests.k8s import BIN, Obj, Rendered, container, pod_spec, render, render_with_component

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        databases.KIND != "postgresql",
        reason="the dev overlay's databases are PostgreSQL: run with INVMESH_TEST_DATABASE=postgresql",
    ),
]

# Seconds for every pod to become ready (a broken manifest is given less: it never will).
PROBE_DEADLINE = 40.0
BROKEN_DEADLINE = 15.0


class WiringError(AssertionError):
    """The manifests do not wire up; the message says where."""


@dataclass
class Pki:
    """A CA issuing what the cert-manager component's Certificates ask for."""

    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "invmesh test CA")])
        self.cert = (
            self._builder(name, name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def secret(self, certificate: Obj, extra_ip: str) -> dict[str, str]:
        """The Secret cert-manager writes for `certificate`: tls.crt, tls.key, ca.crt."""
        spec = certificate["spec"]
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in spec["dnsNames"]]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in [*spec["ipAddresses"], extra_ip]]
        usages = {
            "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
            "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
        }
        cert = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"])]),
                self.cert.subject,
                key.public_key(),
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([usages[u] for u in spec["usages"] if u in usages]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return {
            "tls.crt": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "tls.key": key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            "ca.crt": self.pem,
        }


@dataclass
class Pod:
    name: str
    ip: str
    argv: list[str]
    env: dict[str, str]
    box: Obj
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def port(self, port: int | str) -> int:
        """A probe's port: a number, or the name of a container port."""
        if isinstance(port, int):
            return port
        for entry in self.box.get("ports", []):
            if entry["name"] == port:
                return int(entry["containerPort"])
        raise WiringError(
            f"{self.name}: the probe names the port {port!r}, which the container does not declare"
        )

    def output(self) -> str:
        return self.log.read_text()[-1500:] if self.log and self.log.exists() else ""


class Cluster:
    """The dev overlay's objects on this machine."""

    def __init__(self, objects: list[Obj], certificates: list[Obj], root: Path) -> None:
        self.rendered = Rendered(objects)
        self.root = root
        self.pki = Pki()
        self.certificates = {c["spec"]["secretName"]: c for c in certificates}
        net = f"127.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
        deployments = list(self.rendered.of_kind("Deployment"))
        self.ips = {d["metadata"]["name"]: f"{net}.{10 + k}" for k, d in enumerate(deployments)}
        self.ips["migrate"] = f"{net}.9"
        self.smtp_ip = f"{net}.50"
        self.hosts: dict[str, str] = {}
        for service in self.rendered.of_kind("Service"):
            chosen = [
                d["metadata"]["name"]
                for d in deployments
                if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            if len(chosen) != 1:
                raise WiringError(f"the Service {service['metadata']['name']} selects {chosen or 'no pod'}")
            self.hosts[service["metadata"]["name"]] = self.ips[chosen[0]]
        self.database_urls: dict[str, str] = {}  # the overlay's URL -> a fresh database's
        self.pods: list[Pod] = []

    def external_services(self) -> tuple[list[str], str, int]:
        """The dev overlay's database URLs, and the mail Service's host and port."""
        urls = [
            v
            for s in self.rendered.of_kind("Secret")
            for v in self.rendered.secret(s["metadata"]["name"]).values()
        ]
        database_urls = [u for u in urls if u.startswith("postgresql")]
        (smtp,) = [u for u in urls if u.startswith("smtp")]
        mail = make_url(smtp.replace("smtp://", "smtp+x://", 1))
        assert mail.host and mail.port
        self.hosts[mail.host] = self.smtp_ip
        return database_urls, mail.host, mail.port

    def rewrite(self, value: str, own_ip: str, mounts: dict[str, Path]) -> str:
        if value in self.database_urls:
            return self.database_urls[value]
        value = value.replace("0.0.0.0", own_ip)
        for host in sorted(self.hosts, key=len, reverse=True):
            value = re.sub(rf"(?<![\w.-]){re.escape(host)}(?=:\d)", self.hosts[host], value)
        for path in sorted(mounts, key=len, reverse=True):
            if value == path or value.startswith(path.rstrip("/") + "/"):
                return str(mounts[path]) + value[len(path.rstrip("/")) :]
        return value

    def secret_values(self, name: str, pod_ip: str) -> dict[str, str] | None:
        try:
            return self.rendered.secret(name)
        except KeyError:
            if name in self.certificates:  # cert-manager's, in a cluster
                return self.pki.secret(self.certificates[name], pod_ip)
            return None

    def pod(self, workload: Obj) -> Pod:
        name = workload["metadata"]["labels"]["app.kubernetes.io/name"]
        ip = self.ips[name]
        box = container(workload)
        folder = self.root / name
        mounts: dict[str, Path] = {}
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        for mount in box.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None:
                raise WiringError(f"{name}: the mount {mount['mountPath']} names no volume {mount['name']!r}")
            where = folder / "volumes" / mount["name"]
            where.mkdir(parents=True)
            if "secret" in volume:
                values = self.secret_values(volume["secret"]["secretName"], ip)
                if values is None:
                    raise WiringError(f"{name}: no Secret {volume['secret']['secretName']} to mount")
                for key, text in values.items():
                    (where / key).write_text(text)
                    (where / key).chmod(0o440)
            elif "emptyDir" not in volume:
                raise WiringError(f"{name}: volume {mount['name']} is neither an emptyDir nor a Secret")
            mounts[mount["mountPath"]] = where
        env: dict[str, str] = {}
        for source in box.get("envFrom", []):
            env.update(self.rendered.config_map(source["configMapRef"]["name"]))
        for variable in box.get("env", []):
            if "value" in variable:
                env[variable["name"]] = re.sub(
                    r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), variable["value"]
                )
                continue
            reference = variable["valueFrom"].get("secretKeyRef") or variable["valueFrom"]["configMapKeyRef"]
            kind = "Secret" if "secretKeyRef" in variable["valueFrom"] else "ConfigMap"
            try:
                values = (
                    self.rendered.secret(reference["name"])
                    if kind == "Secret"
                    else self.rendered.config_map(reference["name"])
                )
            except KeyError:
                values = None
            if values is None or reference["key"] not in values:
                if reference.get("optional"):
                    continue
                raise WiringError(
                    f"{name}: CreateContainerConfigError: {variable['name']} needs the key "
                    f"{reference['key']!r} of the {kind} {reference['name']}, which has none"
                )
            env[variable["name"]] = values[reference["key"]]
        env = {key: self.rewrite(value, ip, mounts) for key, value in env.items()}
        home = folder / "home"
        home.mkdir(parents=True)
        process_env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONUNBUFFERED": "1", **env}
        argv = [self.rewrite(arg, ip, mounts) for arg in [*box.get("command", []), *box.get("args", [])]]
        # The image's entrypoint is `invmesh`, here the venv's (a path of this machine, not the
        # pod's, so never rewritten); a `command` would replace it.
        if "command" not in box:
            argv = [str(BIN / "invmesh"), *argv]
        return Pod(name, ip, argv, process_env, box)

    def start(self, pod: Pod) -> None:
        pod.log = self.root / f"{pod.name}.log"
        with pod.log.open("wb") as log:
            pod.process = subprocess.Popen(
                pod.argv, env=pod.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT
            )
        self.pods.append(pod)

    def stop_all(self, graceful: bool) -> dict[str, int | None]:
        """SIGTERM (graceful) or SIGKILL to every pod; their exit statuses."""
        for pod in self.pods:
            assert pod.process is not None
            if pod.process.poll() is None:
                pod.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        statuses: dict[str, int | None] = {}
        for pod in self.pods:
            assert pod.process is not None
            grace = pod_spec(self.rendered.get("Deployment", pod.name))["terminationGracePeriodSeconds"]
            try:
                statuses[pod.name] = pod.process.wait(timeout=grace if graceful else 10)
            except subprocess.TimeoutExpired:
                pod.process.kill()
                pod.process.wait()
                statuses[pod.name] = None
        return statuses


async def grpc_probe(pod: Pod, probe: Obj) -> str:
    """The kubelet's gRPC probe: Health/Check in plaintext, with the probe's service name."""
    target = f"{pod.ip}:{pod.port(probe['grpc']['port'])}"
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await health_stub(channel).Check(
                health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=1
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def http_probe(pod: Pod, probe: Obj) -> str:
    """The kubelet's httpGet: any status from 200 to 399 passes; it does not verify certificates."""
    get = probe["httpGet"]
    url = f"{get.get('scheme', 'HTTP').lower()}://{pod.ip}:{pod.port(get['port'])}{get['path']}"
    try:
        async with httpx.AsyncClient(verify=False, timeout=1) as client:
            reply = await client.get(url)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "SERVING" if 200 <= reply.status_code < 400 else f"HTTP {reply.status_code}"


async def probe_once(pod: Pod, kind: str) -> str:
    probe = pod.box.get(kind)
    if probe is None:
        raise WiringError(f"{pod.name} has no {kind}")
    if "grpc" in probe:
        return await grpc_probe(pod, probe)
    if "httpGet" in probe:
        return await http_probe(pod, probe)
    raise WiringError(f"{pod.name}: {kind} is neither grpc nor httpGet")


async def wait_ready(pods: list[Pod], deadline: float) -> None:
    """Every pod's readiness probe passes, then its liveness probe does; a pod whose process
    exits, or that is not ready by the deadline, fails the wiring."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    waiting = list(pods)
    last: dict[str, str] = {}
    while waiting:
        for pod in list(waiting):
            assert pod.process is not None
            if (status := pod.process.poll()) is not None:
                raise WiringError(f"{pod.name} exited with status {status}:\n{pod.output()}")
            last[pod.name] = await probe_once(pod, "readinessProbe")
            if last[pod.name] == "SERVING":
                waiting.remove(pod)
        if waiting and loop.time() > until:
            raise WiringError(
                "not ready: " + "; ".join(f"{p.name} ({last[p.name]})\n{p.output()}" for p in waiting)
            )
        await asyncio.sleep(0.2)
    for pod in pods:
        if (alive := await probe_once(pod, "livenessProbe")) != "SERVING":
            raise WiringError(f"{pod.name}'s liveness probe fails: {alive}")


async def refused_before_the_job(cluster: Cluster) -> None:
    """kubectl apply starts everything at once: a service that finds the schema older than its
    code (here: none) must exit, not migrate, so the kubelet restarts it until the Job is done."""
    for deployment in cluster.rendered.of_kind("Deployment"):
        if deployment["metadata"]["name"] == "facade":
            continue  # it has no database
        early = cluster.pod(deployment)
        done = await asyncio.to_thread(
            subprocess.run,
            early.argv,
            env=early.env,
            cwd=cluster.root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode == 0 or f"invmesh migrate {early.name}" not in done.stderr:
            raise WiringError(f"{early.name} did not refuse an unmigrated database:\n{done.stderr[-1500:]}")
        shutil.rmtree(cluster.root / early.name)  # the volumes of a pod that is gone


@asynccontextmanager
async def running(
    objects: list[Obj],
    certificates: list[Obj],
    root: Path,
    smtp_servers: list[SmtpServer],
    deadline: float = PROBE_DEADLINE,
    before_the_job: bool = False,
) -> AsyncIterator[Cluster]:
    """The overlay's workloads as processes: the Job to the end, then the Deployments, ready."""
    cluster = Cluster(objects, certificates, root)
    async with AsyncExitStack() as stack:
        database_urls, _, smtp_port = cluster.external_services()
        for url in database_urls:
            parsed = make_url(url)
            assert parsed.host == "postgres", f"the dev overlay names the database Service postgres: {url}"
            label = (parsed.database or "db").removeprefix("invmesh_")
            fresh = await stack.enter_async_context(databases.fresh_database(root, label))
            cluster.database_urls[url] = fresh
        smtp = SmtpServer(smtp_port, host=cluster.smtp_ip)
        await smtp.start()
        stack.push_async_callback(smtp.stop)
        smtp_servers.append(smtp)

        (job,) = cluster.rendered.of_kind("Job")
        if before_the_job:
            await refused_before_the_job(cluster)
        migrate = cluster.pod(job)
        done = await asyncio.to_thread(
            subprocess.run,
            migrate.argv,
            env=migrate.env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise WiringError(f"the Job {job['metadata']['name']} failed ({done.returncode}):\n{done.stderr}")

        pods = [cluster.pod(d) for d in cluster.rendered.of_kind("Deployment")]
        try:
            for pod in pods:
                cluster.start(pod)
            await wait_ready(pods, deadline)
            yield cluster
        finally:
            cluster.stop_all(graceful=False)


async def journey(cluster: Cluster, smtp: SmtpServer) -> None:
    """register → verify (the mail's link) → made staff (`kubectl exec deploy/auth -- invmesh
    users grant`) → login → product → movement, through the facade over verified HTTPS."""
    facade = next(p for p in cluster.pods if p.name == "facade")
    settings = cluster.rendered.config_map("invmesh-settings")
    port = int(settings["FACADE_PORTS"].split(",")[0])
    tls = ssl.create_default_context(cadata=cluster.pki.pem)
    async with httpx.AsyncClient(base_url=f"https://{facade.ip}:{port}", verify=tls, timeout=20) as http:
        email = "k8s-journey@example.com"
        registered = await http.post(
            "/users/register", json={"email": email, "password": "a long password", "name": "Kube"}
        )
        assert registered.status_code == 202, registered.text
        (mail,) = await smtp.inbox.mail_to(email, timeout=20)
        public_url = next(p for p in cluster.pods if p.name == "auth").env["PUBLIC_URL"]
        token = link_token(mail, public_url)
        verified = await http.post("/users/verify", json={"token": token})
        assert verified.status_code == 200, verified.text

        auth = next(p for p in cluster.pods if p.name == "auth")
        granted = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "invmesh"), "users", "grant", email, "staff"],
            env=auth.env,
            cwd=cluster.root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert granted.returncode == 0, granted.stderr

        login = await http.post("/users/login", json={"email": email, "password": "a long password"})
        assert login.status_code == 200, login.text
        me = {"authorization": f"Bearer {login.json()['access_token']}"}
        lamp = {"sku": "K8S-1", "name": "Cluster lamp", "price": "12.50", "currency": "EUR"}
        created = await http.post("/products", headers=me, json=lamp)
        assert created.status_code == 201, created.text
        product = created.json()
        moved = await http.post(
            "/inventory", headers=me, json={"product_id": product["id"], "type": "IN", "quantity": 5}
        )
        assert moved.status_code == 201, moved.text
        assert moved.json()["item"]["quantity"] == 5
        # products reads the stock inventory keeps: the products <-> inventory wiring.
        async with asyncio.timeout(10):
            while (await http.get(f"/products/{product['id']}", headers=me)).json()["stock"] != 5:
                await asyncio.sleep(0.1)


async def scraped(cluster: Cluster) -> None:
    """Prometheus finds each pod's metrics where the pod declares them: its `metrics` port and
    its prometheus.io annotations, after the journey's traffic."""
    expected = {"facade": 'http_requests_total{handler="/products",method="POST",status="201"}'}
    async with httpx.AsyncClient(timeout=5) as http:
        for deployment in cluster.rendered.of_kind("Deployment"):
            name = deployment["metadata"]["name"]
            pod = next(p for p in cluster.pods if p.name == name)
            annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/scrape") != "true":
                raise WiringError(f"{name}: no prometheus.io/scrape annotation")
            port = pod.port(int(annotations["prometheus.io/port"]))
            if port != pod.port("metrics"):
                raise WiringError(f"{name}: prometheus.io/port {port} is not its metrics port")
            reply = await http.get(f"http://{pod.ip}:{port}{annotations['prometheus.io/path']}")
            assert reply.status_code == 200, (name, reply.text)
            assert expected.get(name, 'grpc_server_handled_total{grpc_code="OK"') in reply.text, name


@pytest.fixture(scope="module")
def dev() -> list[Obj]:
    return render("dev")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    objects = render_with_component("cert-manager", tmp_path_factory.mktemp("cert-manager"))
    return [o for o in objects if o["kind"] == "Certificate"]


async def test_the_dev_overlay_wires_up(dev: list[Obj], certificates: list[Obj], tmp_path: Path) -> None:
    smtp: list[SmtpServer] = []
    async with running(dev, certificates, tmp_path, smtp, before_the_job=True) as cluster:
        await journey(cluster, smtp[0])
        await scraped(cluster)
        # Pods stop within their terminationGracePeriodSeconds when the kubelet says so: the
        # services with status 0, the facade as uvicorn does, by the SIGTERM it re-raises (143).
        statuses = await asyncio.to_thread(cluster.stop_all, True)
        assert {name: status in (0, -signal.SIGTERM) for name, status in statuses.items()} == dict.fromkeys(
            statuses, True
        ), statuses


def mutated(objects: list[Obj], kind: str, name: str, change: Callable[[Obj], None]) -> list[Obj]:
    changed = copy.deepcopy(objects)
    for obj in changed:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            change(obj)
            return changed
    raise KeyError(f"no {kind} {name}")


def wrong_probe_port(deployment: Obj) -> None:
    container(deployment)["readinessProbe"]["grpc"]["port"] += 1


def misspelt_env_name(deployment: Obj) -> None:
    for variable in container(deployment)["env"]:
        if variable["name"] == "PRODUCTS_DATABASE_URL":
            variable["name"] = "PRODUCT_DATABASE_URL"


def wrong_secret_key(deployment: Obj) -> None:
    for variable in container(deployment)["env"]:
        if variable["name"] == "SERVICE_SECRET":
            variable["valueFrom"]["secretKeyRef"]["key"] = "inventory-secret"


def wrong_listen_port(deployment: Obj) -> None:
    box = container(deployment)
    box["args"] = [arg.replace(":50053", ":50063") for arg in box["args"]]


def wrong_caller_target(config_map: Obj) -> None:
    config_map["data"]["PRODUCTS_ADDR"] = "dns:///product-headless:50052"


@pytest.mark.parametrize(
    ("kind", "name", "change", "symptom"),
    [
        ("Deployment", "products", wrong_probe_port, r"not ready: .*products \(UNAVAILABLE"),
        ("Deployment", "products", misspelt_env_name, r"products exited with status 1"),
        ("Deployment", "inventory", wrong_secret_key, r"CreateContainerConfigError.*inventory-secret"),
        ("Deployment", "inventory", wrong_listen_port, r"not ready: facade \(HTTP 503"),
        ("ConfigMap", "invmesh-settings", wrong_caller_target, r"not ready: .*facade \(HTTP 503"),
    ],
    ids=["probe-port", "env-name", "secret-key", "listen-port", "caller-target"],
)
async def test_a_broken_manifest_fails_the_wiring(
    dev: list[Obj],
    certificates: list[Obj],
    tmp_path: Path,
    kind: str,
    name: str,
    change: Callable[[Obj], None],
    symptom: str,
) -> None:
    objects = mutated(dev, kind, name, change)
    smtp: list[SmtpServer] = []
    with pytest.raises(AssertionError) as failed:
        async with running(objects, certificates, tmp_path, smtp, BROKEN_DEADLINE) as cluster:
            await journey(cluster, smtp[0])
    assert re.search(symptom, str(failed.value), re.DOTALL), str(failed.value)[:2000]
