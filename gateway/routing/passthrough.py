"""ingress-nginx `ssl-passthrough` (needs the gateway's `--enable-ssl-passthrough`): TLS
connections whose server name is a rule host of such an Ingress are not terminated but
spliced to the backend of that host's `/` path (gateway/proxy/passthrough.py). As in
ingress-nginx, it works on TCP, so the host's other paths and the Ingress's other
annotations do not apply to those connections; plain HTTP to the host is served as usual.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.types import BackendRef

from .values import Annotations

KEY = "ssl-passthrough"


def passthrough_key(ann: Annotations) -> str | None:
    """The annotation's full key when it turns passthrough on (None: off or absent)."""
    if not ann.boolean(KEY):
        return None
    return (ann.lookup(KEY) or (KEY, ""))[0]


def collect_passthrough(full: str, rules: list[tuple[str, str, str, BackendRef]],
                        enabled: bool, into: dict[str, tuple[str, BackendRef]], ingress: str,
                        problem: Callable[[str, str, str], None]) -> None:
    """Add the hosts of an Ingress whose annotation `full` is on to `into` (host -> (Ingress,
    backend); the oldest Ingress keeps a host); `problem(Ingress, message, annotation)`
    reports what is not taken."""
    if not enabled:
        problem(ingress, "needs the gateway's --enable-ssl-passthrough; ignored", full)
        return
    for host, path, _, ref in rules:
        if not host or host.startswith("*."):
            problem(ingress, f"{host or '*'}: a passthrough host must be a full name (TLS SNI); "
                    "served as usual", full)
        elif path != "/":
            problem(ingress, f"{host}{path}: only a host's '/' path is passed through (TCP); "
                    "served as usual on plain HTTP", full)
        elif host in into and into[host][0] != ingress:
            problem(ingress, f"{host} is already passed through by {into[host][0]} (the oldest "
                    "Ingress wins)", full)
        else:
            into.setdefault(host, (ingress, ref))
