"""manifests/gateway: least-privilege RBAC, flags the CLI knows, ports that agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DIR = ROOT / "manifests" / "gateway"


def objects(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DIR / name).read_text()) if d]


def rules(name: str) -> dict[tuple[str, str], set[str]]:
    role = next(o for o in objects(name) if o["kind"] == "ClusterRole")
    return {(group, res): set(rule["verbs"]) for rule in role["rules"]
            for group in rule["apiGroups"] for res in rule["resources"]}


def test_rbac_is_read_only_except_events():
    assert rules("rbac-hub.yaml") == {
        ("networking.k8s.io", "ingresses"): {"get", "list", "watch"},
        ("networking.k8s.io", "ingressclasses"): {"get", "list", "watch"},
        ("", "secrets"): {"get", "list", "watch"},  # spec.tls certificates, auth-secret
        ("", "configmaps"): {"get", "list", "watch"},  # auth-proxy-set-headers
        ("", "events"): {"create", "patch"},
    }
    assert rules("rbac-member.yaml") == {
        ("", "services"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list", "watch"},
        ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"},
    }


def test_deployment_flags_exist_and_ports_agree():
    deployment, service = objects("deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    help_text = subprocess.run([sys.executable, "-m", "gateway", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    for flag in (a for a in container["command"] if a.startswith("--")):
        assert flag in help_text, flag
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    command = " ".join(container["command"])
    assert f"0.0.0.0:{ports['http']}" in command and f"0.0.0.0:{ports['admin']}" in command
    assert f"--listen-tls 0.0.0.0:{ports['https']}" in command
    svc_ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert svc_ports == {80: "http", 443: "https"}
    assert "--https-redirect-port 443" in command  # redirects name the Service's port
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # the TLS key files, with a read-only root filesystem
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ports["admin"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # SIGTERM drains, then stops: the kubelet must not kill the pod before both are over
    from gateway.__main__ import parse_args
    args = parse_args(container["command"][3:])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > args.shutdown_delay + args.shutdown_grace


def test_ingress_class_names_our_controller():
    (cls,) = objects("ingressclass.yaml")
    help_text = subprocess.run([sys.executable, "-m", "gateway", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    assert cls["spec"]["controller"] == "amcs.dev/gateway" and "amcs.dev/gateway" in help_text
