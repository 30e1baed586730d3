"""The project's rules for deploy/k8s (tests/test_k8s_manifests.py). Each returns the
problems it finds (empty: none), so the tests can show that it finds them in a broken copy
of the manifests as well as none in the real ones."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from gateway_svc.__main__ import SHUTDOWN_TIMEOUT_S
from gateway_svc.drain import CLOSE_TIMEOUT_S
from shared.acl.users import USER_NAMES
from tests.k8s_manifests import (
    VAR_REFERENCE,
    WORKERS,
    Obj,
    env_values,
    environment,
    expand,
    exported_gauges,
    module_of,
    of_kind,
    pod_spec,
    secret_mounts,
    selectors,
    settings_read_by,
    streams_read_by,
    workloads,
)

#: Between the longest a process may take to stop after SIGTERM and the SIGKILL.
SHUTDOWN_MARGIN_S = 10.0
#: What the gateway's stop takes beyond GATEWAY_DRAIN_S at most: the close handshakes'
#: timeout, then aiohttp's shutdown timeout for what is left (gateway_svc/__main__.py).
GATEWAY_STOP_BEYOND_DRAIN_S = CLOSE_TIMEOUT_S + SHUTDOWN_TIMEOUT_S
#: The KEDA trigger metadata each scaler type reads (KEDA's prometheus and cpu scaler docs):
#: (required, allowed). A misspelt key would be ignored by KEDA, not refused.
TRIGGER_METADATA = {
    "prometheus": ({"serverAddress", "query", "threshold"},
                   {"serverAddress", "query", "threshold", "activationThreshold", "namespace", "customHeaders",
                    "ignoreNullValues", "queryParameters", "unsafeSsl", "timeout", "authModes"}),
    "cpu": ({"value"}, {"value", "containerName"}),
}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEYS?)$")
#: What a key or a password pasted into a manifest would look like.
SECRET_VALUE = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}|\b[0-9a-f]{32,}\b")


def probe_problems(objs: list[Obj]) -> list[str]:
    """Readiness on /readyz and liveness on /healthz, on the port the process serves them on."""
    problems = []
    for d in of_kind(objs, "Deployment"):
        for c in pod_spec(d)["containers"]:
            module = module_of(c)
            port_setting = "METRICS_PORT" if module in WORKERS else "GATEWAY_PORT"
            serving = env_values(c, objs).get(port_setting)
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = c.get(kind, {}).get("httpGet", {})
                if get.get("path") != path:
                    problems.append(f"{d['metadata']['name']}: {kind} is not an HTTP GET of {path}")
                    continue
                port = ports.get(get.get("port"), get.get("port"))
                if serving is None or port != int(serving):
                    problems.append(f"{d['metadata']['name']}: {kind} port {get.get('port')} is not the "
                                    f"{port_setting} the process serves it on ({serving})")
    return problems


def prestop_s(container: Obj) -> float:
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    command = hook.get("exec", {}).get("command", [])
    assert len(command) == 2 and command[0] == "sleep", f"{container['name']}: a preStop other than a sleep"
    return float(command[1])


def shutdown_problems(objs: list[Obj]) -> list[str]:
    """The kubelet's SIGKILL comes after the pause and the longest clean stop, with a margin."""
    problems = []
    for d in of_kind(objs, "Deployment"):
        name, spec = d["metadata"]["name"], pod_spec(d)
        grace = spec.get("terminationGracePeriodSeconds")
        for c in spec["containers"]:
            module = module_of(c)
            setting = "DRAIN_TIMEOUT_S" if module in WORKERS else "GATEWAY_DRAIN_S"
            drain = env_values(c, objs).get(setting)
            if drain is None:
                problems.append(f"{name}: {setting} is not set explicitly")
                continue
            if module in WORKERS:
                if prestop_s(c):
                    problems.append(f"{name}: a worker needs no preStop (SIGTERM drains)")
                stop_s, what = float(drain), f"DRAIN_TIMEOUT_S {drain}"
            else:
                stop_s = float(drain) + GATEWAY_STOP_BEYOND_DRAIN_S
                what = f"GATEWAY_DRAIN_S {drain} + close and shutdown timeouts {GATEWAY_STOP_BEYOND_DRAIN_S:g}"
            needed = prestop_s(c) + stop_s + SHUTDOWN_MARGIN_S
            if grace is None or grace < needed:
                problems.append(f"{name}: terminationGracePeriodSeconds {grace} < preStop + {what} + margin "
                                f"({needed:g})")
    return problems


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def disruption_problems(objs: list[Obj]) -> list[str]:
    """Each Deployment selects its own pods, and has one PodDisruptionBudget selecting them alone."""
    problems = []
    deployments = of_kind(objs, "Deployment")
    for d in deployments:
        name, labels = d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"]
        if not _selects(d["spec"]["selector"], labels):
            problems.append(f"{name}: the Deployment's selector does not match its pod labels")
        budgets = [p for p in of_kind(objs, "PodDisruptionBudget") if p["metadata"]["namespace"]
                   == d["metadata"]["namespace"] and _selects(p["spec"]["selector"], labels)]
        if len(budgets) != 1:
            problems.append(f"{name}: {len(budgets)} PodDisruptionBudgets select its pods (want 1)")
            continue
        others = [o["metadata"]["name"] for o in deployments if o is not d
                  and _selects(budgets[0]["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"])]
        if others:
            problems.append(f"{name}: its PodDisruptionBudget also selects {others}")
    return problems


