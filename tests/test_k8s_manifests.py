"""deploy/k8s checked offline: every overlay (and the base with each component) renders with
kubectl's kustomize, validates strictly against the Kubernetes schemas of the oldest version the
manifests support (1.29) and of the newest one bundled, passes yamllint, and keeps the policies a
schema cannot see: probes, hardened pods, Secrets out of ConfigMaps, references that resolve,
replica counts, and NetworkPolicies that allow exactly the calls the mesh makes.

That the manifests wire up (the right env names, ports and Secret keys) is tests/test_k8s_wiring.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.config import parse_host_port
from tests.k8s import (
    BIN,
    COMPONENTS,
    K8S,
    OVERLAYS,
    ROOT,
    WORKLOADS,
    Obj,
    Rendered,
    container,
    kustomize,
    pod_spec,
    render,
    render_with_component,
)

SERVICE_PORTS = {"auth": 50051, "products": 50052, "inventory": 50053}
OLDEST = "1.29.0"
# The calls the mesh makes (mesh/services.py; products/service.py and inventory/service.py open
# channels to auth and to each other; the facade calls every service). Nothing else.
CALLS = {
    ("facade", "auth"),
    ("facade", "products"),
    ("facade", "inventory"),
    ("products", "auth"),
    ("products", "inventory"),
    ("inventory", "auth"),
    ("inventory", "products"),
}


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    found = {overlay: Rendered(render(overlay)) for overlay in OVERLAYS}
    for component in COMPONENTS:
        found[component] = Rendered(render_with_component(component, tmp_path_factory.mktemp(component)))
    return found


def newest_bundled() -> str:
    import kubernetes_validate  # type: ignore[import-untyped]

    version: str = kubernetes_validate.latest_version()
    return version


@pytest.mark.parametrize("version", [OLDEST, "newest"])
def test_every_object_validates_strictly(renders: dict[str, Rendered], tmp_path: Path, version: str) -> None:
    files = []
    for name, rendered in renders.items():
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump_all(rendered.objects))
    kubernetes_version = OLDEST if version == OLDEST else newest_bundled()
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", kubernetes_version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Only cert-manager's kinds have no schema here; the component's test checks their fields.
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+) with api version (\S+)", done.stdout))
    assert unknown <= {("Certificate", "cert-manager.io/v1"), ("Issuer", "cert-manager.io/v1")}


def test_strict_validation_fails_on_a_misspelt_field(tmp_path: Path, renders: dict[str, Rendered]) -> None:
    deployment = renders["dev"].get("Deployment", "auth")
    text = yaml.safe_dump(deployment).replace("readinessProbe", "readinesProbe")
    (tmp_path / "bad.yaml").write_text(text)
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", OLDEST, str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "readinesProbe" in done.stdout


def test_yamllint() -> None:
    done = subprocess.run(
        [str(BIN / "yamllint"), "--strict", "-c", str(ROOT / ".yamllint.yaml"), "deploy", ".yamllint.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def deployments(rendered: Rendered) -> dict[str, Obj]:
    return {obj["metadata"]["name"]: obj for obj in rendered.of_kind("Deployment")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_workload_is_probed_hardened_and_sized(renders: dict[str, Rendered], overlay: str) -> None:
    rendered = renders[overlay]
    settings = rendered.config_map("invmesh-settings")
    assert sorted(deployments(rendered)) == sorted(WORKLOADS)
    (_, probe_port) = parse_host_port(settings["GRPC_PROBE_ADDR"])
    for name, deployment in deployments(rendered).items():
        box = container(deployment)
        ports = {port["name"]: port["containerPort"] for port in box["ports"]}
        # Each process serves /metrics where its <NAME>_METRICS_ADDR says, and the pod says so.
        (_, metrics_port) = parse_host_port(settings[f"{name.upper()}_METRICS_ADDR"])
        assert ports.pop("metrics") == metrics_port
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port)
        if name == "facade":
            assert box["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert box["readinessProbe"]["httpGet"]["path"] == "/readyz"
            for probe in (box["livenessProbe"], box["readinessProbe"]):
                assert probe["httpGet"]["port"] in ports
                assert ports[probe["httpGet"]["port"]] == int(settings["FACADE_PORTS"])
        else:
            assert box["args"] == ["serve", name, "--listen", f"0.0.0.0:{SERVICE_PORTS[name]}"]
            assert ports == {"grpc": SERVICE_PORTS[name], "probe": probe_port}
            assert box["livenessProbe"]["grpc"] == {"port": probe_port}
            assert box["readinessProbe"]["grpc"]["port"] == probe_port
            assert box["readinessProbe"]["grpc"]["service"] == f"invmesh.{name}.v1.{name.title()}Service"
        lame_duck = float(settings["SHUTDOWN_LAME_DUCK_SECONDS"])
        grace = float(settings["SHUTDOWN_GRACE_SECONDS"])
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= lame_duck + grace + 5
        assert pod_spec(deployment)["topologySpreadConstraints"]
    for workload in rendered.workloads():
        check_hardened(rendered, workload, settings)


def check_hardened(rendered: Rendered, workload: Obj, settings: dict[str, str]) -> None:
    name = workload["metadata"]["name"]
    spec = pod_spec(workload)
    box = container(workload)
    assert spec["securityContext"]["runAsNonRoot"] is True, name
    assert spec["securityContext"]["runAsUser"] == 10001, name
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    assert spec["automountServiceAccountToken"] is False, name
    assert spec["enableServiceLinks"] is False, name  # no AUTH_PORT=tcp://… beside the settings
    account = rendered.get("ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    context = box["securityContext"]
    assert context["allowPrivilegeEscalation"] is False, name
    assert context["readOnlyRootFilesystem"] is True, name
    assert context["capabilities"] == {"drop": ["ALL"]}, name
    assert {"cpu", "memory"} <= set(box["resources"]["requests"]), name
    assert "memory" in box["resources"]["limits"], name
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in box["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"], name
    for variable in box.get("env", []):
        if variable["name"].endswith("_FILE"):  # a file of a mounted volume
            assert any(variable["value"].startswith(path + "/") for path in mounts), variable
    for key in settings:
        assert not key.endswith("_FILE"), f"{key}: a file exists where its volume is mounted, not everywhere"
    if workload["kind"] == "Deployment":
        assert "emptyDir" in mounts[settings["INVMESH_DATA_DIR"]], name
        tls = mounts["/etc/invmesh/tls"]["secret"]
        assert tls["secretName"] == f"invmesh-{workload['metadata']['labels']['app.kubernetes.io/name']}-tls"


SECRET_NAME = re.compile(r"SECRET|KEY|PASSWORD|TOKEN", re.IGNORECASE)
SECRET_VALUE = re.compile(r"://[^/@\s]*:[^/@\s]+@|PRIVATE KEY")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_config_map_holds_a_secret(renders: dict[str, Rendered], overlay: str) -> None:
    for config_map in renders[overlay].of_kind("ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            # A *_FILE setting names a file of a mounted Secret, not the secret itself.
            if key.endswith("_FILE"):
                assert value.startswith("/etc/invmesh/tls/"), key
                continue
            assert not SECRET_NAME.search(key), f"{key} belongs in a Secret"
            assert not SECRET_VALUE.search(value), f"{key}'s value looks secret"
    for workload in renders[overlay].workloads():
        for variable in container(workload).get("env", []):
            if "value" in variable:
                plain = re.sub(r"\$\(\w+\)", "", variable["value"])  # $(X) takes a Secret's value
                assert not SECRET_VALUE.search(plain), variable["name"]
                if SECRET_NAME.search(variable["name"]):
                    assert plain != variable["value"] or variable["name"].endswith("_FILE"), variable


def env_references(workload: Obj) -> Iterator[tuple[str, dict[str, Any]]]:
    for variable in container(workload).get("env", []):
        for kind in ("secretKeyRef", "configMapKeyRef"):
            if reference := variable.get("valueFrom", {}).get(kind):
                yield kind, reference


def test_every_reference_resolves_in_dev(renders: dict[str, Rendered]) -> None:
    rendered = renders["dev"]
    for workload in rendered.workloads():
        for kind, reference in env_references(workload):
            if reference.get("optional"):
                assert kind == "secretKeyRef"  # an optional secret: the signing key
                continue
            values = (
                rendered.secret(reference["name"])
                if kind == "secretKeyRef"
                else rendered.config_map(reference["name"])
            )
            assert reference["key"] in values, f"{workload['metadata']['name']}: {reference}"
        for source in container(workload).get("envFrom", []):
            rendered.config_map(source["configMapRef"]["name"])
        # $(NAME) in a value names a variable defined above it, as the kubelet requires.
        defined: set[str] = set()
        for variable in container(workload).get("env", []):
            for used in re.findall(r"\$\((\w+)\)", variable.get("value", "")):
                assert used in defined, f"{variable['name']} uses $({used}) before it is defined"
            defined.add(variable["name"])


def test_replica_counts(renders: dict[str, Rendered]) -> None:
    assert {name: d["spec"]["replicas"] for name, d in deployments(renders["dev"]).items()} == dict.fromkeys(
        WORKLOADS, 1
    )
    assert not list(renders["dev"].of_kind("HorizontalPodAutoscaler"))
    ha = renders["ha"]
    for name, deployment in deployments(ha).items():
        assert deployment["spec"]["replicas"] >= 2, name
        hpa = ha.get("HorizontalPodAutoscaler", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] >= 2
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
        pdb = ha.get("PodDisruptionBudget", name)
        assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_targets(renders: dict[str, Rendered], overlay: str) -> None:
    rendered = renders[overlay]
    settings = rendered.config_map("invmesh-settings")
    for name, port in SERVICE_PORTS.items():
        selector = rendered.get("Deployment", name)["spec"]["selector"]["matchLabels"]
        headless = rendered.get("Service", f"{name}-headless")["spec"]
        assert headless["clusterIP"] == "None" and headless["selector"] == selector
        assert [p["port"] for p in headless["ports"]] == [port]
        assert rendered.get("Service", name)["spec"]["type"] == "ClusterIP"
        assert settings[f"{name.upper()}_ADDR"] == f"dns:///{name}-headless:{port}"
    facade = rendered.get("Service", "facade")["spec"]
    assert facade["type"] == "ClusterIP" and facade["ports"][0]["targetPort"] == "http"
    for obj in rendered.objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "invmesh", obj["metadata"]["name"]


def test_the_migration_job_is_named_after_the_release(renders: dict[str, Rendered]) -> None:
    for overlay in OVERLAYS:
        (job,) = renders[overlay].of_kind("Job")
        image = container(job)["image"]
        assert job["metadata"]["name"] == f"invmesh-migrate-{image.rpartition(':')[2]}"
        assert container(job)["args"] == ["migrate"]
        for deployment in renders[overlay].of_kind("Deployment"):
            assert container(deployment)["image"] == image


def test_a_new_release_gets_a_new_migration_job(tmp_path: Path) -> None:
    """The tag an overlay sets (`kustomize edit set image`) names the Job, and the base's tag is
    the project's version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert base["images"] == [{"name": "invmesh", "newTag": project}]
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    for overlay in OVERLAYS:
        kustomization = copy / "overlays" / overlay / "kustomization.yaml"
        image = "  - name: invmesh\n"
        kustomization.write_text(kustomization.read_text().replace(image, f"{image}    newTag: 9.8.7\n"))
        (job,) = (obj for obj in kustomize(copy / "overlays" / overlay) if obj["kind"] == "Job")
        assert job["metadata"]["name"] == "invmesh-migrate-9.8.7"
        assert container(job)["image"].endswith("/invmesh:9.8.7")


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def allowed(
    policies: list[Obj], direction: str, pod: dict[str, str], peer: dict[str, str], port: int
) -> bool:
    """Whether NetworkPolicy semantics let `pod` receive from (ingress) or send to (egress) `peer`
    on `port`: some policy selecting `pod` for that direction has a rule naming both, or no policy
    selects it at all."""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies if selects(p["spec"]["podSelector"], pod)]
    selecting = [p for p in selecting if direction in p["spec"]["policyTypes"]]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(rules_key, []):
            peers = rule.get(peers_key)
            peer_ok = peers is None or any(
                "podSelector" in entry
                and "namespaceSelector" not in entry
                and selects(entry["podSelector"], peer)
                for entry in peers
            )
            ports = rule.get("ports")
            if peer_ok and (ports is None or any(entry["port"] == port for entry in ports)):
                return True
    return False


