"""Rule-scoped annotations of a main Ingress: retries, timeouts, mirrors, Host rewrite,
request headers, path rewrite and redirects (HTTPS ones too), and our per-request cluster
routing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.types import BackendRef, MirrorPolicy, RetryPolicy, Timeouts, UpstreamTLS
from gateway.variables import unknown

from .allow import SourceRange, parse_source_range
from .basicauth import BasicAuth, parse_basic_auth
from .buffering import parse_size
from .clientcert import ClientCertPolicy, parse_client_cert
from .cors import CorsPolicy, parse_cors
from .extauth import ExternalAuth, parse_external_auth
from .policy import Context, check_cluster, https_backend
from .proxyssl import parse_proxy_ssl
from .ratelimit import RateLimitSettings, parse_rate_limit, parse_send_rate
from .response_rewrite import ResponseRewriter, parse_response_rewrite
from .rewrite import RewriteSettings, parse_rewrite
from .tls import SslRedirect, parse_ssl_redirect
from .values import Annotations, split_list
from .www import FROM_TO_WWW_KEY

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d{1,5})?$")
_NEXT_UPSTREAM = re.compile(r"^(error|timeout|invalid_header|non_idempotent|off|http_\d{3})$")
#: nginx proxy_next_upstream_tries 0 means "no limit"; we still bound it.
UNLIMITED_TRIES = 10


@dataclass(frozen=True)
class ClusterRouting:
    """Our per-request cluster pinning: header naming a cluster, or header=value rules."""

    header: str | None = None
    matches: tuple[tuple[str, str, str], ...] = ()  # (header, value, cluster), first wins
    strict: bool = False

    @property
    def active(self) -> bool:
        return self.header is not None or bool(self.matches)


@dataclass(frozen=True)
class RouteSettings:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    mirrors: tuple[MirrorPolicy, ...] = ()
    mirror_cluster: tuple[str, float] | None = None  # same Service, another cluster
    upstream_host: str | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    cluster_routing: ClusterRouting = field(default_factory=ClusterRouting)
    use_regex: bool = False
    rewrite: RewriteSettings = field(default_factory=RewriteSettings)
    ssl_redirect: SslRedirect = field(default_factory=SslRedirect)
    max_body: int = -1  # proxy-body-size in bytes; 0: no limit; -1: the gateway's own
    from_to_www: bool = False  # from-to-www-redirect (gateway/routing/www.py)
    source: SourceRange | None = None  # allow-/denylist-source-range (gateway/routing/allow.py)
    cors: CorsPolicy | None = None  # enable-cors (gateway/routing/cors.py)
    rate_limit: RateLimitSettings | None = None  # limit-rps etc. (gateway/routing/ratelimit.py)
    send_rate: tuple[int, int] = (0, 0)  # limit-rate, limit-rate-after: bytes/s, bytes
    auth: ExternalAuth | None = None  # auth-url etc. (gateway/routing/extauth.py)
    upstream_tls: bool = False  # backend-protocol HTTPS
    tls_profile: UpstreamTLS | None = None  # proxy-ssl-* (gateway/routing/proxyssl.py)
    basic_auth: BasicAuth | None = None  # auth-type basic (gateway/routing/basicauth.py)
    #: auth-tls-* (gateway/routing/clientcert.py): host-wide, the builder merges them.
    client_cert: ClientCertPolicy | None = None
    access_log: bool = True  # enable-access-log
    #: proxy-redirect-*, proxy-cookie-* (gateway/routing/response_rewrite.py)
    response_rewrite: ResponseRewriter | None = None


def _body_size(ann: Annotations) -> int:
    """proxy-body-size (nginx client_max_body_size): "8m", "512k", "0" for no limit."""
    found = ann.string("proxy-body-size")
    if found is None:
        return -1
    full, text = found
    size = parse_size(text)
    if size is None:
        ann.problem(full, f"{text!r} is not a size like '8m', '512k' or '0'; ignored")
        return -1
    return size


def parse_settings(ann: Annotations, ctx: Context) -> RouteSettings:
    found = ann.string("upstream-vhost")
    vhost = None
    if found is not None:
        if _HOSTPORT.match(found[1]):
            vhost = found[1]
        else:
            ann.problem(found[0], f"{found[1]!r} is not a host; ignored")
    return RouteSettings(
        retry=_retry(ann),
        timeouts=_timeouts(ann),
        mirrors=_mirrors(ann, ctx),
        mirror_cluster=_mirror_cluster(ann, ctx),
        upstream_host=vhost,
        set_headers=parse_header_control(ann),
        cluster_routing=_cluster_routing(ann, ctx),
        use_regex=bool(ann.boolean("use-regex")),
        rewrite=parse_rewrite(ann),
        ssl_redirect=parse_ssl_redirect(ann),
        max_body=_body_size(ann),
        from_to_www=bool(ann.boolean(FROM_TO_WWW_KEY)),
        source=parse_source_range(ann),
        cors=parse_cors(ann),
        rate_limit=parse_rate_limit(ann),
        send_rate=parse_send_rate(ann),
        auth=_external_auth(ann, ctx),
        upstream_tls=_backend_protocol(ann),
        tls_profile=parse_proxy_ssl(ann, ctx.namespace, https_backend(ann)),
        basic_auth=parse_basic_auth(ann, ctx.namespace),
        client_cert=parse_client_cert(ann, ctx.namespace),
        access_log=ann.boolean("enable-access-log") is not False,
        response_rewrite=parse_response_rewrite(ann),
    )


def _backend_protocol(ann: Annotations) -> bool:
    """backend-protocol: True for HTTPS (TLS to the pods). GRPC, GRPCS, FCGI and AJP need
    more than HTTP/1.1: reported, and the rule is proxied as HTTP."""
    found = ann.string("backend-protocol")
    if found is None:
        return False
    value = found[1].upper()
    if value in ("GRPC", "GRPCS", "FCGI", "AJP"):
        ann.problem(found[0], f"{found[1]} backends are not supported (HTTP/1.1 and HTTPS "
                    "only); proxied as HTTP")
    elif value not in ("HTTP", "HTTPS", "AUTO_HTTP"):
        ann.problem(found[0], f"{found[1]!r} is not a backend protocol (HTTP, HTTPS); ignored")
    return https_backend(ann)


def _external_auth(ann: Annotations, ctx: Context) -> ExternalAuth | None:
    """The Ingress's own auth-url check, else the gateway-wide one unless the Ingress opts
    out (ingress-nginx's shouldApplyGlobalAuth)."""
    own = parse_external_auth(ann, ctx.namespace, ctx.configmap)
    enabled = ann.boolean("enable-global-auth")
    if own is not None or enabled is False:
        return own
    return ctx.auth.check


def _retry(ann: Annotations) -> RetryPolicy:
    kwargs: dict = {}
    found = ann.string("proxy-next-upstream")
    if found is not None:
        full, text = found
        tokens = text.replace(",", " ").split()
        bad = [t for t in tokens if not _NEXT_UPSTREAM.match(t)]
        if bad:
            ann.problem(full, f"unknown condition(s) {', '.join(bad)}; ignored")
        elif "off" in tokens:
            kwargs["attempts"] = 1
        else:
            kwargs["on_error"] = "error" in tokens or "invalid_header" in tokens
            kwargs["on_timeout"] = "timeout" in tokens
            kwargs["non_idempotent"] = "non_idempotent" in tokens
            kwargs["on_statuses"] = {int(t[5:]) for t in tokens if t.startswith("http_")}
    tries = ann.integer("proxy-next-upstream-tries", low=0, high=100)
    if tries is not None and kwargs.get("attempts") != 1:
        kwargs["attempts"] = tries if tries > 0 else UNLIMITED_TRIES
    per_try = ann.seconds("proxy-next-upstream-timeout", allow_zero=True)
    if per_try:
        kwargs["per_try_timeout"] = per_try
    found = ann.string("retry-on-status")
    if found is not None:
        codes = split_list(found[1])
        if all(c.isdigit() and 400 <= int(c) <= 599 for c in codes) and codes:
            kwargs["on_statuses"] = set(kwargs.get("on_statuses", ())) | {int(c) for c in codes}
        else:
            ann.problem(found[0], f"{found[1]!r}: expected status codes 400-599 like "
                        "'502,503,504'; ignored")
    prefer = ann.boolean("retry-prefer-other-cluster")
    if prefer is not None:
        kwargs["prefer_other_cluster"] = prefer
    if "on_statuses" in kwargs:
        kwargs["on_statuses"] = tuple(sorted(kwargs["on_statuses"]))
    return RetryPolicy(**kwargs)


def _timeouts(ann: Annotations) -> Timeouts:
    kwargs: dict = {}
    for key, attr in (("proxy-connect-timeout", "connect"), ("proxy-send-timeout", "send"),
                      ("proxy-read-timeout", "read")):
        value = ann.seconds(key)
        if value is not None:
            kwargs[attr] = value
    total = ann.seconds("timeout", allow_zero=True)
    if total:
        kwargs["total"] = total
    return Timeouts(**kwargs)


def _mirrors(ann: Annotations, ctx: Context) -> tuple[MirrorPolicy, ...]:
    mirrors: list[MirrorPolicy] = []
    found = ann.string("mirror-target")
    if found is not None:
        full, url = found
        parts = urlsplit(url.split("$", 1)[0])
        why = unknown(url)
        if why is not None:
            ann.problem(full, f"{why}; ignored")
        elif parts.scheme in ("http", "https") and parts.hostname:
            host = parts.netloc
            custom = ann.string("mirror-host")
            if custom is not None:
                if _HOSTPORT.match(custom[1]):
                    host = custom[1]
                else:  # ingress-nginx: an invalid mirror-host falls back to the default
                    ann.problem(custom[0], f"{custom[1]!r} is not a host; the target's is used")
            body = ann.lookup("mirror-request-body")
            mirrors.append(MirrorPolicy(url=url, host=host, shadow_suffix=False,
                                        request_body=body is None or body[1].strip() != "off"))
        else:
            ann.problem(full, f"{url!r} is not an http(s) URL; ignored")
    service_mirror = _mirror_service(ann, ctx)
    if service_mirror is not None:
        mirrors.append(service_mirror)
    return tuple(mirrors)


def _mirror_service(ann: Annotations, ctx: Context) -> MirrorPolicy | None:
    found = ann.string("mirror-target-service")
    if found is None:
        return None
    full, text = found
    ref = parse_service_ref(text, ctx)
    if isinstance(ref, str):
        ann.problem(full, ref + "; ignored")
        return None
    percentage = 100.0
    pct = ann.integer("mirror-percentage", low=0)
    if pct is not None:
        percentage = float(min(pct, 100))  # Higress: >= 100 means all
    return MirrorPolicy(backend=ref, percentage=percentage)


def backend_ref(backend: Any, ctx: Context) -> BackendRef | str:
    """An Ingress backend (`service.name` + `service.port.number|name`) as a BackendRef, or
    why it cannot be served."""
    if not isinstance(backend, dict):
        return "missing backend"
    if backend.get("resource"):
        return "resource backends are not supported (Service backends only)"
    svc = backend.get("service") or {}
    name, port = svc.get("name"), svc.get("port") or {}
    if not name:
        return "backend has no service name"
    if isinstance(port.get("number"), int) and 0 < port["number"] < 65536:
        return BackendRef(ctx.namespace, name, port["number"])
    if port.get("name"):
        return BackendRef(ctx.namespace, name,
                          resolve_port(ctx, ctx.namespace, name, str(port["name"])))
    return "backend service port needs a number (1-65535) or a name"


def parse_service_ref(text: str, ctx: Context) -> BackendRef | str:
    """MSE `[<ns>/]<name>[:<port>]` (ns: the Ingress's; port: the Service's first)."""
    nsname, _, port_text = text.partition(":")
    ns, slash, name = nsname.partition("/")
    if not slash:
        ns, name = ctx.namespace, nsname
    if not ns or not name or "/" in name:
        return f"{text!r}: expected [<namespace>/]<service>[:<port>]"
    if port_text:
        port: int | str = int(port_text) if port_text.isdigit() else port_text
        return BackendRef(ns, name, resolve_port(ctx, ns, name, port))
    first = first_port(ctx, ns, name)
    if first is None:
        return f"{text!r}: no port given and Service {ns}/{name} is not known"
    return BackendRef(ns, name, first)


def first_port(ctx: Context, ns: str, name: str) -> int | None:
    svc = (ctx.services or {}).get((ns, name))
    ports = ((svc or {}).get("spec") or {}).get("ports") or []
    return ports[0].get("port") if ports else None


def resolve_port(ctx: Context, ns: str, name: str, port: int | str) -> int | str:
    """A named Service port as its number when the Service is known (one BackendRef per port)."""
    if isinstance(port, int):
        return port
    svc = (ctx.services or {}).get((ns, name))
    for item in ((svc or {}).get("spec") or {}).get("ports") or []:
        if item.get("name") == port and isinstance(item.get("port"), int):
            return item["port"]
    return port


def _mirror_cluster(ann: Annotations, ctx: Context) -> tuple[str, float] | None:
    found = ann.string("mirror-cluster")
    if found is None or not check_cluster(ann, found[0], found[1], ctx):
        return None
    pct = ann.number("mirror-cluster-percentage", low=0.0, high=100.0)
    return found[1], 100.0 if pct is None else pct


def parse_header_control(ann: Annotations) -> tuple[tuple[str, str], ...]:
    """MSE request-header-control-add/-update ("<name> <value>" per line), both as "set"."""
    headers: dict[str, str] = {}
    for key in ("request-header-control-add", "request-header-control-update"):
        found = ann.string(key)
        if found is None:
            continue
        parsed: dict[str, str] = {}
        for line in found[1].splitlines():
            if not line.strip():
                continue
            name, _, value = line.strip().partition(" ")
            if not _TOKEN.match(name) or not value.strip():
                ann.problem(found[0], f"line {line.strip()!r}: expected '<header> <value>'; "
                            "ignored")
                parsed = {}
                break
            parsed[name.lower()] = value.strip()
        headers.update(parsed)
    return tuple(headers.items())


def _cluster_routing(ann: Annotations, ctx: Context) -> ClusterRouting:
    header = None
    found = ann.string("cluster-header")
    if found is not None:
        if _TOKEN.match(found[1]):
            header = found[1].lower()
        else:
            ann.problem(found[0], f"{found[1]!r} is not a header name; ignored")
    matches: list[tuple[str, str, str]] = []
    found = ann.string("cluster-header-match")
    if found is not None:
        for rule in split_list(found[1]):
            cond, colon, cluster = rule.rpartition(":")
            name, eq, value = cond.partition("=")
            if not colon or not eq or not _TOKEN.match(name.strip()) or not value.strip():
                ann.problem(found[0], f"rule {rule!r}: expected <header>=<value>:<cluster>; "
                            "ignored")
                matches = []
                break
            if not check_cluster(ann, found[0], cluster.strip(), ctx):
                matches = []
                break
            matches.append((name.strip().lower(), value.strip(), cluster.strip()))
    routing = ClusterRouting(header, tuple(matches), bool(ann.boolean("strict-cluster-routing")))
    if routing.active and not ctx.clusters:
        ann.problem(OURS_CLUSTER_HEADER, "no member clusters are known, so no header can "
                    "name one; cluster routing has no effect")
    return routing


OURS_CLUSTER_HEADER = "multicluster.amcs.dev/cluster-header"