def autoscaling_problems(objs: list[Obj]) -> list[str]:
    """One ScaledObject per Deployment: at least one replica, a slow scale-down, triggers KEDA
    reads, and queries of the tier's own series: busy slots and backlog for the workers, open
    sessions for the gateway."""
    problems = []
    gauges = exported_gauges()
    for d in of_kind(objs, "Deployment"):
        name, namespace = d["metadata"]["name"], d["metadata"]["namespace"]
        scalers = [s for s in of_kind(objs, "ScaledObject") if s["metadata"]["namespace"] == namespace
                   and s["spec"]["scaleTargetRef"]["name"] == name
                   and s["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"]
        if len(scalers) != 1:
            problems.append(f"{name}: {len(scalers)} ScaledObjects target it (want 1)")
            continue
        spec = scalers[0]["spec"]
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not 1 <= low <= d["spec"].get("replicas", 1) <= high:
            problems.append(f"{name}: want 1 <= minReplicaCount ({low}) <= replicas <= maxReplicaCount ({high})")
        down = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {}) \
            .get("scaleDown", {})
        if down.get("stabilizationWindowSeconds", 300) < 300 or not down.get("policies"):
            problems.append(f"{name}: scale-down needs a stabilization window of 300 s or more and a policy")
        module = module_of(pod_spec(d)["containers"][0])
        queried: set[str] = set()
        streams = streams_read_by(module) if module in WORKERS else set()  # the gateway reads no group
        for trigger in spec["triggers"]:
            required, allowed = TRIGGER_METADATA.get(trigger["type"], (set(), set()))
            keys = set(trigger.get("metadata", {}))
            if not required <= keys <= allowed:
                problems.append(f"{name}: {trigger['type']} trigger metadata {sorted(keys)}: needs "
                                f"{sorted(required)}, KEDA reads only {sorted(allowed)}")
            query = trigger.get("metadata", {}).get("query", "")
            for metric, labels in selectors(query):
                queried.add(metric)
                wanted = {"namespace": namespace, "service": module.removesuffix("_svc")}
                if metric not in gauges:
                    problems.append(f"{name}: the query reads {metric}, which no service exports as a gauge")
                elif set(labels) - {"namespace"} - set(gauges[metric]):
                    problems.append(f"{name}: {metric} has no label among {sorted(set(labels) - {'namespace'})}")
                elif any(labels.get(k) != v for k, v in wanted.items()) or (
                        "stream" in labels and labels["stream"] not in streams):
                    problems.append(f"{name}: {metric}{labels} is not this tier's series ({wanted}, a stream "
                                    f"of {sorted(streams)})")
        needs = (("vab_sessions_owned", "vab_session_capacity", "vab_group_lag_entries", "vab_group_pending_entries")
                 if module in WORKERS else ("vab_gateway_sessions_open",))
        for need in needs:
            if need not in queried:
                problems.append(f"{name}: no trigger reads {need} (the tier's load)")
    return problems


