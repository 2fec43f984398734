"""limit-rps / limit-rpm / limit-burst-multiplier / limit-connections / limit-allowlist
(gateway/routing/ratelimit.py): table-driven against nginx's limit_req arithmetic with
explicit times, through the route table, and through the real gateway."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import MSE, NGX, build, main_and_canary, problems_for, simple

from gateway.__main__ import parse_args
from gateway.routing import ratelimit
from gateway.routing.ratelimit import RateLimit, RateLimitSettings, RateZones
from gateway.types import RequestView

RPS, RPM, MULT, CONN = (NGX + k for k in ("limit-rps", "limit-rpm", "limit-burst-multiplier",
                                          "limit-connections"))


def view(ip: str = "10.0.0.1", headers: dict | None = None) -> RequestView:
    return RequestView("GET", "/", "a.example.com", headers or {}, ip)


def limiter(**kw) -> RateLimit:
    return RateZones(503, 429).limit("z", RateLimitSettings(**kw))


def run(limit: RateLimit, times: list[float], ip: str = "10.0.0.1") -> str:
    """'+' for each admitted request, '-' for each refused one, at these times."""
    out = ""
    for t in times:
        status, key = limit.admit(view(ip), t)
        out += "-" if status else "+"
        if key:
            limit.release(key)
    return out


@pytest.mark.parametrize("settings, times, expected", [
    # burst = rate x multiplier; a new client passes burst + 1 at once (nginx: excess starts at 0)
    (dict(rps=2), [0.0] * 12, "+" * 11 + "-"),
    (dict(rps=2, burst_multiplier=1), [0.0] * 4, "+++-"),
    # the excess drains at the rate: half a second later one more request passes, not two
    (dict(rps=2, burst_multiplier=1), [0.0] * 3 + [0.5, 0.5], "++++-"),
    # refused requests cost nothing: after hammering, the drained amount is all there is
    (dict(rps=1, burst_multiplier=1), [0.0, 0.0] + [0.1] * 20 + [1.0, 1.0], "++" + "-" * 20 + "+-"),
    # after a long quiet spell the client starts over
    (dict(rps=1, burst_multiplier=1), [0.0, 0.0, 0.0, 100.0, 100.0, 100.0], "++-++-"),
    # limit-rpm: a rate per minute (rpm 6 = one per 10 s), burst = rpm x multiplier
    (dict(rpm=6, burst_multiplier=1), [0.0] * 8 + [10.0, 10.0], "+" * 7 + "-+-"),
    # both: a request must pass both (here the rpm burst, 3, is the tighter one)
    (dict(rps=10, rpm=3, burst_multiplier=1), [0.0] * 6, "++++--"),
])
def test_leaky_bucket_like_nginx_limit_req_nodelay(settings, times, expected):
    assert run(limiter(**settings), times) == expected


def test_a_refusal_by_one_limit_is_not_charged_to_the_other():
    limit = limiter(rps=1, rpm=600, burst_multiplier=1)  # rpm: 10/s, burst 600
    assert run(limit, [0.0] * 5) == "++---"
    rpm_bucket = limit.buckets[1]
    assert rpm_bucket.clients["10.0.0.1"][0] == 1.0  # two admitted: excess 0 then 1


def test_clients_are_counted_apart_and_the_allowlist_is_exempt():
    limit = limiter(rps=1, burst_multiplier=1, exempt=(ratelimit.parse_networks("192.168.0.0/16")))
    assert run(limit, [0.0] * 3, "10.0.0.1") == "++-"
    assert run(limit, [0.0] * 3, "10.0.0.2") == "++-"  # another client: its own bucket
    assert run(limit, [0.0] * 50, "192.168.3.4") == "+" * 50  # exempt
    assert run(limit, [0.0] * 50, "::ffff:192.168.3.4") == "+" * 50  # IPv4-mapped counts as IPv4
    assert "192.168.3.4" not in limit.buckets[0].clients  # and not even counted


def test_limit_connections_counts_requests_in_progress():
    limit = limiter(connections=2)
    first, second = limit.admit(view(), 0.0), limit.admit(view(), 0.0)
    assert first == (0, "10.0.0.1") and second == (0, "10.0.0.1")
    assert limit.admit(view(), 0.0) == (429, "")  # the conn status (limit-conn-status-code)
    assert limit.admit(view("10.0.0.9"), 0.0)[0] == 0  # another client
    limit.release("10.0.0.1")
    assert limit.admit(view(), 0.0)[0] == 0
    for _ in range(2):
        limit.release("10.0.0.1")
    limit.release("10.0.0.9")
    assert limit.active == {}  # nothing left behind


def test_a_full_zone_drops_drained_clients_then_the_oldest(monkeypatch):
    """Dropping a drained client loses nothing (it would start over at excess 0 anyway)."""
    monkeypatch.setattr(ratelimit, "MAX_CLIENTS", 8)
    limit = limiter(rps=1, burst_multiplier=1)
    clients = limit.buckets[0].clients
    for i in range(8):
        assert run(limit, [0.0, 0.0], f"10.0.0.{i}") == "++"  # each owes one request
    assert run(limit, [0.5], "10.0.1.1") == "+"  # full, nobody drained: the oldest quarter goes
    assert len(clients) == 7 and "10.0.0.0" not in clients and "10.0.0.1" not in clients
    assert "10.0.0.2" in clients and "10.0.1.1" in clients
    assert run(limit, [0.6], "10.0.1.2") == "+" and len(clients) == 8
    assert run(limit, [5.0], "10.0.2.1") == "+"  # full again, and by now all have drained
    assert list(clients) == ["10.0.2.1"]


@pytest.mark.parametrize("ann, settings", [
    ({RPS: "5"}, RateLimitSettings(rps=5)),
    ({RPM: "300", MULT: "3"}, RateLimitSettings(rpm=300, burst_multiplier=3)),
    ({CONN: "10"}, RateLimitSettings(connections=10)),
    ({MSE + "limit-rps": "5"}, RateLimitSettings(rps=5)),  # MSE's prefix too
    ({RPS: "5", NGX + "limit-whitelist": "10.0.0.0/8"},
     RateLimitSettings(rps=5, exempt=ratelimit.parse_networks("10.0.0.0/8"))),  # older name
    ({RPS: "5", NGX + "limit-allowlist": "10.0.0.0/8", NGX + "limit-whitelist": "11.0.0.0/8"},
     RateLimitSettings(rps=5, exempt=ratelimit.parse_networks("10.0.0.0/8"))),  # newer wins
    ({RPS: "0"}, None),  # 0: no limit
    ({MULT: "3"}, None),  # a multiplier alone limits nothing
])
def test_parsing(ann, settings):
    table, problems = build(simple("site", ann=ann))
    assert problems == []
    d = table.route(view())
    assert (d.rate_limit.settings if d.rate_limit is not None else None) == settings


@pytest.mark.parametrize("ann, annotation, fragment, settings", [
    ({RPS: "lots"}, "limit-rps", "not an integer", None),
    ({RPS: "-1"}, "limit-rps", "out of range", None),
    ({RPS: "5", MULT: "0"}, "limit-burst-multiplier", "out of range", RateLimitSettings(rps=5)),
    ({RPS: "5", NGX + "limit-allowlist": "10.0.0.0/8, nope"}, "limit-allowlist",
     "limits apply to every client", RateLimitSettings(rps=5)),
])
def test_bad_values_are_reported_and_ignored(ann, annotation, fragment, settings):
    table, problems = build(simple("site", ann=ann))
    assert any(fragment in m for m in problems_for(problems, "default/site", annotation))
    d = table.route(view())
    assert (d.rate_limit.settings if d.rate_limit is not None else None) == settings


def test_one_zone_per_ingress_kept_across_rebuilds_and_dropped_with_it():
    zones = RateZones()
    site = simple("site", ann={RPS: "1", MULT: "1"})
    site["metadata"]["uid"] = "u1"
    both = [site, simple("other", "b.example.com", p="/x", ann={RPS: "1", MULT: "1"})]
    table, _ = build(*both, rate_zones=zones)
    assert run(table.route(view()).rate_limit, [0.0, 0.0, 0.0]) == "++-"
    table, _ = build(*both, rate_zones=zones)  # any rebuild: the counters stay
    assert run(table.route(view()).rate_limit, [0.0]) == "-"
    other = table.route(RequestView("GET", "/x", "b.example.com", {}, "10.0.0.1")).rate_limit
    assert run(other, [0.0, 0.0, 0.0]) == "++-"  # another Ingress: another zone
    zones.prune()
    assert len(zones.zones) == 2
    site["metadata"]["uid"] = "u2"  # deleted and created again: a new zone
    table, _ = build(*both, rate_zones=zones)
    assert run(table.route(view()).rate_limit, [0.0]) == "+"
    zones.prune()
    assert len(zones.zones) == 2


def test_all_rules_of_an_ingress_share_its_zone_and_a_canary_cannot_set_limits():
    table, problems = main_and_canary({RPS: "1", MULT: "1"}, {RPS: "1000"})
    assert problems_for(problems, "default/can", "limit-rps")
    d = table.route(view())
    assert d.backend.service == "canary" and d.rate_limit.settings.rps == 1  # the main's limit
    [route] = table.describe()
    assert route["rateLimit"] == {"rps": 1, "rpm": None, "burstMultiplier": 1,
                                  "connections": None, "exempt": [], "clients": 0}


async def test_through_the_gateway():
    ings = [app_ingress("rps", "rps.example.com", "web", {RPS: "1", MULT: "2"}),
            app_ingress("conn", "conn.example.com", "web", {CONN: "1"}),
            app_ingress("free", "free.example.com", "web",
                        {RPS: "1", MULT: "1", NGX + "limit-allowlist": "127.0.0.0/8"})]
    async with gateway_over(ings, "127.0.75.1", rate_limit_status=(429, 503)) as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}"
        async with aiohttp.ClientSession() as s:
            async def get(host: str, path: str = "/x") -> int:
                async with s.get(url + path, headers={"Host": host}) as r:
                    await r.read()
                    return r.status

            assert [await get("rps.example.com") for _ in range(4)] == [200, 200, 200, 429]
            assert [await get("free.example.com") for _ in range(4)] == [200] * 4  # exempt
            slow = asyncio.ensure_future(get("conn.example.com", "/sleep/0.5"))
            await asyncio.sleep(0.2)  # the first one is in progress upstream
            assert await get("conn.example.com") == 503
            assert await slow == 200
            assert await get("conn.example.com") == 200  # its slot came back
        assert len(up.requests) == 3 + 4 + 2  # refused requests never reached the upstream


def test_cli_status_code_flags(tmp_path):
    cfg = ["--config", str(tmp_path / "f.yaml")]
    args = parse_args(cfg)
    assert (args.limit_req_status_code, args.limit_conn_status_code) == (503, 503)  # ingress-nginx's
    args = parse_args([*cfg, "--limit-req-status-code", "429", "--limit-conn-status-code", "429"])
    assert (args.limit_req_status_code, args.limit_conn_status_code) == (429, 429)
    done = subprocess.run([sys.executable, "-m", "gateway", *cfg, "--limit-req-status-code", "200"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--limit-req-status-code: an error status" in done.stderr
    assert "Traceback" not in done.stderr


def test_rates_are_checked_before_connections_as_nginx_orders_them():
    """limit_req runs before limit_conn in nginx: a request refused for connections was
    already charged to the rate; one refused by the rate takes no connection slot."""
    limit = limiter(rps=1, burst_multiplier=2, connections=1)
    assert limit.admit(view(), 0.0) == (0, "10.0.0.1")  # holds the one slot
    assert limit.admit(view(), 0.0) == (429, "")  # refused for connections, charged to the rate
    assert limit.buckets[0].clients["10.0.0.1"][0] == 1.0
    assert limit.admit(view(), 0.0) == (429, "")  # charged again (excess 2 = burst)
    assert limit.admit(view(), 0.0) == (503, "")  # now the rate refuses, free of charge
    assert limit.active == {"10.0.0.1": 1}