def test_network_policies_allow_the_mesh_calls_alone(renders: dict[str, Rendered]) -> None:
    rendered = renders["network-policies"]
    policies = list(rendered.of_kind("NetworkPolicy"))
    labels = {
        name: rendered.get("Deployment", name)["spec"]["template"]["metadata"]["labels"] for name in WORKLOADS
    }
    labels["migrate"] = next(rendered.of_kind("Job"))["spec"]["template"]["metadata"]["labels"]
    ports = {**SERVICE_PORTS, "facade": 8000}
    for caller in labels:
        for callee in WORKLOADS:
            if caller == callee:
                continue
            port = ports[callee]
            through = allowed(policies, "Egress", labels[caller], labels[callee], port) and allowed(
                policies, "Ingress", labels[callee], labels[caller], port
            )
            assert through == ((caller, callee) in CALLS), f"{caller} -> {callee}:{port}"
    anywhere = {"app": "ingress-controller"}
    assert allowed(policies, "Ingress", labels["facade"], anywhere, 8000)
    assert not allowed(policies, "Ingress", labels["auth"], anywhere, 50051)
    for name in ("auth", "products", "inventory", "migrate"):
        assert allowed(policies, "Egress", labels[name], {}, 5432), f"{name} reaches the database"
    assert not allowed(policies, "Egress", labels["facade"], {}, 5432)
    assert allowed(policies, "Egress", labels["auth"], {}, 587)
    assert not allowed(policies, "Egress", labels["products"], {}, 587)


