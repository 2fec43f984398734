"""The client address behind a `--trusted-proxy` (gateway/proxy/heads.py `forwarded_client`,
nginx's `real_ip` with `real_ip_recursive on`): table-driven over X-Forwarded-For chains,
then through the gateway with real HTTP clients: the address the pods get as X-Real-IP is the
one allow lists, rate limits and the access log use."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from fleetkit import eventually
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import NGX

from gateway.proxy.heads import forwarded_client

PROXY, OTHER = "127.0.0.2", "127.0.0.3"  # a --trusted-proxy, and a peer that is not one
TRUSTED = {"127.0.0.2", "10.9.0.1", "10.9.0.2", "2001:db8::9"}.__contains__


@pytest.mark.parametrize("values, client", [
    ([b"192.168.5.5"], "192.168.5.5"),
    ([b"192.168.5.5, 10.9.0.1"], "192.168.5.5"),  # a trusted hop is skipped
    ([b"8.8.8.8, 192.168.5.5, 10.9.0.1, 10.9.0.2"], "192.168.5.5"),  # the last untrusted one
    ([b"8.8.8.8", b"192.168.5.5,10.9.0.1"], "192.168.5.5"),  # repeated headers: one list
    ([b"10.9.0.1, 10.9.0.2"], "10.9.0.1"),  # all trusted: the leftmost
    ([b"2001:DB8::7, 2001:db8::9"], "2001:db8::7"),  # IPv6, written canonically
    ([b"192.168.5.5, , 10.9.0.1"], "192.168.5.5"),  # empty entries skipped
    ([b"192.168.5.5:4711, 10.9.0.2:443"], "192.168.5.5"),  # ports dropped (Azure's gateway adds them)
    ([b"[2001:db8::7]:4711, [2001:db8::9]:80"], "2001:db8::7"),
    ([b"[2001:db8::7]"], "2001:db8::7"),
    ([b"192.168.5.5:x"], None),
    ([b"[2001:db8::7]x"], None),
    ([b"not-an-ip, 10.9.0.1"], None),  # not an address: the peer stays the client
    ([b"192.168.5.5, unknown"], None),
    ([b"unknown, 192.168.5.5"], "192.168.5.5"),  # (never reached)
    ([b""], None),
])
def test_the_forwarded_client(values, client):
    assert forwarded_client(values, TRUSTED) == client


async def test_behind_a_trusted_proxy_the_forwarded_client_is_the_client(tmp_path: Path):
    log = tmp_path / "access.log"
    ings = [app_ingress("echo", "echo.example.com", "web"),
            app_ingress("allow", "allow.example.com", "web", {NGX + "allowlist-source-range": "192.168.0.0/16"}),
            app_ingress("rps", "rps.example.com", "web",
                        {NGX + "limit-rps": "1", NGX + "limit-burst-multiplier": "1"})]
    async with gateway_over(ings, "127.0.76.1", xff_trusted=[f"{PROXY}/32"], access_log=str(log)) as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}/x"

        async def get(host: str, peer: str, forwarded: str | None = None) -> tuple[int, dict]:
            headers = {"Host": host, **({"X-Forwarded-For": forwarded} if forwarded else {})}
            conn = aiohttp.TCPConnector(local_addr=(peer, 0))
            async with aiohttp.ClientSession(connector=conn) as s, s.get(url, headers=headers) as r:
                text = await r.text()
                return r.status, dict(json.loads(text)["headers"]) if r.status == 200 else {}

        status, h = await get("echo.example.com", PROXY, "192.168.5.5")
        assert status == 200
        assert h["X-Real-IP"] == "192.168.5.5" and h["X-Forwarded-For"] == f"192.168.5.5, {PROXY}"
        status, h = await get("echo.example.com", OTHER, "192.168.5.5")  # not trusted
        assert h["X-Real-IP"] == OTHER and h["X-Forwarded-For"] == f"192.168.5.5, {OTHER}"
        status, h = await get("echo.example.com", PROXY, "not-an-ip")
        assert h["X-Real-IP"] == PROXY
        # allowlist-source-range: the forwarded client is checked, not the proxy
        assert (await get("allow.example.com", PROXY, "192.168.5.5"))[0] == 200
        assert (await get("allow.example.com", PROXY, "8.8.8.8"))[0] == 403
        assert (await get("allow.example.com", PROXY))[0] == 403  # the proxy's own request
        assert (await get("allow.example.com", OTHER, "192.168.5.5"))[0] == 403
        # limit-rps: each forwarded client has its own bucket (1 r/s, burst 1)
        assert [(await get("rps.example.com", PROXY, "203.0.113.7"))[0] for _ in range(3)] == [200, 200, 503]
        assert (await get("rps.example.com", PROXY, "203.0.113.8"))[0] == 200
        await eventually(lambda: log.read_text().count("\n") == 11, within=3.0)
        logged = [json.loads(line)["remote_addr"] for line in log.read_text().splitlines()]
        assert logged[:3] == ["192.168.5.5", OTHER, PROXY]
        assert logged[-4:] == ["203.0.113.7"] * 3 + ["203.0.113.8"]
