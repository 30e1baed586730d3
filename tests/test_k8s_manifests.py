"""deploy/k8s checked offline: every core object against the Kubernetes schemas that
kubernetes-validate ships (strict: an unknown field fails), for every Kubernetes version it
ships; the ScaledObjects against KEDA's CRD (vendored, made strict the same way); the
project's rules (tests/k8s_rules.py); each validator and rule shown to refuse a broken
copy; and the manifests run as written: the three tiers with the manifests' settings
against a local Redis Cluster holding the ACL users, the smoke Job's command through the
gateway, and every series the autoscaling queries select, exported by the running workers."""

from __future__ import annotations

import copy
import hashlib
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor
from prometheus_client.parser import text_string_to_metric_families

from shared.acl.deploy import create_gateway_keys, render
from shared.acl.users import USER_NAMES
from shared.devstack import Stack, deterministic_env, wait_http_ready
from shared.redis_cluster import LocalCluster
from shared.redis_server import free_port
from tests import k8s_manifests as k8s
from tests import k8s_rules as rules
from tests.cluster_helpers import start_cluster

Obj = dict[str, Any]
COMPOSE = yaml.safe_load((k8s.ROOT / "docker-compose.yml").read_text())
#: Every Kubernetes minor version whose schemas kubernetes-validate ships (1.25 to 1.37 in 1.37.0).
KUBERNETES_VERSIONS = sorted({major_minor(v) for v in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
DOCS = (k8s.ROOT / "docs" / "kubernetes.md").read_text()
SCHEMA_README = (k8s.KEDA_CRD.parent.parent / "README.md").read_text()


def objects() -> list[Obj]:
    return k8s.all_objects()


def named(objs: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def dockerfile_uid() -> int:
    users = re.findall(r"^USER (\d+):\d+$", (k8s.ROOT / "Dockerfile").read_text(), flags=re.M)
    return int(users[-1])


# --- what kubectl apply -k sends ---------------------------------------------------------------------


def test_the_kustomizations_list_every_manifest_and_nothing_else() -> None:
    listed = [path for k in k8s.kustomizations() for path in k8s.listed_files(k)]
    for k in k8s.kustomizations():
        # No transformers: the files as written are what kubectl applies (and what this checks).
        assert set(yaml.safe_load(k.read_text())) == {"apiVersion", "kind", "resources"}, k
    on_disk = {p for p in k8s.K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and "schemas" not in p.parts}
    assert sorted(listed) == sorted(on_disk) and len(set(listed)) == len(listed)
    kinds = sorted(o["kind"] for o in objects())
    assert kinds == sorted(["Namespace", "ConfigMap", "Job", "Service"] + ["Deployment", "PodDisruptionBudget",
                                                                          "ScaledObject"] * 3)
    namespace = named(objects(), "Namespace", "vab")["metadata"]["name"]
    assert all(o["metadata"].get("namespace") == namespace for o in objects() if o["kind"] != "Namespace")


# --- the schemas ---------------------------------------------------------------------------------------


def core_objects() -> list[Obj]:
    return [o for o in objects() if o["kind"] != "ScaledObject"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_core_object_is_valid_for_kubernetes(version: str) -> None:
    errors = []
    for obj in core_objects():
        try:
            # It answers which version's schemas it used: this one, not an older fallback.
            assert kubernetes_validate.validate(obj, version, strict=True) == version
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors


def test_the_scaled_objects_are_valid_for_keda() -> None:
    validator = jsonschema.Draft202012Validator(k8s.keda_schema())
    scalers = k8s.of_kind(objects(), "ScaledObject")
    assert {s["apiVersion"] for s in scalers} == {"keda.sh/v1alpha1"}
    errors = [f"{s['metadata']['name']}: {e.json_path}: {e.message}" for s in scalers for e in validator.iter_errors(s)]
    assert not errors


def _set(obj: Obj, path: str, value: Any) -> Obj:
    """A copy of ``obj`` with the dotted ``path`` (list indexes as numbers) set to ``value``."""
    out = copy.deepcopy(obj)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = out
    for part in parents:
        node = node[part]
    node[last] = value
    return out


BROKEN_DEPLOYMENTS = {
    "an unknown field": ("spec.template.spec.containers.0.readinessProbe.httpGett", {"path": "/readyz"}),
    "a wrong type": ("spec.replicas", "two"),
    "a misspelt pod field": ("spec.template.spec.terminationGracePeriod", 45),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_DEPLOYMENTS))
def test_kubernetes_validate_refuses_a_broken_deployment(broken: str) -> None:
    path, value = BROKEN_DEPLOYMENTS[broken]
    bad = _set(named(objects(), "Deployment", "transcriber"), path, value)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


BROKEN_SCALERS = {
    "an unknown field": ("spec.minReplicas", 1),
    "an unknown field deep down": ("spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.window", 60),
    "a wrong type": ("spec.pollingInterval", "15"),
    "a number where KEDA wants a string": ("spec.triggers.0.metadata.threshold", 0.7),
    "a missing required field": ("spec.scaleTargetRef", {"kind": "Deployment"}),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_SCALERS))
def test_the_keda_schema_refuses_a_broken_scaled_object(broken: str) -> None:
    path, value = BROKEN_SCALERS[broken]
    bad = _set(named(objects(), "ScaledObject", "transcriber"), path, value)
    assert list(jsonschema.Draft202012Validator(k8s.keda_schema()).iter_errors(bad))


def test_the_vendored_crd_is_the_one_its_readme_names() -> None:
    digest = hashlib.sha256(k8s.KEDA_CRD.read_bytes()).hexdigest()
    assert digest in SCHEMA_README, "deploy/k8s/schemas/README.md must name the vendored file's sha256"


# --- the project's rules ----------------------------------------------------------------------------------


def test_the_manifests_keep_the_project_rules() -> None:
    objs = objects()
    problems = [p for rule in rules.RULES for p in rule(objs)]
    image = COMPOSE["x-app"]["image"]
    problems += rules.hardening_problems(objs, image, dockerfile_uid())
    assert not problems


def test_each_tier_runs_what_compose_runs() -> None:
    for name in ("transcriber", "conversation", "gateway"):
        container = k8s.pod_spec(named(objects(), "Deployment", name))["containers"][0]
        assert container["command"] == COMPOSE["services"][f"{name}_svc"]["command"], name


def test_the_shared_settings_point_at_a_redis_cluster() -> None:
    data = k8s.configmap_data(objects(), "vab-settings")
    assert data["REDIS_CLUSTER"] == "auto"
    # At least 4 partitions per master of the chart's default 3 masters, so slots spread.
    assert int(data["PARTITIONS"]) >= 12
    assert data["VAB_REDIS_ADDRESS"] in DOCS, "docs/kubernetes.md installs the Redis the settings name"


def test_every_secret_the_manifests_use_is_made_by_the_docs() -> None:
    for name in k8s.referenced_secrets(objects()):
        assert f"create secret generic {name}" in DOCS, name


def _edit(kind: str, name: str, change: Callable[[Obj], None]) -> Callable[[list[Obj]], None]:
    def apply(objs: list[Obj]) -> None:
        change(named(objs, kind, name))
    return apply


def _container(obj: Obj) -> Obj:
    container: Obj = k8s.pod_spec(obj)["containers"][0]
    return container


def _env(obj: Obj, var: str) -> Obj:
    return next(e for e in _container(obj)["env"] if e["name"] == var)


def _plain(entry: Obj) -> None:
    """The variable's value written into the manifest instead of read from its Secret."""
    del entry["valueFrom"]
    entry["value"] = "sk-proj-0123456789abcdefghij"


BROKEN_RULES: dict[str, tuple[Callable[[list[Obj]], None], str]] = {
    "no readiness probe": (_edit("Deployment", "conversation", lambda d: _container(d).pop("readinessProbe")),
                           "readinessProbe"),
    "readiness on another path": (_edit("Deployment", "gateway", lambda d: _container(d)["readinessProbe"]["httpGet"]
                                        .update(path="/healthz")), "/readyz"),
    "a grace period within the drain": (_edit("Deployment", "transcriber", lambda d: _env(d, "DRAIN_TIMEOUT_S")
                                              .update(value="40")), "terminationGracePeriodSeconds"),
    "a gateway drain past its grace period": (_edit("Deployment", "gateway", lambda d: _env(d, "GATEWAY_DRAIN_S")
                                                .update(value="30")), "terminationGracePeriodSeconds"),
    "no explicit drain timeout": (_edit("Deployment", "conversation", lambda d: _container(d)["env"].remove(
        _env(d, "DRAIN_TIMEOUT_S"))), "DRAIN_TIMEOUT_S is not set"),
    "a budget that misses the pods": (_edit("PodDisruptionBudget", "gateway", lambda p: p["spec"]["selector"]
                                            ["matchLabels"].update({"app.kubernetes.io/component": "gw"})),
                                      "PodDisruptionBudgets"),
    "a scaler of another name": (_edit("ScaledObject", "conversation", lambda s: s["spec"]["scaleTargetRef"]
                                       .update(name="conversations")), "ScaledObjects target it"),
    "no replica left": (_edit("ScaledObject", "transcriber", lambda s: s["spec"].update(minReplicaCount=0)),
                        "minReplicaCount"),
    "a hasty scale-down": (_edit("ScaledObject", "gateway", lambda s: s["spec"]["advanced"]
                                 ["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
                                 .update(stabilizationWindowSeconds=30)), "scale-down"),
    "a misspelt trigger key": (_edit("ScaledObject", "transcriber", lambda s: s["spec"]["triggers"][0]["metadata"]
                                     .update(treshold=s["spec"]["triggers"][0]["metadata"].pop("threshold"))),
                               "trigger metadata"),
    "another tier's series": (_edit("ScaledObject", "conversation", lambda s: s["spec"]["triggers"][1]["metadata"]
                                    .update(query=s["spec"]["triggers"][1]["metadata"]["query"]
                                            .replace('service="conversation"', 'service="transcriber"'))),
                              "not this tier's series"),
    "a stream the tier does not read": (_edit("ScaledObject", "transcriber", lambda s: s["spec"]["triggers"][1]
                                             ["metadata"].update(query=s["spec"]["triggers"][1]["metadata"]["query"]
                                                                 .replace('stream="input"', 'stream="inputs"'))),
                                        "not this tier's series"),
    "a metric nobody exports": (_edit("ScaledObject", "transcriber", lambda s: s["spec"]["triggers"][0]["metadata"]
                                      .update(query="sum(vab_sessions_busy)")), "no service exports"),
    "a gateway scaled on CPU alone": (_edit("ScaledObject", "gateway", lambda s: s["spec"]["triggers"].pop(0)),
                                      "no trigger reads vab_gateway_sessions_open"),
    "the gateway's series of another tier": (_edit("ScaledObject", "gateway", lambda s: s["spec"]["triggers"][0]
                                                   ["metadata"].update(query="sum(vab_gateway_sessions_open"
                                                                       "{service=\"conversation\"})")),
                                             "not this tier's series"),
    "a variable that is no setting": (_edit("Deployment", "gateway", lambda d: _container(d)["env"].append(
        {"name": "GATEWAY_PORTS", "value": "8080"})), "no setting gateway_svc reads"),
    "a worker setting on the gateway": (_edit("Deployment", "gateway", lambda d: _container(d)["env"].append(
        {"name": "MAX_SESSIONS", "value": "10"})), "MAX_SESSIONS is no setting"),
    "a reference to nothing": (_edit("Deployment", "transcriber", lambda d: _env(d, "REDIS_URL").update(
        value="redis://transcriber@$(REDIS_ADDRESS)/0")), "before any variable"),
    "another service's Redis user": (_edit("Deployment", "conversation", lambda d: _env(d, "REDIS_URL").update(
        value="redis://transcriber@$(VAB_REDIS_ADDRESS)/0")), "ACL user"),
    "a plaintext API key": (_edit("Deployment", "conversation", lambda d: _plain(_env(d, "OPENAI_API_KEY"))),
                            "must come from a Secret"),
    "a password in the URL": (_edit("Deployment", "gateway", lambda d: _env(d, "REDIS_URL").update(
        value="redis://gateway:hunter2@$(VAB_REDIS_ADDRESS)/0")), "carries a password"),
    "a password file off the secret": (_edit("Deployment", "gateway", lambda d: _env(d, "REDIS_PASSWORD_FILE").update(
        value="/tmp/password")), "not a file of a mounted Secret"),
    "a Secret object": (lambda objs: objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "vab-redis-gateway", "namespace": "vab"}, "stringData": {"password": "x"}}), "a Secret object"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_RULES))
