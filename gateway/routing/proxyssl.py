"""ingress-nginx's proxy-ssl-* annotations -> an UpstreamTLS profile (gateway/types.py).

As ingress-nginx's proxyssl parser: nothing applies without `proxy-ssl-secret` (the others
are then reported and ignored); the Secret must be in the Ingress's namespace, else its
routes are denied (503); a bad verify, server-name, ciphers or protocols value falls back to
the default. They only matter with `backend-protocol: HTTPS`, which is reported otherwise.
"""

from __future__ import annotations

import re
from dataclasses import replace

from gateway.types import BackendRef, UpstreamTLS

from .matching import host_error
from .values import Annotations, object_ref

PROXY_SSL_KEYS = ("proxy-ssl-secret", "proxy-ssl-verify", "proxy-ssl-verify-depth",
                  "proxy-ssl-name", "proxy-ssl-server-name", "proxy-ssl-ciphers",
                  "proxy-ssl-protocols")
_CIPHERS = re.compile(r"^[A-Za-z0-9+:_\-!]+$")
#: nginx's protocol names, in order, as ssl.TLSVersion names (SSLv2 has none).
_PROTOCOLS = {"SSLv3": "SSLv3", "TLSv1": "TLSv1", "TLSv1.1": "TLSv1_1", "TLSv1.2": "TLSv1_2",
              "TLSv1.3": "TLSv1_3"}
_ORDER = list(_PROTOCOLS.values())


def parse_proxy_ssl(ann: Annotations, namespace: str, https: bool) -> UpstreamTLS | None:
    found = ann.string("proxy-ssl-secret")
    if found is None:
        ann.orphans(PROXY_SSL_KEYS[1:], "proxy-ssl-secret")
        return None
    if not https:
        ann.problem(found[0], "has no effect without backend-protocol: HTTPS")
    ref = object_ref(found[1], namespace)
    broken = None
    if ref is None:
        ann.problem(found[0], f"{found[1]!r} is not a Secret name (name or namespace/name); "
                    "the routes of this Ingress answer 503")
        broken, ref = "proxy-ssl-secret is not a Secret name", ("", "")
    elif ref[0] != namespace:
        ann.problem(found[0], "a Secret in another namespace is not allowed (ingress-nginx: "
                    "cross namespace secrets are not supported); the routes answer 503")
        broken = "proxy-ssl-secret is in another namespace"
    verify = _on_off(ann, "proxy-ssl-verify")
    depth = ann.integer("proxy-ssl-verify-depth", low=0)
    if depth is not None and verify:
        ann.problem(ann.full_key("proxy-ssl-verify-depth"), "the chain's depth is not limited "
                    "(Python's ssl cannot): a chain of any length to ca.crt is accepted")
    low, high = _protocols(ann)
    name = _server_name(ann)
    return UpstreamTLS(secret=ref, verify=verify, server_name=name, named=bool(name), sni=_on_off(ann, "proxy-ssl-server-name"),
                       min_version=low, max_version=high, ciphers=_ciphers(ann), broken=broken)


def bind_server_name(profile: UpstreamTLS | None, ref: BackendRef) -> UpstreamTLS | None:
    """The profile a route to `ref` uses: without proxy-ssl-name the pod's certificate is
    checked for the Service's name (nginx's default, the upstream block's name
    `upstream_balancer` in ingress-nginx, could never be in a real certificate)."""
    if profile is None or profile.named:
        return profile
    return replace(profile, server_name=f"{ref.service}.{ref.namespace}.svc")


def _on_off(ann: Annotations, key: str) -> bool:
    found = ann.string(key)
    if found is None:
        return False
    if found[1] not in ("on", "off"):
        ann.problem(found[0], f"{found[1]!r} is not on or off; off")
        return False
    return found[1] == "on"


def _server_name(ann: Annotations) -> str:
    found = ann.string("proxy-ssl-name")
    if found is None:
        return ""
    name = found[1].strip().lower()
    why = host_error(name) if name else "is empty"
    if why is None and name.startswith("*."):
        why = "a wildcard is not a server name"
    if why is not None:
        ann.problem(found[0], f"{found[1]!r}: {why}; the Service's name is used")
        return ""
    return name


def _ciphers(ann: Annotations) -> str:
    found = ann.string("proxy-ssl-ciphers")
    if found is None:
        return "DEFAULT"
    if not _CIPHERS.match(found[1]):
        ann.problem(found[0], f"{found[1]!r} is not an OpenSSL cipher list; DEFAULT")
        return "DEFAULT"
    return found[1]


def _protocols(ann: Annotations) -> tuple[str, str]:
    """The lowest and highest protocol named (OpenSSL sets a range; nginx's list with a gap
    in it, which nobody means, is read as the range around it)."""
    found = ann.string("proxy-ssl-protocols")
    if found is None:
        return "TLSv1", "TLSv1_2"
    named = [_PROTOCOLS[t] for t in found[1].split() if t in _PROTOCOLS]
    unknown = [t for t in found[1].split() if t not in _PROTOCOLS]
    if unknown:
        ann.problem(found[0], f"{', '.join(unknown)}: not a protocol this gateway can use "
                    "(TLSv1, TLSv1.1, TLSv1.2, TLSv1.3); left out")
    if not named:
        return "TLSv1", "TLSv1_2"
    ordered = sorted(named, key=_ORDER.index)
    return ordered[0], ordered[-1]
