"""deploy/k8s as ``kubectl apply -k`` reads it, what the manifests' processes read and
export, and KEDA's ScaledObject schema made strict (tests/test_k8s_manifests.py; the
rules over them are tests/k8s_rules.py)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from conversation_svc.worker import ConversationService
from shared import metrics
from shared.keys import Keys
from shared.settings import (
    ConnectionSettings,
    ConversationSettings,
    GatewaySettings,
    LocalEngineSettings,
    OpenAISettings,
    TranscriberSettings,
    env_name,
)
from transcriber_svc.worker import TranscriberService

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KEDA_CRD = K8S / "schemas" / "keda" / "keda.sh_scaledobjects.yaml"

Obj = dict[str, Any]

#: The settings classes each process loads (shared/process.py, gateway_svc/__main__.py,
#: simulator_svc/__main__.py); the names its __main__ reads with os.environ are added to them.
PROCESS_SETTINGS: dict[str, tuple[type[BaseSettings], ...]] = {
    "transcriber_svc": (TranscriberSettings, OpenAISettings, LocalEngineSettings),
    "conversation_svc": (ConversationSettings, OpenAISettings, LocalEngineSettings),
    "gateway_svc": (ConnectionSettings, GatewaySettings),
    "simulator_svc": (ConnectionSettings,),
}
#: The session services: they drain on SIGTERM for DRAIN_TIMEOUT_S and serve /readyz on METRICS_PORT.
WORKERS = ("transcriber_svc", "conversation_svc")
VAR_REFERENCE = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
SELECTOR = re.compile(r"\b(vab_[a-z_]+)\s*(?:\{([^}]*)\})?")
LABEL = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


# --- reading --------------------------------------------------------------------------------------


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def listed_files(kustomization: Path) -> list[Path]:
    return [kustomization.parent / name for name in yaml.safe_load(kustomization.read_text())["resources"]]


def load(paths: list[Path]) -> list[Obj]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_objects() -> list[Obj]:
    return load([path for k in kustomizations() for path in listed_files(k)])


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "Job")]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def module_of(container: Obj) -> str:
    command = container.get("command", [])
    assert command[:2] == ["python", "-m"], f"{container['name']}: not a `python -m` command: {command}"
    return str(command[2])


def configmap_data(objs: list[Obj], name: str) -> dict[str, str]:
    found = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"] == name]
    return dict(found[0].get("data", {})) if found else {}


def environment(container: Obj, objs: list[Obj]) -> Iterator[tuple[str, Obj | None]]:
    """(name, its env entry or None for a ConfigMap key), in the order Kubernetes defines them:
    envFrom first, then env."""
    for source in container.get("envFrom", []):
        for key in configmap_data(objs, source["configMapRef"]["name"]):
            yield key, None
    for entry in container.get("env", []):
        yield entry["name"], entry


def env_values(container: Obj, objs: list[Obj]) -> dict[str, str]:
    """The plain values of a container's environment (ConfigMap keys and ``value`` entries),
    ``$(VAR)`` left as written."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        values.update(configmap_data(objs, source["configMapRef"]["name"]))
    for entry in container.get("env", []):
        if "value" in entry:
            values[entry["name"]] = entry["value"]
    return values


def expand(value: str, defined: dict[str, str]) -> str:
    return VAR_REFERENCE.sub(lambda m: defined.get(m.group(1), m.group(0)), value)


def settings_read_by(module: str) -> set[str]:
    names = {env_name(cls, field) for cls in PROCESS_SETTINGS[module] for field in cls.model_fields}
    source = (ROOT / module / "__main__.py").read_text()
    return names | set(re.findall(r'os\.environ\.get\("([A-Z][A-Z0-9_]*)"', source))


def secret_mounts(workload: Obj, container: Obj) -> dict[str, str]:
    """mountPath -> secret name, for the container's mounts of secret volumes."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod_spec(workload).get("volumes", []) if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in secrets}


def referenced_secrets(objs: list[Obj]) -> set[str]:
    names = set()
    for w in workloads(objs):
        names |= {v["secret"]["secretName"] for v in pod_spec(w).get("volumes", []) if "secret" in v}
        for c in pod_spec(w)["containers"]:
            names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                      if "secretKeyRef" in e.get("valueFrom", {})}
    return names


def selectors(query: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) of each series selector of a PromQL query."""
    return [(m.group(1), dict(LABEL.findall(m.group(2) or ""))) for m in SELECTOR.finditer(query)]


def streams_read_by(module: str) -> set[str]:
    """The stream kinds (the metrics' ``stream`` label) a worker's group reads: the control
    streams and its own data streams."""
    service = {"transcriber_svc": TranscriberService, "conversation_svc": ConversationService}[module]
    return {"control", metrics.stream_kind(service.data_key(service, Keys(), "c"))}  # type: ignore[arg-type]


def exported_gauges() -> dict[str, tuple[str, ...]]:
    """Every gauge the workers export (shared/metrics.py): name -> its label names."""
    return {g.name: g.labelnames for g in vars(metrics).values() if isinstance(g, metrics.Gauge)}


# --- KEDA's ScaledObject schema, strict -------------------------------------------------------------


def keda_schema() -> Obj:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return closed(version["schema"]["openAPIV3Schema"])


def closed(schema: Obj) -> Obj:
    """The schema with unknown fields refused: Kubernetes prunes (drops) fields a structural
    CRD schema does not name, silently; a manifest should not hold any. Every object schema
    that lists its properties and does not keep unknown fields gets additionalProperties: false."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for key, value in node.items():
                if key != "enum":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(out)
    return out