def test_the_rules_find_a_broken_manifest(broken: str) -> None:
    objs = copy.deepcopy(objects())
    change, expected = BROKEN_RULES[broken]
    change(objs)
    problems = [p for rule in rules.RULES for p in rule(objs)]
    assert any(expected in p for p in problems), problems


BROKEN_HARDENING: dict[str, Callable[[Obj], None]] = {
    "root": lambda d: k8s.pod_spec(d)["securityContext"].update(runAsUser=0),
    "a writable root": lambda d: _container(d)["securityContext"].update(readOnlyRootFilesystem=False),
    "no /tmp": lambda d: _container(d)["volumeMounts"].pop(0),
    "service links": lambda d: k8s.pod_spec(d).update(enableServiceLinks=True),
    "no memory limit": lambda d: _container(d)["resources"]["limits"].pop("memory"),
    "another image": lambda d: _container(d).update(image="python:3.11-slim"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_HARDENING))
def test_the_hardening_rule_finds_a_weakened_pod(broken: str) -> None:
    objs = copy.deepcopy(objects())
    BROKEN_HARDENING[broken](named(objs, "Deployment", "conversation"))
    assert rules.hardening_problems(objs, COMPOSE["x-app"]["image"], dockerfile_uid())


# --- the manifests, run as written ---------------------------------------------------------------------