def setting_problems(objs: list[Obj]) -> list[str]:
    """Every variable a container gets is a setting its process reads, or a helper another
    of its values uses as $(NAME); every $(NAME) is defined before it is used; each process
    connects to Redis as its own ACL user."""
    problems = []
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            module, where = module_of(c), f"{w['metadata']['name']}/{c['name']}"
            read = settings_read_by(module)
            entries = list(environment(c, objs))
            values = env_values(c, objs)
            used = {ref for value in values.values() for ref in VAR_REFERENCE.findall(value)}
            defined: set[str] = set()
            for var, entry in entries:
                for ref in VAR_REFERENCE.findall(entry.get("value", "") if entry else ""):
                    if ref not in defined:
                        problems.append(f"{where}: {var} uses $({ref}) before any variable of that name")
                defined.add(var)
                if var not in read and var not in used:
                    problems.append(f"{where}: {var} is no setting {module} reads")
            url = expand(values.get("REDIS_URL", ""), values)
            user = module.removesuffix("_svc")
            if "REDIS_URL" in values and (urlsplit(url).username != user or user not in USER_NAMES):
                problems.append(f"{where}: REDIS_URL does not connect as the ACL user {user!r}")
    return problems


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def secret_problems(objs: list[Obj]) -> list[str]:
    """No secret value in the manifests: no Secret object, secret variables from a Secret,
    password files on a Secret's mount, no password in a URL, nothing shaped like a key."""
    problems = [f"a Secret object ({o['metadata']['name']}): secrets are made outside the manifests"
                for o in of_kind(objs, "Secret")]
    for cm in of_kind(objs, "ConfigMap"):
        problems += [f"ConfigMap {cm['metadata']['name']}: {key} looks like a secret"
                     for key in cm.get("data", {}) if SECRET_NAME.search(key)]
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            where, values = f"{w['metadata']['name']}/{c['name']}", env_values(c, objs)
            mounts = secret_mounts(w, c)
            for var, entry in environment(c, objs):
                if SECRET_NAME.search(var) and (entry is None or "secretKeyRef" not in entry.get("valueFrom", {})):
                    problems.append(f"{where}: {var} must come from a Secret (secretKeyRef)")
                if var.endswith("_FILE") and not any(values.get(var, "").startswith(m + "/") for m in mounts):
                    problems.append(f"{where}: {var} is not a file of a mounted Secret")
                if urlsplit(expand(values.get(var, ""), values)).password:
                    problems.append(f"{where}: {var} carries a password")
    problems += [f"something shaped like a key or password: {s[:12]}..." for o in objs for s in _strings(o)
                 if SECRET_VALUE.search(s)]
    return problems


def hardening_problems(objs: list[Obj], image: str, uid: int) -> list[str]:
    """The image's non-root user, no privilege gain or capabilities, a read-only root with an
    emptyDir on /tmp (where the image writes), no service links or API token, resources bounded."""
    problems = []
    for w in workloads(objs):
        spec, name = pod_spec(w), w["metadata"]["name"]
        context = spec.get("securityContext", {})
        if not (context.get("runAsNonRoot") is True and context.get("runAsUser") == uid
                and context.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
            problems.append(f"{name}: the pod must run as the image's user {uid}, non-root, RuntimeDefault seccomp")
        if spec.get("enableServiceLinks") is not False or spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: enableServiceLinks and automountServiceAccountToken must be false")
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            if not (sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]):
                problems.append(f"{name}/{c['name']}: no privilege escalation, a read-only root, drop ALL")
            if not any(m["mountPath"] == "/tmp" and m["name"] in empty_dirs for m in c.get("volumeMounts", [])):
                problems.append(f"{name}/{c['name']}: /tmp must be an emptyDir (the root is read-only)")
            resources = c.get("resources", {})
            if any(k not in resources.get(part, {}) for part in ("requests", "limits") for k in ("cpu", "memory")):
                problems.append(f"{name}/{c['name']}: cpu and memory requests and limits")
            if c.get("image") != image:
                problems.append(f"{name}/{c['name']}: image {c.get('image')!r} is not the project's {image!r}")
    return problems


Rule = Callable[[list[Obj]], list[str]]
RULES: tuple[Rule, ...] = (probe_problems, shutdown_problems, disruption_problems, autoscaling_problems,
                           setting_problems, secret_problems)
