"""The gateway's shared vocabulary (Envoy's model): listener -> route -> backend -> endpoint.

Three parts meet here, each owning its own modules:
* routing (gateway/routing/): Ingress objects + annotations -> a `RouteTable` (pure);
* upstream (gateway/upstream/): endpoints of every member cluster, their health and
  outlier state, load balancing -> `ClusterManager.pick()`;
* data path (gateway/proxy/): the HTTP/1.1 proxy that asks the table where a request
  goes, asks the cluster manager for an endpoint, forwards, retries, mirrors.
Only plain data and two small base classes live here, so each part is testable alone.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from mypy_extensions import mypyc_attr

# -- where traffic goes ---------------------------------------------------------------


@dataclass(frozen=True)
class BackendRef:
    """A logical backend: one Service port across every member cluster (namespace sameness).

    `subset` narrows it to pods carrying all these labels (MSE service-subset/subset-labels;
    fail-open: an empty subset means the whole Service). `cluster` narrows it to one member
    cluster ("the same Service, but only cluster X"). Endpoints carry the synthetic label
    `topology.istio.io/cluster=<cluster>` too, so subsets can select a cluster.
    """

    namespace: str
    service: str
    port: int | str  # the Service port: number or name
    subset: tuple[tuple[str, str], ...] = ()
    cluster: str | None = None

    # Written out rather than left to @dataclass, whose generated methods stay Python
    # functions in the compiled module: a big fleet's rebuild looks up every backend a few
    # times (gateway/upstream/manager.py `sync`), and these run natively.
    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, BackendRef):
            return NotImplemented
        return (self.service == other.service and self.namespace == other.namespace
                and self.port == other.port and self.subset == other.subset
                and self.cluster == other.cluster)

    def __hash__(self) -> int:
        return hash((self.namespace, self.service, self.port, self.subset, self.cluster))

    def __str__(self) -> str:
        extra = f"[{self.cluster}]" if self.cluster else ""
        if self.subset:
            extra += "{" + ",".join(f"{k}={v}" for k, v in self.subset) + "}"
        return f"{self.namespace}/{self.service}:{self.port}{extra}"


CLUSTER_LABEL = "topology.istio.io/cluster"


@dataclass(frozen=True)
class HealthCheckPolicy:
    """Active HTTP health checks (Envoy HealthCheck semantics; one success marks a new host healthy)."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expected_statuses: tuple[int, ...] = (200,)
    host: str | None = None  # Host header; default: the Service's name
    tls: bool = False  # over TLS, unverified (the Ingress says backend-protocol: HTTPS)
    tls_profile: Any = None  # over TLS as the Ingress's proxy-ssl-* say (an UpstreamTLS)


