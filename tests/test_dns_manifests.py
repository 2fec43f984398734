"""manifests/dns: clusterset_dns's Deployment, Service, read-only RBAC and the CoreDNS stub,
consistent with each other, with the server's own flags and with its README; and the
tests/dnsfleet fixture in exactly the shape mcs_controller writes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mcs_controller.access.resources import ENDPOINT_SLICES, SERVICE_IMPORTS
from mcs_controller.model import labels as L
from mcs_controller.model.desired import export_slice_labels, import_labels
from mcs_controller.model.slices import mirror_slices

ROOT = Path(__file__).resolve().parent.parent
DNS = ROOT / "manifests" / "dns"
README = ROOT / "clusterset_dns" / "README.md"
FLEET = ROOT / "tests" / "dnsfleet"
CLUSTER = "c1"
READ_VERBS = {"get", "list", "watch"}


def docs() -> list[dict]:
    out = []
    for path in sorted(DNS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict), path
                assert doc.get("apiVersion") and doc.get("kind"), path
                assert doc.get("metadata", {}).get("name"), path
                out.append(doc)
    return out


def one(kind: str) -> dict:
    (found,) = [d for d in docs() if d["kind"] == kind]
    return found


def container() -> dict:
    (c,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def corefile_blocks(corefile: str) -> dict[str, list[str]]:
    """Top-level server blocks: key (`zone:port`) -> the lines inside, nesting kept."""
    blocks: dict[str, list[str]] = {}
    depth, current = 0, ""
    for raw in corefile.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if depth == 0:
            assert line.endswith("{"), line
            current = line[:-1].strip()
            blocks[current] = []
        else:
            blocks[current].append(line)
        depth += line.count("{") - line.count("}")
        assert depth >= 0, line
    assert depth == 0
    for lines in blocks.values():
        lines.pop()  # the closing brace
    return blocks


def test_every_manifest_parses_and_lives_where_it_belongs() -> None:
    kinds = sorted(d["kind"] for d in docs())
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                            "PodDisruptionBudget", "Service", "ConfigMap"])
    for d in docs():
        ns = d["metadata"].get("namespace")
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            assert ns is None
        elif d["kind"] == "ConfigMap":
            assert (ns, d["metadata"]["name"]) == ("kube-system", "coredns")
        else:
            assert ns == "amcs-system"


def test_rbac_is_read_only_and_exactly_what_the_informers_watch() -> None:
    role = one("ClusterRole")
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/nonResourceURLs
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        assert set(rule["verbs"]) == READ_VERBS, rule  # list+watch for the informer; get only
        granted |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {(SERVICE_IMPORTS.group, SERVICE_IMPORTS.plural),
                       (ENDPOINT_SLICES.group, ENDPOINT_SLICES.plural)}
    binding = one("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    account = one("ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_deployment_runs_two_unprivileged_replicas_with_probes_on_the_admin_port() -> None:
    deploy = one("Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    c = container()
    cmd = c["command"]
    assert cmd[:3] == ["python", "-m", "clusterset_dns"]
    listen_host, listen_port = host_port(flag(cmd, "--listen"))
    admin_host, admin_port = host_port(flag(cmd, "--admin"))
    assert listen_host == admin_host == "0.0.0.0"
    # non-root with every capability dropped: the DNS port must be unprivileged
    pod_sc, sc = spec["template"]["spec"]["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] and pod_sc["runAsUser"] != 0 and sc["runAsNonRoot"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert listen_port >= 1024
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in c["ports"]}
    assert ports == {"dns": (listen_port, "UDP"), "dns-tcp": (listen_port, "TCP"),
                     "admin": (admin_port, "TCP")}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(admin_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == spec["selector"] and pdb["spec"]["minAvailable"] == 1


def test_service_maps_53_udp_and_tcp_to_the_pods_dns_ports() -> None:
    svc = one("Service")
    assert svc["spec"]["type"] == "ClusterIP" and "clusterIP" not in svc["spec"]
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    container_ports = {p["name"]: p for p in container()["ports"]}
    seen = set()
    for port in svc["spec"]["ports"]:
        target = container_ports[port["targetPort"]]
        assert target["protocol"] == port["protocol"]
        seen.add((port["port"], port["protocol"]))
    assert seen == {(53, "UDP"), (53, "TCP")}


def test_corefile_stub_forwards_the_zone_to_the_service() -> None:
    cm = one("ConfigMap")
    blocks = corefile_blocks(cm["data"]["Corefile"])
    zone = flag(container()["command"], "--zone")
    main = next(k for k in blocks if k.startswith(".:"))
    stub_key = f"{zone}:{main.split(':')[1]}"  # the stub listens where the main block does
    assert stub_key in blocks, blocks.keys()
    stub = blocks[stub_key]
    forward = next(line for line in stub if line.startswith("forward "))
    _, dot, upstream, brace = forward.split()
    assert (dot, brace) == (".", "{")
    host, port = host_port(upstream)
    assert host == "CLUSTERSET_DNS_IP"  # the Service's ClusterIP, substituted at install time
    assert {(port, "UDP"), (port, "TCP")} <= {
        (p["port"], p["protocol"]) for p in one("Service")["spec"]["ports"]}
    assert "health_check 0.5s" in stub and "max_fails 2" in stub
    ttl = int(flag(container()["command"], "--ttl"))
    assert f"cache {ttl}" in stub  # never cache longer than the server's TTL
    assert "errors" in stub
    # the cluster.local block is left as kubeadm ships it
    assert any(line.startswith("kubernetes cluster.local") for line in blocks[main])
    assert "reload" in blocks[main]


@pytest.fixture(scope="module")
def server_help() -> str:
    done = subprocess.run([sys.executable, "-m", "clusterset_dns", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_deployment_uses_only_flags_the_server_has(server_help: str) -> None:
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", server_help))
    used = {arg for arg in container()["command"] if arg.startswith("--")}
    assert used <= flags, used - flags


def test_readme_documents_every_flag_and_manifest(server_help: str) -> None:
    text = README.read_text()
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", server_help)) - {"--help"}
    assert flags, server_help
    missing = sorted(f for f in flags if f"`{f}" not in text)
    assert not missing, f"README.md does not document {missing}"
    for path in sorted(DNS.glob("*.yaml")):
        assert f"manifests/dns/{path.name}" in text, path.name
    assert "clusterset.local:53 {" in text and "forward . " in text
    assert "NodeLocal" in text


# ---------------------------------------------------------------------- the fixture itself


def test_fixture_slices_are_what_the_controller_writes() -> None:
    """tests/dnsfleet holds imports and slices in mcs_controller's exact shape: mirroring
    a cluster's slices again reproduces them (names, labels, ports, endpoints)."""
    docs = [d for p in sorted((FLEET / CLUSTER).glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]
    imports = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceImport"}
    slices = [d for d in docs if d["kind"] == "EndpointSlice"]
    assert set(imports) == {"web", "dual", "mysql", "gone"}
    for name, imp in imports.items():
        assert imp["metadata"]["labels"] == import_labels(name)
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for s in slices:
        labels = s["metadata"]["labels"]
        key = (s["metadata"]["namespace"], labels[L.LABEL_MCS_SERVICE_NAME],
               labels[L.LABEL_SOURCE_CLUSTER])
        groups.setdefault(key, []).append(s)
    assert ("demo", "mysql", "east.prod") in groups
    for (ns, name, cluster), group in groups.items():
        again = mirror_slices(source_slices=group, source_cluster=cluster, namespace=ns,
                              name_prefix=L.shadow_service_name(name),
                              labels=export_slice_labels(name))
        key = lambda s: s["metadata"]["name"]  # noqa: E731
        assert sorted(again, key=key) == sorted(group, key=key), (name, cluster)
        assert {c["cluster"] for c in imports[name]["status"]["clusters"]} >= {cluster}
