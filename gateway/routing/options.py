"""What a route-table build needs besides the Ingresses: the gateway's flags and the state
it keeps from one build to the next (gateway/routing/build.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from .extauth import AuthScope, ConfigMapLookup
from .ratelimit import RateZones
from .reuse import Reuse


@dataclass(frozen=True)
class BuildOptions:
    #: Ingresses of this IngressClass, or of a class naming this controller, are ours.
    class_name: str = "amcs"
    controller: str = "amcs.dev/gateway"
    #: Serve Ingresses with no class even without a default IngressClass (ingress-nginx's
    #: --watch-ingress-without-class).
    accept_classless: bool = False
    #: Member cluster names: our cluster annotations are checked against them, and header
    #: routing only pins known clusters.
    clusters: frozenset[str] = frozenset()
    #: Services by (namespace, name), to resolve named and default ports.
    services: Mapping[tuple[str, str], dict] | None = None
    #: These drive `ssl-redirect` (on plain HTTP requests): the hosts with a certificate
    #: (gateway/tls.py) and the port redirects name (None: 443).
    tls_hosts: Collection[str] = ()
    https_port: int | None = None
    #: "namespace/name" of --default-backend-service: it answers requests no rule matches and
    #: serves the custom-http-errors pages of Ingresses without their own default-backend.
    default_backend: str | None = None
    #: The rate-limit counters, kept from one build to the next (a fresh set when None).
    rate_zones: RateZones | None = None
    #: The gateway-wide auth check and the paths exempt from checks (global-auth-*,
    #: no-auth-locations; default: none and ingress-nginx's).
    auth_scope: AuthScope = field(default_factory=AuthScope)
    #: Finds the hub's ConfigMaps by (namespace, name) (auth-proxy-set-headers).
    configmap: ConfigMapLookup | None = None
    #: --enable-ssl-passthrough (without it the annotation is reported).
    ssl_passthrough: bool = False
    #: Each Ingress's parse and each backend's policy, kept from one build to the next so a
    #: rebuild parses only what changed (gateway/routing/reuse.py; None: all made anew).
    reuse: Reuse | None = None