def test_cert_manager_makes_the_mounted_secrets(renders: dict[str, Rendered]) -> None:
    rendered = renders["cert-manager"]
    for name in WORKLOADS:
        certificate = rendered.get("Certificate", f"invmesh-{name}")["spec"]
        volumes = pod_spec(rendered.get("Deployment", name))["volumes"]
        assert certificate["secretName"] in [v.get("secret", {}).get("secretName") for v in volumes]
        names = {f"{name}{suffix}" for suffix in ("", "-headless")}
        names |= {f"{n}.invmesh.svc{tail}" for n in set(names) for tail in ("", ".cluster.local")}
        assert {"localhost", *names} == set(certificate["dnsNames"])
        assert {"127.0.0.1", "::1"} == set(certificate["ipAddresses"])
        assert {"server auth", "client auth"} <= set(certificate["usages"])
        issuer = rendered.get("Issuer", certificate["issuerRef"]["name"])
        assert (
            rendered.get("Certificate", "invmesh-ca")["spec"]["secretName"]
            == issuer["spec"]["ca"]["secretName"]
        )


def test_certs_init_and_cert_manager_issue_the_same_names(
    renders: dict[str, Rendered], tmp_path: Path
) -> None:
    """Secrets made by hand (`invmesh certs init`) and by the component are interchangeable."""
    from cryptography import x509

    made = subprocess.run(
        [str(BIN / "invmesh"), "certs", "init", str(tmp_path / "certs")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    for name in WORKLOADS:
        assert {p.name for p in (tmp_path / "certs" / name).iterdir()} == {"tls.crt", "tls.key", "ca.crt"}
        cert = x509.load_pem_x509_certificate((tmp_path / "certs" / name / "tls.crt").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        spec = renders["cert-manager"].get("Certificate", f"invmesh-{name}")["spec"]
        assert set(names.get_values_for_type(x509.DNSName)) == set(spec["dnsNames"])
        assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == set(spec["ipAddresses"])
