"""Cookie session affinity (ingress-nginx `affinity: cookie`), pure parts: the annotation
parser, the cookie value format, the canary affinity steps, the endpoint index (persistent
vs balanced, pools and weights), the cookie a response gets, and the Set-Cookie line."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter

import pytest

from gateway.proxy.affinity import request_cookie, set_cookie_header
from gateway.routing.affinity import (
    StickyValue,
    affinity_side,
    backend_tag,
    bind_affinity,
    canary_affinity,
    decode_sticky,
    endpoint_key,
    parse_affinity_annotations,
    read_sticky_cookie,
)
from gateway.types import BackendPolicy, BackendRef, Endpoint, RequestView, SessionAffinity
from gateway.upstream.affinity import StickyIndex, index_of, sticky_cookie, sticky_endpoint
from gateway.upstream.balancer import Balancer

N = "nginx.ingress.kubernetes.io/"
M = "mse.ingress.kubernetes.io/"
ON = {N + "affinity": "cookie"}
WEB = BackendRef("demo", "web", 80)
CANARY = BackendRef("demo", "web", 80, cluster="b")


def eps(cluster: str, n: int, start: int = 0) -> list[Endpoint]:
    net = {"a": 1, "b": 2, "c": 3}[cluster]
    return [Endpoint(cluster, f"10.{net}.0.{i + 1}", 8080) for i in range(start, start + n)]


# ---------------------------------------------------------------------- annotations

D = SessionAffinity()
PARSE_CASES = [
    ({}, None, []),
    (ON, D, []),
    ({M + "affinity": "cookie"}, D, []),  # MSE accepts the nginx annotations under mse. too
    ({**ON, N + "affinity-mode": "persistent", N + "session-cookie-name": "route",
      N + "session-cookie-path": "/app", N + "session-cookie-domain": ".example.com",
      N + "session-cookie-max-age": "3600", N + "session-cookie-expires": "172800",
      N + "session-cookie-samesite": "strict", N + "session-cookie-secure": "true",
      N + "session-cookie-change-on-failure": "true"},
     SessionAffinity(cookie="route", path="/app", domain=".example.com", max_age=3600,
                    expires=172800, samesite="Strict", secure=True, persistent=True,
                    change_on_failure=True), []),
    ({**ON, N + "session-cookie-name": "a", M + "session-cookie-name": "b"},
     SessionAffinity(cookie="a"), []),  # nginx. first
    ({N + "affinity": "Cookie"}, None, [N + "affinity"]),  # case-sensitive, as ingress-nginx
    ({N + "affinity": "ip"}, None, [N + "affinity"]),
    ({**ON, N + "affinity-mode": "sticky"}, D, [N + "affinity-mode"]),
    ({**ON, N + "session-cookie-name": "bad name;"}, D, [N + "session-cookie-name"]),
    ({**ON, N + "session-cookie-name": "a/b"}, D, [N + "session-cookie-name"]),
    ({**ON, N + "session-cookie-path": "app"}, D, [N + "session-cookie-path"]),
    ({**ON, N + "session-cookie-path": "/a(.*)"}, D, [N + "session-cookie-path"]),
    ({**ON, N + "session-cookie-max-age": "-1"}, D, [N + "session-cookie-max-age"]),
    ({**ON, N + "session-cookie-expires": "1.5"}, D, [N + "session-cookie-expires"]),
    ({**ON, N + "session-cookie-max-age": "0"}, SessionAffinity(max_age=0), []),
    ({**ON, N + "session-cookie-samesite": "sometimes"}, D, [N + "session-cookie-samesite"]),
    ({**ON, N + "session-cookie-secure": "yes"}, D, [N + "session-cookie-secure"]),
    ({**ON, N + "session-cookie-domain": "a b"}, D, [N + "session-cookie-domain"]),
    ({**ON, N + "session-cookie-name": ""}, D, [N + "session-cookie-name"]),
    # Configured but not enabled: reported (ingress-nginx is silent), nothing applied.
    ({N + "session-cookie-name": "route", N + "affinity-mode": "persistent"}, None,
     [N + "affinity-mode", N + "session-cookie-name"]),
    ({**ON, N + "affinity-canary-behavior": "legacy"}, D, [N + "affinity-canary-behavior"]),
]


@pytest.mark.parametrize(("annotations", "want", "problems"), PARSE_CASES)
def test_parse_affinity_annotations(annotations, want, problems):
    settings, found = parse_affinity_annotations("demo/web", annotations)
    assert settings.affinity == want
    assert settings.canary_behavior == "sticky"
    assert [p.annotation for p in found] == problems
    assert all(p.ingress == "demo/web" and p.message for p in found)


@pytest.mark.parametrize(("value", "want", "problem"), [
    (None, "sticky", False), ("sticky", "sticky", False), ("legacy", "legacy", False),
    ("Legacy", "sticky", True), ("off", "sticky", True)])
def test_canary_behavior_on_a_canary_ingress(value, want, problem):
    ann = {} if value is None else {N + "affinity-canary-behavior": value}
    settings, found = parse_affinity_annotations("demo/canary", ann, canary=True)
    assert settings.canary_behavior == want and settings.affinity is None
    assert bool(found) == problem


# ---------------------------------------------------------------------- cookie value


def test_value_roundtrip_and_foreign_values_ignored():
    for sv in (StickyValue("0123456789abcdef"), StickyValue("0123456789abcdef", 7, "cafe0001"),
               StickyValue("0123456789abcdef", 0xFFFFFFFF), StickyValue("0123456789abcdef", None, "00ff00ff")):
        assert decode_sticky(sv.encode()) == sv
    for bad in ("", "abc", "0123456789ABCDEF", "0123456789abcdef.1", "1663347863.123.456",
                "0123456789abcdef-cafe", "0123456789abcdef.00000001.00000002"):
        assert decode_sticky(bad) is None


def test_endpoint_key_is_stable_across_processes_and_names_the_address():
    ep = Endpoint("cluster1-beijing", "10.1.0.7", 8080)
    key = endpoint_key(ep)
    assert len(key) == 16 and key == endpoint_key(Endpoint("cluster1-beijing", "10.1.0.7", 8080))
    assert len({key, endpoint_key(Endpoint("cluster2-beijing", "10.1.0.7", 8080)),
                endpoint_key(Endpoint("cluster1-beijing", "10.1.0.7", 8081))}) == 3
    assert "10.1.0.7" not in key  # the cookie does not reveal pod IPs
    code = ("from gateway.routing.affinity import endpoint_key; from gateway.types import Endpoint;"
            "print(endpoint_key(Endpoint('cluster1-beijing', '10.1.0.7', 8080)))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": "12345", "PATH": ""},
                           cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert other.stdout.strip() == key


V1, V2 = "0123456789abcdef", "fedcba9876543210-00ff00ff"


@pytest.mark.parametrize(("header", "want"), [
    (f"INGRESSCOOKIE={V1}", V1),
    (f"a=1; INGRESSCOOKIE={V2}; b=2", V2),
    (f'INGRESSCOOKIE="{V1}"', V1),
    (f"INGRESSCOOKIE=garbage; INGRESSCOOKIE={V1}", V1),  # first value that is ours
    (f"INGRESSCOOKIE={V2}; INGRESSCOOKIE={V1}", V2),  # longest-path cookie comes first
    (f"x=1, INGRESSCOOKIE={V1}", V1),  # repeated Cookie headers joined with ", "
    (f"ingresscookie={V1}", None),  # names are case-sensitive
    (f"XINGRESSCOOKIE={V1}", None),
    ("INGRESSCOOKIE=", None),
    ("", None),
])
def test_read_sticky_cookie(header, want):
    assert read_sticky_cookie(header, "INGRESSCOOKIE") == want
    assert request_cookie(D, {"cookie": header} if header else {}) == want
    assert request_cookie(None, {"cookie": header}) is None


# ---------------------------------------------------------------------- canary steps


def test_canary_affinity_sticky_copies_main_legacy_keeps_its_own():
    main = bind_affinity(SessionAffinity(cookie="route", persistent=True), WEB, "/app")
    assert main.path == "/app" and main.backend_tag == backend_tag(WEB)
    sticky = canary_affinity(main, parse_affinity_annotations("d/c", {}, canary=True)[0], CANARY, "/app")
    assert sticky.cookie == "route" and sticky.persistent and sticky.backend_tag == backend_tag(CANARY)
    legacy, _ = parse_affinity_annotations("d/c", {N + "affinity-canary-behavior": "legacy"}, canary=True)
    assert canary_affinity(main, legacy, CANARY) is None
    own, _ = parse_affinity_annotations(
        "d/c", {N + "affinity-canary-behavior": "legacy", **ON, N + "session-cookie-name": "c"},
        canary=True)
    assert canary_affinity(main, own, CANARY).cookie == "c"
    # An explicit cookie path is kept.
    bound = bind_affinity(SessionAffinity(path="/x"), WEB, "/app")
    assert bound.path == "/x" and bound.backend_tag == backend_tag(WEB)
    assert bind_affinity(SessionAffinity(), WEB).path == "/" and bind_affinity(None, WEB) is None


def test_affinity_side_runs_before_the_canary_rules():
    main = bind_affinity(D, WEB)
    canary = bind_affinity(D, CANARY)
    key = "0123456789abcdef"

    def side(cookie: str | None, c=canary):
        return affinity_side({"cookie": cookie} if cookie else {}, main, c)

    assert side(None) is None
    assert side(f"INGRESSCOOKIE={key}-{main.backend_tag}") is False  # stays on the main line
    assert side(f"INGRESSCOOKIE={key}-{canary.backend_tag}") is True  # stays on the canary
    assert side(f"INGRESSCOOKIE={key}-{backend_tag(BackendRef('x', 'y', 1))}") is None
    assert side(f"INGRESSCOOKIE={key}") is None  # untagged: the canary rules decide
    assert side(f"INGRESSCOOKIE={key}-{canary.backend_tag}", c=None) is None  # legacy


# ---------------------------------------------------------------------- endpoint index

NOW = time.monotonic()


@pytest.mark.parametrize(("breakage", "sticks"), [
    (lambda ep: None, True),
    (lambda ep: setattr(ep, "healthy", None), True),  # not checked yet counts as healthy
    (lambda ep: setattr(ep, "healthy", True), True),
    (lambda ep: setattr(ep, "ready", False), False),
    (lambda ep: setattr(ep, "healthy", False), False),
    (lambda ep: setattr(ep, "ejected_until", NOW + 30), False),
    (lambda ep: setattr(ep, "ejected_until", NOW - 1), True),  # ejection over
])
@pytest.mark.parametrize("persistent", [True, False])
def test_cookie_endpoint_must_be_usable(breakage, sticks, persistent):
    a, b = eps("a", 3), eps("b", 2)
    idx = StickyIndex(a + b)
    value = idx.issue(b[1], persistent=persistent)
    assert idx.lookup(value, now=NOW) is b[1]  # sticky across clusters
    breakage(b[1])
    assert (sticky_endpoint(a + b, value, now=NOW) is b[1]) is sticks
    assert sticky_endpoint(a + b[:1], value, now=NOW) is None  # endpoint gone
    assert sticky_endpoint(a + b, value, exclude=frozenset({b[1].address}), now=NOW) is None
    assert sticky_endpoint(a + b, None) is None and sticky_endpoint(a + b, "junk") is None


def test_balanced_value_is_owned_by_its_endpoint():
    a = eps("a", 7)
    idx = StickyIndex(a + eps("b", 3))
    rng = random.Random(1)
    for ep in a:
        for _ in range(30):
            sv = decode_sticky(idx.issue(ep, persistent=False, tag="01234567", rng=rng))
            assert sv.pos is not None and sv.tag == "01234567"
            assert idx.ring("a").owner(sv.pos) is ep and idx.lookup(sv, now=NOW) is ep


@pytest.mark.parametrize(("persistent", "low", "high"), [(True, 0.0, 0.0), (False, 0.38, 0.62)])
def test_scale_up_rebalances_only_balanced_sessions_to_new_pods(persistent, low, high):
    old, other = eps("a", 4), eps("b", 2)
    before = StickyIndex(old + other)
    rng = random.Random(7)
    sessions = [(ep, before.issue(ep, persistent=persistent, rng=rng))
                for ep in old + other for _ in range(150)]
    new = eps("a", 4, start=4)
    after = StickyIndex(old + new + other)
    moved = Counter()
    for ep, value in sessions:
        got = after.lookup(value, now=NOW)
        if got is not ep:
            assert got in new  # a moved session goes to a new pod of its own cluster
            moved[ep.cluster] += 1
    assert moved["b"] == 0
    assert low <= moved["a"] / 600 <= high
    # Scaling down elsewhere in the cluster moves nobody else (their points only grow).
    shrunk = StickyIndex(old[:2] + other)
    assert all(shrunk.lookup(v, now=NOW) is ep for ep, v in sessions if ep in old[:2])


@pytest.mark.parametrize(("persistent", "stays"), [(True, True), (False, False)])
def test_backup_pool_sessions_return_to_primary_only_when_balanced(persistent, stays):
    a, b = eps("a", 2), eps("b", 2)
    bal = Balancer(BackendPolicy(priority_pools=(("a",), ("b",))))
    for ep in a:
        ep.healthy = False
    bal.update(a + b, NOW)
    ep = bal.pick(RequestView("GET", "/", "h", {}))
    assert ep.cluster == "b"  # failover
    value = index_of(bal).issue(ep, persistent=persistent)
    assert index_of(bal).lookup(value, now=NOW) is ep
    for e in a:
        e.healthy = True
    bal.update(a + b, NOW)  # the primary recovered
    assert (index_of(bal).lookup(value, now=NOW) is ep) is stays


@pytest.mark.parametrize(("persistent", "stays"), [(True, True), (False, False)])
def test_unweighted_cluster_sessions_follow_weights_only_when_balanced(persistent, stays):
    a, c = eps("a", 2), eps("c", 2)
    bal = Balancer(BackendPolicy(cluster_weights={"a": 100}))
    bal.update(a + c, NOW)
    value = index_of(bal).issue(c[0], persistent=persistent)  # e.g. issued during a failover
    assert (index_of(bal).lookup(value, now=NOW) is c[0]) is stays
    for e in a:
        e.healthy = False
    bal.update(a + c, NOW)  # weighted cluster down: the unweighted one serves, sessions stay
    assert index_of(bal).lookup(value, now=NOW) is c[0]


def test_rings_survive_health_changes_but_not_membership_changes():
    a = eps("a", 3)
    bal = Balancer(BackendPolicy())
    bal.update(a, NOW)
    ring = index_of(bal).ring("a")
    a[0].healthy = False
    bal.update(a, NOW)
    assert index_of(bal).ring("a") is ring  # same ready set: reused
    a[1].ready = False
    bal.update(a, NOW)
    assert index_of(bal).ring("a").members == [a[0], a[2]]


# ---------------------------------------------------------------------- the response cookie


def test_sticky_cookie_set_only_when_the_session_changes():
    a = eps("a", 3)
    bal = Balancer(BackendPolicy())
    bal.update(a, NOW)
    aff = bind_affinity(SessionAffinity(persistent=True), WEB)
    value = sticky_cookie(bal, a[0], aff)
    assert decode_sticky(value) == StickyValue(endpoint_key(a[0]), None, aff.backend_tag)
    assert sticky_cookie(bal, a[0], aff, current=value) is None  # already right
    assert sticky_cookie(bal, a[1], aff, current=value) != value  # served elsewhere
    balanced = bind_affinity(SessionAffinity(), WEB)
    assert decode_sticky(sticky_cookie(bal, a[0], balanced, current=value)).pos is not None
    other = bind_affinity(SessionAffinity(persistent=True), CANARY)
    assert decode_sticky(sticky_cookie(bal, a[0], other, current=value)).tag == backend_tag(CANARY)
    # A retry served elsewhere: the old cookie stays unless change-on-failure.
    assert sticky_cookie(bal, a[1], aff, current=value, retried=True) is None
    moved = sticky_cookie(bal, a[1], SessionAffinity(persistent=True, change_on_failure=True,
                                                    backend_tag=aff.backend_tag),
                          current=value, retried=True)
    assert decode_sticky(moved).key == endpoint_key(a[1])
    a[0].ejected_until = time.monotonic() + 30  # the old endpoint is unusable: replaced anyway
    assert decode_sticky(sticky_cookie(bal, a[1], aff, current=value, retried=True)).key == endpoint_key(a[1])
    assert sticky_cookie(None, a[2], aff) is not None  # untracked backend: still a cookie


# ---------------------------------------------------------------------- Set-Cookie


@pytest.mark.parametrize(("affinity", "route_path", "attrs"), [
    (SessionAffinity(), "/app", "Path=/app; HttpOnly"),
    (SessionAffinity(), "", "Path=/; HttpOnly"),
    (SessionAffinity(path="/p"), "/app", "Path=/p; HttpOnly"),
    (SessionAffinity(cookie="route", max_age=3600), "/", "Max-Age=3600; Path=/; HttpOnly"),
    (SessionAffinity(expires=60, max_age=60, domain=".example.com", secure=True, samesite="None"),
     "/", "Expires=Thu, 01 Jan 1970 00:01:00 GMT; Max-Age=60; Domain=.example.com; Path=/; "
          "Secure; HttpOnly; SameSite=None"),
    (SessionAffinity(samesite="Lax", path="bad path"), "/x", "Path=/x; HttpOnly; SameSite=Lax"),
])
def test_set_cookie_header(affinity, route_path, attrs):
    ep = Endpoint("a", "10.1.0.1", 8080)
    line = set_cookie_header(affinity, ep, route_path, value="0123456789abcdef-00ff00ff", now=0.0)
    assert line == f"Set-Cookie: {affinity.cookie}=0123456789abcdef-00ff00ff; {attrs}\r\n".encode()
    plain = set_cookie_header(affinity, ep, route_path)  # no value: the persistent form
    assert plain.startswith(f"Set-Cookie: {affinity.cookie}={endpoint_key(ep)}".encode())


@pytest.mark.parametrize(("secure", "https", "marked"), [
    (None, False, False), (None, True, True),  # unset: Secure exactly over HTTPS (ingress-nginx)
    (True, False, True), (False, True, False),  # session-cookie-secure decides when set
])
def test_set_cookie_secure_follows_the_annotation_else_the_scheme(secure, https, marked):
    line = set_cookie_header(SessionAffinity(secure=secure), Endpoint("a", "10.1.0.1", 8080), "/",
                             value="0123456789abcdef-00ff00ff", https=https)
    assert (b"; Secure;" in line) == marked


def test_set_cookie_header_refuses_header_injection():
    ep = Endpoint("a", "10.1.0.1", 8080)
    with pytest.raises(ValueError):
        set_cookie_header(SessionAffinity(cookie="a\r\nX-Evil: 1"), ep, "/")
    with pytest.raises(ValueError):
        set_cookie_header(SessionAffinity(), ep, "/", value="v; Domain=evil")