def _metrics(port: int) -> list[tuple[str, dict[str, str]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [(s.name, s.labels) for family in text_string_to_metric_families(text) for s in family.samples]


def _missing_series(port: int, scaler: Obj) -> list[str]:
    """The queries' selectors (less the namespace, a label Prometheus adds) that no sample matches."""
    samples = _metrics(port)
    wanted = [(metric, {k: v for k, v in labels.items() if k != "namespace"})
              for trigger in scaler["spec"]["triggers"] for metric, labels in k8s.selectors(
                  trigger["metadata"].get("query", ""))]
    return [f"{m}{labels}" for m, labels in wanted
            if not any(name == m and labels.items() <= got.items() for name, got in samples)]


def _heartbeats(cluster: LocalCluster, prefix: str) -> dict[str, int]:
    """service -> metrics port, from the workers' heartbeats (on whichever master holds each)."""
    ports = {}
    for node in cluster.masters():
        client = node.client()
        for key in client.scan_iter(match=f"{prefix}:worker:*"):
            beat = client.hgetall(key)
            ports[beat["service"]] = int(beat["metrics_port"])
    return ports


def _until(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_manifests_run_as_written(tmp_path: Path) -> None:
    """Each tier with the manifests' environment, changed only where a pod differs from this
    host: the Redis address, the Secrets' mounts (files here), the ports, and the engines
    (the simulated and echo ones, instead of loading local models). The Redis is a cluster of
    the chart's default shape, 3 masters with a replica each, its nodes given the ACL users
    as docs/kubernetes.md renders them for the chart. Each tier finds the cluster
    (REDIS_CLUSTER=auto), connects as its ACL user and waits for a replica (REDIS_WAIT_REPLICAS);
    the smoke Job's command is answered through the gateway; the workers export every series
    their ScaledObject queries; no node refused anything any of them sent."""
    objs = objects()
    settings = k8s.configmap_data(objs, "vab-settings")
    prefix = settings["KEY_PREFIX"]
    passwords = {user: secrets.token_hex(16) for user in USER_NAMES}
    # The docs' `grep -v '^user default '`: the chart keeps its own default user (here the
    # harness's, open, which forms the cluster and replicates).
    users = [line for line in render(prefix, passwords).splitlines() if not line.startswith("user default ")]
    aclfile = tmp_path / "users.acl"
    aclfile.write_text("\n".join([*users, "user default on nopass ~* &* +@all"]) + "\n")
    keys_file = create_gateway_keys(tmp_path / "gateway-secrets")
    assert keys_file is not None
    mounted = {**{f"vab-redis-{user}": {"password": password} for user, password in passwords.items()},
               "vab-gateway-api-keys": {"api-keys": keys_file.read_text()}}

    def here(workload: Obj, address: str) -> dict[str, str]:
        """The container's variables as the pod gets them, its Secrets' mounts as folders here."""
        container = k8s.pod_spec(workload)["containers"][0]
        env = k8s.env_values(container, objs)
        env["VAB_REDIS_ADDRESS"] = address
        env = {var: k8s.expand(value, env) for var, value in env.items()}
        for mount, secret in k8s.secret_mounts(workload, container).items():
            folder = tmp_path / "mounts" / secret
            folder.mkdir(parents=True, exist_ok=True)
            for item, content in mounted[secret].items():
                (folder / item).write_text(content)
            env = {var: value.replace(mount + "/", f"{folder}/") for var, value in env.items()}
        return env

    with start_cluster(masters=3, replicas=1, extra_args=["--aclfile", str(aclfile)]) as cluster:
        address = cluster.url.removeprefix("redis://")
        stack = Stack(deterministic_env(cluster.url, prefix), tmp_path / "logs")
        try:
            for name, engine in (("transcriber", "simulated"), ("conversation", "echo")):
                env = here(named(objs, "Deployment", name), address)
                # Both listen on 9100 in their own pods; here they share a host.
                env.update(METRICS_PORT="0", **{f"{name.upper()}_ENGINE": engine})
                stack.start(f"{name}_svc", env)
            _until("both workers' heartbeats", lambda: len(_heartbeats(cluster, prefix)) == 2)
            port = free_port()
            gateway = stack.start("gateway_svc", {**here(named(objs, "Deployment", "gateway"), address),
                                                  "GATEWAY_PORT": str(port), "GATEWAY_HOST": "127.0.0.1"})
            wait_http_ready(gateway, f"http://127.0.0.1:{port}/readyz")

            job = named(objs, "Job", "smoke-test")
            command = [sys.executable if c == "python" else c for c in k8s.pod_spec(job)["containers"][0]["command"]]
            command = [f"http://127.0.0.1:{port}" if c.startswith("http://gateway.") else c for c in command]
            proc = subprocess.run(command, env={**stack.env, **here(job, address)}, capture_output=True, text=True,
                                  timeout=120, check=False)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

            for service, metrics_port in _heartbeats(cluster, prefix).items():
                scaler = named(objs, "ScaledObject", service)
                # The lag gauges appear with the first sampling, a few seconds after the start.
                _until(f"{service}'s series", lambda: not _missing_series(metrics_port, scaler))  # noqa: B023
            # The gateway serves its own on its one port (the pod annotations name it).
            assert not _missing_series(port, named(objs, "ScaledObject", "gateway"))
            for node in cluster.live_nodes():
                assert node.command("ACL", "LOG") == [], node
        finally:
            stack.stop_all()
