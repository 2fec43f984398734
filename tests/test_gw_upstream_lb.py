"""Load balancing of one backend: round robin over the union, weights, priorities, panic, hash,
least_conn, random, and the retry path (exclude / avoid_clusters). Pure: no sockets."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from gateway.types import BackendPolicy, Endpoint, RequestView
from gateway.upstream.balancer import Balancer
from gateway.upstream.lb import (
    HashRing,
    SmoothWeighted,
    compile_hash_key,
    priority_health,
    priority_loads,
)

REQ = RequestView("GET", "/", "example.com", {}, "192.0.2.1")


def eps(cluster: str, n: int, net: int = 0, port: int = 8080) -> list[Endpoint]:
    octet = {"a": 1, "b": 2, "c": 3}.get(cluster, 9) + net
    return [Endpoint(cluster, f"10.{octet}.0.{i + 1}", port) for i in range(n)]


def balancer(endpoints: list[Endpoint], **policy) -> Balancer:
    b = Balancer(BackendPolicy(**policy))
    b.update(endpoints)
    return b


def by_cluster(b: Balancer, n: int, req: RequestView = REQ) -> Counter[str]:
    return Counter(b.pick(req).cluster for _ in range(n))


def unhealthy(endpoints: list[Endpoint], k: int) -> None:
    for ep in endpoints[:k]:
        ep.healthy = False


# ---------------------------------------------------------------------- round robin


def test_round_robin_follows_pod_counts_exactly():
    a, b = eps("a", 3), eps("b", 1)
    bal = balancer(a + b)
    picks = Counter(id(bal.pick(REQ)) for _ in range(400))
    assert by_cluster(bal, 400) == {"a": 300, "b": 100}
    assert sorted(picks.values()) == [100, 100, 100, 100]


def test_round_robin_skips_not_ready_unhealthy_and_ejected():
    a = eps("a", 4)
    a[0].ready = False
    a[1].healthy = False
    a[2].ejected_until = time.monotonic() + 60
    a[3].healthy = None  # not checked yet: counts as healthy
    c = eps("c", 4)  # keep the healthy share above the panic threshold
    bal = balancer(a + c)
    got = {bal.pick(REQ).ip for _ in range(50)}
    assert got == {a[3].ip} | {e.ip for e in c}


def test_round_robin_interleaves_clusters():
    bal = balancer(eps("a", 2) + eps("b", 2))
    seq = [bal.pick(REQ).ip for _ in range(8)]
    assert len(set(seq[:4])) == 4 and seq[:4] == seq[4:]


# ---------------------------------------------------------------------- cluster weights


def test_smooth_weighted_round_robin_is_nginx_sequence():
    s = SmoothWeighted([5, 1, 1])
    assert "".join("abc"[s.next()] for _ in range(7)) == "aabacaa"


def test_cluster_weights_ignore_pod_counts():
    a, b = eps("a", 3), eps("b", 1)
    bal = balancer(a + b, cluster_weights={"a": 20, "b": 80})
    assert by_cluster(bal, 100) == {"a": 20, "b": 80}
    bal = balancer(a + b, cluster_weights={"a": 50, "b": 50})
    picks = Counter(bal.pick(REQ).ip for _ in range(600))
    assert [picks[e.ip] for e in a] == [100, 100, 100] and picks[b[0].ip] == 300


def test_weight_zero_or_missing_gets_nothing_until_weighted_clusters_fail():
    a, b, c = eps("a", 2), eps("b", 2), eps("c", 2)
    bal = balancer(a + b + c, cluster_weights={"a": 1, "b": 0})
    assert by_cluster(bal, 50) == {"a": 50}
    # Failover: every weighted endpoint unusable -> the others serve (b and c alike).
    unhealthy(a, 2)
    bal.update(a + b + c)
    assert by_cluster(bal, 40) == {"b": 20, "c": 20}


def test_cluster_weight_scaled_by_availability_like_envoy_localities():
    a, b = eps("a", 10), eps("b", 10)
    unhealthy(a, 7)  # a: 30 % healthy -> availability min(1, 1.4 x 0.3) = 0.42
    bal = balancer(a + b, cluster_weights={"a": 50, "b": 50})
    assert by_cluster(bal, 710) == {"a": 210, "b": 500}


# ---------------------------------------------------------------------- priority pools


def test_strict_priority_first_pool_with_a_healthy_endpoint_takes_all():
    a, b, c = eps("a", 2), eps("b", 2), eps("c", 2)
    pools = (("a",), ("b",))
    bal = balancer(a + b + c, priority_pools=pools)
    assert by_cluster(bal, 20) == {"a": 20}
    unhealthy(a, 1)  # one healthy endpoint is enough, no panic while b is healthy
    bal.update(a + b + c)
    assert {bal.pick(REQ).ip for _ in range(10)} == {a[1].ip}
    unhealthy(a, 2)
    bal.update(a + b + c)
    assert by_cluster(bal, 20) == {"b": 20}
    unhealthy(b, 2)  # clusters named in no pool form an implicit last pool
    bal.update(a + b + c)
    assert by_cluster(bal, 20) == {"c": 20}


@pytest.mark.parametrize(("p0_healthy", "p0_load"), [
    (100, 100), (72, 100), (71, 99), (50, 70), (25, 35), (0, 0),
])
def test_envoy_priority_load_table_two_levels(p0_healthy, p0_load):
    assert priority_loads([priority_health(p0_healthy, 100), priority_health(100, 100)]) == [
        p0_load, 100 - p0_load]
    # Same through a balancer with 100 endpoints per level.
    a, b = eps("a", 100), eps("b", 100)
    unhealthy(a, 100 - p0_healthy)
    bal = balancer(a + b, priority_pools=(("a",), ("b",)), graded_spillover=True)
    assert bal.loads() == [p0_load, 100 - p0_load]


@pytest.mark.parametrize(("healthy", "loads"), [
    ((25, 25, 100), [35, 35, 30]),
    ((25, 25, 20), [36, 36, 28]),
])
def test_envoy_priority_load_table_three_levels(healthy, loads):
    assert priority_loads([priority_health(h, 100) for h in healthy]) == loads
    groups = [eps(c, 100) for c in "abc"]
    for g, h in zip(groups, healthy, strict=True):
        unhealthy(g, 100 - h)
    bal = balancer(sum(groups, []), priority_pools=(("a",), ("b",), ("c",)), graded_spillover=True)
    assert bal.loads() == loads
    total_health = sum(priority_health(h, 100) for h in healthy)
    assert bal.panicking() == [total_health < 100 and h < 50 for h in healthy]


def test_graded_spillover_distributes_by_priority_load():
    a, b = eps("a", 10), eps("b", 10)
    unhealthy(a, 5)  # 50 % healthy -> 70 / 30
    bal = balancer(a + b, priority_pools=(("a",), ("b",)), graded_spillover=True)
    got = Counter(bal.pick(REQ).ip for _ in range(1000))
    assert sum(n for ip, n in got.items() if ip.startswith("10.1.")) == 700
    assert {ip for ip in got if ip.startswith("10.1.")} == {e.ip for e in a[5:]}


# ---------------------------------------------------------------------- panic


def test_panic_below_threshold_balances_over_all_endpoints():
    a = eps("a", 10)
    unhealthy(a, 6)  # 40 % healthy < 50 %
    bal = balancer(a)
    assert bal.panicking() == [True]
    assert {bal.pick(REQ).ip for _ in range(10)} == {e.ip for e in a}


def test_not_ready_endpoints_do_not_count_toward_panic():
    a = eps("a", 10)
    for ep in a[:6]:
        ep.ready = False
    bal = balancer(a)
    assert bal.panicking() == [False]
    assert {bal.pick(REQ).ip for _ in range(10)} == {e.ip for e in a[6:]}


def test_no_panic_at_threshold():
    a = eps("a", 10)
    unhealthy(a, 5)  # 50 % is not below 50 %
    bal = balancer(a)
    assert bal.panicking() == [False]
    assert {bal.pick(REQ).ip for _ in range(10)} == {e.ip for e in a[5:]}


def test_all_unhealthy_panics_or_503_when_disabled():
    a = eps("a", 3)
    unhealthy(a, 3)
    assert balancer(a).pick(REQ) is not None
    assert balancer(a, panic_threshold=0).pick(REQ) is None
    assert balancer(a, panic_threshold=0).pick(REQ, exclude=frozenset({("x", 1)})) is None
    assert balancer([]).pick(REQ) is None


def test_panic_per_priority_only_when_total_health_below_100():
    a, b = eps("a", 5), eps("b", 5)
    unhealthy(a, 4)  # P0 20 % healthy, but P1 makes total health 100: no panic, strict -> a[4]
    bal = balancer(a + b, priority_pools=(("a",), ("b",)))
    assert bal.panicking() == [False, False]
    assert {bal.pick(REQ).ip for _ in range(10)} == {a[4].ip}
    unhealthy(b, 4)  # total health 28 + 28 < 100: P0 panics, still takes all (strict)
    bal.update(a + b)
    assert bal.panicking() == [True, True]
    assert {bal.pick(REQ).ip for _ in range(10)} == {e.ip for e in a}


def test_priority_nothing_healthy_goes_to_first_nonempty_pool_in_panic():
    b = eps("b", 2)
    unhealthy(b, 2)
    bal = balancer(b, priority_pools=(("a",), ("b",)))
    assert by_cluster(bal, 4) == {"b": 4}


# ---------------------------------------------------------------------- hash


def hreq(user: str) -> RequestView:
    return RequestView("GET", f"/p?u={user}", "h", {"x-user": user, "cookie": f"a=1; sid={user}"}, "10.9.9.9")


def test_hash_is_sticky_and_spread():
    pool = eps("a", 5) + eps("b", 5)
    bal = balancer(pool, algorithm="hash", hash_by="$http_x_user")
    first = {u: bal.pick(hreq(f"user{u}")) for u in range(1000)}
    assert all(bal.pick(hreq(f"user{u}")) is first[u] for u in range(1000))
    spread = Counter(id(ep) for ep in first.values())
    assert len(spread) == 10 and min(spread.values()) > 40


def test_hash_ring_removal_moves_only_the_removed_share():
    pool = eps("a", 8)
    full = HashRing(pool)
    before = {u: full.get(u * 2654435761 % 2**32) for u in range(2000)}
    ring = HashRing(pool[:3] + pool[4:])
    moved = [u for u in range(2000) if ring.get(u * 2654435761 % 2**32) is not before[u]]
    assert moved and all(before[u] is pool[3] for u in moved)
    assert len(moved) == sum(1 for ep in before.values() if ep is pool[3])
    grown = HashRing(pool + eps("a", 1, net=5))
    new = [u for u in range(2000) if grown.get(u * 2654435761 % 2**32) is not before[u]]
    assert new and all(grown.get(u * 2654435761 % 2**32).ip == "10.6.0.1" for u in new)


def test_hash_unhealthy_endpoint_moves_only_its_keys_and_they_come_back():
    pool = eps("a", 4) + eps("b", 4)
    bal = balancer(pool, algorithm="hash", hash_by="$arg_u")
    before = {u: bal.pick(hreq(str(u))) for u in range(800)}
    pool[2].healthy = False
    bal.update(pool)
    after = {u: bal.pick(hreq(str(u))) for u in range(800)}
    moved = {u for u in range(800) if after[u] is not before[u]}
    assert moved == {u for u in range(800) if before[u] is pool[2]} and moved
    assert all(after[u] is not pool[2] for u in moved)
    pool[2].healthy = True
    bal.update(pool)
    assert all(bal.pick(hreq(str(u))) is before[u] for u in range(800))


def test_hash_keys_follow_nginx_variables():
    r = RequestView("GET", "/a/b?x=1&Sess=abc", "shop.example", {"x-user": "u1", "cookie": "sid=s1"}, "10.0.0.7")
    assert compile_hash_key("$request_uri")(r) == "/a/b?x=1&Sess=abc"
    assert compile_hash_key("$uri")(r) == "/a/b"
    assert compile_hash_key("$host$uri")(r) == "shop.example/a/b"
    assert compile_hash_key("$remote_addr")(r) == "10.0.0.7"
    assert compile_hash_key("$http_x_user")(r) == "u1"
    assert compile_hash_key("$arg_sess")(r) == "abc"  # case-insensitive, as ngx_http_arg
    assert compile_hash_key("$cookie_sid")(r) == "s1"
    assert compile_hash_key("${host}-x")(r) == "shop.example-x"
    for bad in ("$nope", "plain"):
        with pytest.raises(ValueError):
            compile_hash_key(bad)


def test_hash_with_weights_is_sticky_per_key():
    pool = eps("a", 3) + eps("b", 3)
    bal = balancer(pool, algorithm="hash", hash_by="$arg_u", cluster_weights={"a": 1, "b": 1})
    first = {u: bal.pick(hreq(str(u))) for u in range(300)}
    assert all(bal.pick(hreq(str(u))) is first[u] for u in range(300))
    shares = Counter(ep.cluster for ep in first.values())
    assert 100 < shares["a"] < 200


# ---------------------------------------------------------------------- least_conn, random


def test_least_conn_prefers_fewest_active_with_round_robin_ties():
    pool = eps("a", 3)
    pool[0].active_requests, pool[1].active_requests, pool[2].active_requests = 5, 0, 2
    bal = balancer(pool, algorithm="least_conn")
    assert bal.pick(REQ) is pool[1]
    for ep in pool:
        ep.active_requests = 0
    held = []
    for _ in range(9):  # requests that stay open spread evenly
        ep = bal.pick(REQ)
        ep.active_requests += 1
        held.append(ep)
    assert Counter(id(e) for e in held) == {id(e): 3 for e in pool}
    assert {bal.pick(REQ).ip for _ in range(3)} == {e.ip for e in pool}  # ties rotate


def test_random_uses_every_endpoint():
    pool = eps("a", 4) + eps("b", 4)
    bal = balancer(pool, algorithm="random")
    got = Counter(bal.pick(REQ).ip for _ in range(800))
    assert set(got) == {e.ip for e in pool} and min(got.values()) > 40


# ---------------------------------------------------------------------- ewma


def test_peak_ewma_takes_a_slower_sample_at_once_and_decays_a_faster_one_in():
    ep = Endpoint("a", "10.1.0.1", 80)
    ep.observe(0.010, 100.0)
    assert ep.ewma == 0.010
    ep.observe(0.200, 100.5)  # slower: at once (the peak)
    assert ep.ewma == 0.200
    ep.observe(0.010, 110.5)  # faster, one time constant (10 s) later: 1/e of the old stays
    assert ep.ewma == pytest.approx(0.200 / 2.718281828 + 0.010 * (1 - 1 / 2.718281828))
    ep.active_requests = 3  # the cost: decayed to now, times the requests in flight plus one
    assert ep.ewma_cost(120.5) == pytest.approx(ep.ewma / 2.718281828 * 4)


def test_ewma_sends_most_requests_to_the_fast_pods_and_still_tries_the_slow_one():
    pool = eps("a", 3) + eps("b", 1)
    bal = balancer(pool, algorithm="ewma")
    assert all(ep.ewma_on for ep in pool)  # the data path times these pods' attempts
    now = time.monotonic()
    for ep in pool:
        ep.observe(0.005, now)
    slow = pool[3]
    slow.observe(0.500, now)  # a pod 100x slower
    got = Counter(bal.pick(REQ).ip for _ in range(4000))
    # two choices: the slow pod wins only when it is drawn twice, which never happens
    assert got[slow.ip] == 0 and min(got[ep.ip] for ep in pool[:3]) > 1000
    # in flight: a busy fast pod costs more than an idle one (it wins only against the slow
    # one: 1 pair in 6; an idle fast pod wins 2.5 in 6)
    pool[0].active_requests = 50
    got = Counter(bal.pick(REQ).ip for _ in range(3000))
    assert got[pool[0].ip] < got[pool[1].ip] / 2
    # a pod that got no traffic is tried again as its EWMA decays (10 s time constant)
    slow.ewma_at = pool[1].ewma_at = pool[2].ewma_at = now - 60.0
    pool[0].active_requests = 0
    assert slow.ewma_cost(now) < 0.005
    assert slow.ip in {bal.pick(REQ).ip for _ in range(200)}


# ---------------------------------------------------------------------- retries


@pytest.mark.parametrize("algorithm", ["round_robin", "least_conn", "random", "hash", "ewma"])
def test_exclude_and_avoid_clusters(algorithm):
    a, b = eps("a", 2), eps("b", 2)
    bal = balancer(a + b, algorithm=algorithm)
    tried = frozenset({a[0].address})
    assert all(bal.pick(REQ, exclude=tried) is not a[0] for _ in range(20))
    avoid = frozenset({"a"})
    assert {bal.pick(REQ, exclude=tried, avoid_clusters=avoid).cluster for _ in range(20)} == {"b"}
    # b exhausted: another endpoint of the avoided cluster beats failing.
    both_b = frozenset({a[0].address, b[0].address, b[1].address})
    assert all(bal.pick(REQ, exclude=both_b, avoid_clusters=avoid) is a[1] for _ in range(5))
    everything = frozenset(e.address for e in a + b)
    assert bal.pick(REQ, exclude=everything) is None


def test_avoid_spills_to_lower_priority_and_unweighted_clusters():
    a, b = eps("a", 2), eps("b", 2)
    bal = balancer(a + b, priority_pools=(("a",), ("b",)))
    assert by_cluster(bal, 4) == {"a": 4}
    assert bal.pick(REQ, avoid_clusters=frozenset({"a"})).cluster == "b"
    bal = balancer(a + b, cluster_weights={"a": 100})
    assert bal.pick(REQ, avoid_clusters=frozenset({"a"})).cluster == "b"
    assert bal.pick(REQ, exclude=frozenset({a[0].address})) is a[1]


def test_retry_never_picks_unhealthy_outside_panic():
    a, b = eps("a", 3), eps("b", 3)
    b[0].healthy = False
    bal = balancer(a + b)
    tried = frozenset(e.address for e in a)
    assert {bal.pick(REQ, exclude=tried).ip for _ in range(10)} == {b[1].ip, b[2].ip}