@dataclass(frozen=True)
class OutlierPolicy:
    """Passive outlier detection, Envoy's defaults."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_gateway_failure: int = 0  # percent
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    #: Envoy's always_eject_one_host: one endpoint may be ejected whatever
    #: max_ejection_percent says (a small backend otherwise ejects none), never the last.
    always_eject_one_host: bool = False
    interval: float = 10.0


LbAlgorithm = Literal["round_robin", "least_conn", "random", "hash", "ewma"]


@dataclass(frozen=True)
class BackendPolicy:
    """How one backend's endpoints are chosen and watched (from the Ingress's annotations)."""

    algorithm: LbAlgorithm = "round_robin"
    hash_by: str | None = None  # nginx upstream-hash-by: $request_uri, $host, $remote_addr, $http_x, $arg_x
    #: Per-cluster weights, independent of pod counts; empty: follow the endpoints (pod counts).
    cluster_weights: Mapping[str, int] = field(default_factory=dict)
    #: Priority pools, highest first: a lower pool gets traffic only when the pools above have
    #: no healthy endpoint (or, with graded spill-over, by Envoy's priority-load formula).
    priority_pools: tuple[tuple[str, ...], ...] = ()
    graded_spillover: bool = False
    overprovisioning_factor: float = 1.4
    panic_threshold: float = 50.0  # percent; 0 disables panic
    health_check: HealthCheckPolicy | None = None
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)


# -- per-request decisions -----------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """In-request fallback (nginx proxy-next-upstream*, Envoy RetryPolicy)."""

    attempts: int = 3  # total tries including the first (nginx proxy-next-upstream-tries)
    per_try_timeout: float | None = None  # seconds; None: the read timeout
    on_error: bool = True  # connect failure, reset before any response byte
    on_timeout: bool = True
    on_statuses: tuple[int, ...] = ()  # e.g. (502, 503, 504), configurable
    non_idempotent: bool = False  # retry POST/PATCH/LOCK even after the request left
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    prefer_other_cluster: bool = True


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    send: float = 60.0
    read: float = 60.0
    total: float | None = None  # MSE `timeout`: the whole request, retries included


@dataclass(frozen=True)
class MirrorPolicy:
    """Fire-and-forget copy of the request: to a Service backend or to a URL."""

    backend: BackendRef | None = None
    url: str | None = None  # nginx mirror-target, e.g. "http://127.0.0.1:9000$request_uri"
    percentage: float = 100.0
    host: str | None = None  # Host for the mirror; default: original host + "-shadow"
    shadow_suffix: bool = True
    request_body: bool = True
    tls: bool = False  # a backend copy over TLS (the route's backend-protocol HTTPS)
    tls_profile: Any = None  # and the route's proxy-ssl-* (an UpstreamTLS)


@dataclass(frozen=True)
class Redirect:
    """A response the gateway gives itself instead of proxying."""

    status: int  # 300-303, 307 or 308
    location: str


@dataclass(frozen=True)
class SessionAffinity:
    """ingress-nginx cookie affinity: a request carrying the cookie goes back to its endpoint.

    Parsed per Ingress by gateway/routing/affinity.py; each RouteDecision gets its own copy
    with `path` defaulted to the rule's path and `backend_tag` naming the decision's backend.
    """

    cookie: str = "INGRESSCOOKIE"
    path: str | None = None  # Set-Cookie Path; None: the matched Ingress path
    max_age: int | None = None  # seconds (session-cookie-max-age)
    expires: int | None = None  # seconds from now (session-cookie-expires)
    samesite: str | None = None  # None, Lax, Strict
    secure: bool | None = None  # session-cookie-secure; None: Secure over HTTPS (ingress-nginx)
    persistent: bool = False  # affinity-mode: persistent (never rebalanced) vs balanced
    change_on_failure: bool = False  # session-cookie-change-on-failure
    domain: str | None = None  # Set-Cookie Domain (session-cookie-domain); None: host-only
    #: Which backend issues the cookie (8 hex chars, routing.affinity.backend_tag): the
    #: cookie carries it, so a request can be sent back to the side (main line or canary,
    #: weighted destination) that pinned it before the canary rules run.
    backend_tag: str = ""


@dataclass(frozen=True)
class UpstreamTLS:
    """TLS to the pods set by ingress-nginx's proxy-ssl-* annotations (with backend-protocol
    HTTPS): the trust anchors and client certificate come from a Secret in the hub, read
    when connections are made (gateway/upstream_tls.py). The pool keeps connections of each
    profile apart: (ip, port, profile) is their key."""

    secret: tuple[str, str]  # namespace, name: ca.crt, and tls.crt + tls.key to present
    verify: bool = False  # proxy-ssl-verify: check the pod's certificate against ca.crt
    #: The name checked in the pod's certificate (proxy-ssl-name, else the Service's
    #: `<service>.<namespace>.svc`), and sent as SNI when `sni` (proxy-ssl-server-name).
    server_name: str = ""
    named: bool = False  # server_name is proxy-ssl-name's (else bound to each backend)
    sni: bool = False
    min_version: str = "TLSv1"  # proxy-ssl-protocols, as a range (ssl.TLSVersion names)
    max_version: str = "TLSv1_2"
    ciphers: str = "DEFAULT"  # proxy-ssl-ciphers (OpenSSL's syntax)
    #: Why the routes answer 503 instead (a Secret in another namespace, a bad reference).
    broken: str | None = None


@dataclass(frozen=True)
class RouteDecision:
    """Where one request goes, and how (the routing part's answer to the data path)."""

    backend: BackendRef
    #: For metrics and /routes: "<ns>/<ingress>|<host><path>" of the matched rule.
    route_name: str
    #: Backends to fall back to when `backend` has no usable endpoint (canary -> main line).
    fallbacks: tuple[BackendRef, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    mirrors: tuple[MirrorPolicy, ...] = ()
    upstream_host: str | None = None  # nginx upstream-vhost
    canary: bool = False
    #: Extra request headers to set upstream (MSE request-header-control), name -> value.
    set_headers: tuple[tuple[str, str], ...] = ()
    #: The request-target sent upstream when `rewrite-target` changed it (path plus "?query").
    path: str | None = None
    #: Answer with this redirect instead of proxying (app-root, permanent-/temporal-redirect).
    redirect: Redirect | None = None
    #: Cookie session affinity (ingress-nginx `affinity: cookie`); None: no affinity.
    affinity: SessionAffinity | None = None
    #: ingress-nginx `custom-http-errors`: an upstream answer with one of these statuses is
    #: not forwarded; `error_page` is asked instead. Empty: nothing is intercepted.
    error_codes: frozenset[int] = frozenset()
    #: The request for the error page: to the Ingress's `default-backend` (also the last of
    #: `fallbacks`), with its static `X-Namespace`/`X-Ingress-Name`/`X-Service-*` headers as
    #: `set_headers` (gateway/routing/errors.py). None: no default-backend annotation.
    error_page: RouteDecision | None = None
    #: The Ingress's `default-backend` when it is one of `fallbacks` (the last): a request
    #: pinned by strict-cluster-routing keeps this one fallback.
    default_backend: BackendRef | None = None
    #: Answer with this status instead of proxying (403: allowlist-source-range); 0: proxy.
    deny: int = 0
    #: proxy-body-size: a longer request body gets 413; 0: no limit; -1: Limits.max_request_body.
    max_body: int = -1
    #: enable-cors: a gateway.routing.cors.CorsPolicy (its `headers(origin, preflight)`).
    cors: Any = None
    #: limit-rps/-rpm/-connections: a gateway.routing.ratelimit.RateLimit (its `admit` and
    #: `release`), shared by the Ingress's rules; None: no limit.
    rate_limit: Any = None
    #: limit-rate / limit-rate-after: the response leaves at this many bytes a second after
    #: the first `send_rate_after` bytes (gateway/proxy/throttle.py); 0: no limit.
    send_rate: int = 0
    send_rate_after: int = 0
    #: auth-url: a gateway.routing.extauth.ExternalAuth, asked before proxying; None: no check.
    auth: Any = None
    #: backend-protocol HTTPS: TLS to the pods (ingress-nginx's defaults: no certificate
    #: check, no SNI); the pool keeps these connections apart (Endpoint.tls_key).
    upstream_tls: bool = False
    #: proxy-ssl-*: an UpstreamTLS (with `upstream_tls`); None: ingress-nginx's defaults.
    tls_profile: Any = None
    #: auth-type basic: a gateway.routing.basicauth.BasicAuth, checked before `auth`; None: no check.
    basic_auth: Any = None
    #: auth-tls-*: the host's gateway.routing.clientcert.ClientCertCheck, checked first
    #: (nginx checks the certificate as it reads the request head); None: no check.
    client_cert: Any = None
    #: enable-access-log: False keeps the rule's requests out of the access log.
    access_log: bool = True
    #: proxy-redirect-*, proxy-cookie-*: a gateway.routing.response_rewrite.ResponseRewriter
    #: (its `apply(parts)` on the response head's header list); None: headers pass as they are.
    response_rewrite: Any = None


class RequestView:
    """What routing may look at: the request head, already parsed by the data path.

    A plain class (not a dataclass): one is built per request, and its `__init__` then
    compiles with the data path."""

    __slots__ = ("method", "path", "host", "headers", "client_ip", "scheme", "via_proxy")

    def __init__(self, method: str, path: str, host: str, headers: Mapping[str, str],
                 client_ip: str = "", scheme: str = "http", via_proxy: bool = False) -> None:
        self.method = method
        self.path = path  # as received: path plus "?query"
        self.host = host  # lower-cased, ":port" stripped
        self.headers = headers  # lower-cased names; repeated headers joined with ", "
        #: The client's address (nginx's $remote_addr): the peer, the address of its PROXY
        #: protocol header, or behind a --trusted-proxy the one X-Forwarded-For names.
        self.client_ip = client_ip
        self.scheme = scheme  # the listener's: "http" or "https"
        #: The peer is a --trusted-proxy: its X-Forwarded-Proto/Host count.
        self.via_proxy = via_proxy

    def __repr__(self) -> str:
        return f"RequestView({self.method} {self.host}{self.path} from {self.client_ip or '-'})"


@mypyc_attr(allow_interpreted_subclasses=True)
class Router:
    """Where a request goes (`gateway.routing.RouteTable`; tests have their own). A base
    class, not a Protocol, for the reason `ClusterManager` gives."""

    def route(self, request: RequestView) -> RouteDecision | None:
        """None: no rule matches (404)."""
        raise NotImplementedError


# -- endpoints and their state ------------------------------------------------------------


#: load-balance ewma's time constant, seconds (ingress-nginx's and Finagle's DECAY_TIME).
EWMA_DECAY: Final = 10.0
#: A failed attempt (refused, reset, timed out) counts as a sample at least this long, so a
#: failing pod looks slow to ewma before outlier detection ejects it.
EWMA_FAILURE: Final = 1.0


@dataclass(eq=False)
class Endpoint:
    """One pod address of a backend, in one member cluster, with its health state."""

    cluster: str
    ip: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True  # EndpointSlice condition
    #: Active health check verdict: None until the first check ran (or no checks configured).
    healthy: bool | None = None
    ejected_until: float = 0.0  # outlier ejection (time.monotonic())
    active_requests: int = 0
    #: `address`, boxed once: compiled code boxes a tuple[str, int] for every dict lookup
    #: (the pool's idle connections are found by this key on every request).
    key: Any = field(default=None, init=False, repr=False)
    #: The pool's key for TLS connections to it (backend-protocol HTTPS), boxed once too.
    tls_key: Any = field(default=None, init=False, repr=False)
    #: load-balance ewma: the peak EWMA of the time to this pod's response heads (seconds),
    #: when it was last fed (time.monotonic()), and whether a backend balancing by it holds
    #: the pod (only then does the data path time its attempts).
    ewma: float = field(default=0.0, init=False, repr=False)
    ewma_at: float = field(default=0.0, init=False, repr=False)
    ewma_on: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.key = (self.ip, self.port)
        self.tls_key = (self.ip, self.port, "tls")
        self.ewma = self.ewma_at = 0.0  # (init=False fields: compiled, set here)
        self.ewma_on = False

    def observe(self, seconds: float, now: float) -> None:
        """One attempt's time to a response head (or to its failure): peak EWMA, as Finagle's
        and ingress-nginx's `ewma`: a slower sample counts at once, a faster one decays in."""
        if seconds >= self.ewma:
            self.ewma = seconds
        else:
            w = math.exp((self.ewma_at - now) / EWMA_DECAY)
            self.ewma = self.ewma * w + seconds * (1.0 - w)
        self.ewma_at = now

    def ewma_now(self, now: float) -> float:
        """The EWMA decayed to `now`: a pod that was slow and got no traffic since is tried
        again."""
        return self.ewma * math.exp((self.ewma_at - now) / EWMA_DECAY)

    def ewma_cost(self, now: float) -> float:
        """What load-balance ewma compares: `ewma_now` times the requests in flight plus one."""
        return self.ewma_now(now) * (self.active_requests + 1)

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)


_POD_TLS: list[ssl.SSLContext] = []


def pod_tls_context() -> ssl.SSLContext:
    """The one client context for TLS to the pods (backend-protocol HTTPS): the proxy, its
    mirror copies and the health checks. No certificate check and (callers pass
    server_hostname="") no SNI: ingress-nginx's proxy_ssl_verify/proxy_ssl_server_name
    defaults. Made on first use."""
    if not _POD_TLS:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _POD_TLS.append(ctx)
    return _POD_TLS[0]


Outcome = Literal["success", "http_5xx", "gateway_error", "connect_failure", "reset", "timeout"]


@mypyc_attr(allow_interpreted_subclasses=True)
class ClusterManager:
    """What the data path asks of the upstream side (`UpstreamManager`; tests have their own).

    A base class, not a Protocol: compiled callers then make native calls, where a call
    through a Protocol is a Python method lookup and an argument parse (about 0.8k
    instructions, paid by every request and every mirror copy).
    """

    def pick(
        self,
        backend: BackendRef,
        request: RequestView,
        *,
        exclude: frozenset[tuple[str, int]] = frozenset(),
        avoid_clusters: frozenset[str] = frozenset(),
        sticky: str | None = None,
    ) -> Endpoint | None:
        """An endpoint for this request; None when nothing is usable (503 no healthy upstream).

        `exclude`: addresses already tried by this request. `avoid_clusters`: clusters to
        avoid when another cluster has a usable endpoint (retries prefer another cluster).
        `sticky`: the request's affinity cookie value (only passed when the decision has
        `affinity`); when it names a usable endpoint of `backend` not in `exclude`, that
        endpoint wins over balancing.
        """
        raise NotImplementedError

    def sticky_cookie(
        self,
        backend: BackendRef,
        endpoint: Endpoint,
        affinity: SessionAffinity,
        *,
        current: str | None = None,
        retried: bool = False,
    ) -> str | None:
        """The affinity cookie value to set on the response `endpoint` (of `backend`, the one
        actually used, a fallback included) served; None: set no cookie (the request's
        `current` value still holds). `retried`: an earlier attempt of this request failed.
        """
        raise NotImplementedError

    def report(self, endpoint: Endpoint, outcome: Outcome, status: int | None = None) -> None:
        """The result of one attempt, for passive outlier detection."""
        raise NotImplementedError
