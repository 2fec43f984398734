"""The gateway-wide auth check (`--global-auth-*`, ingress-nginx's global-auth-* ConfigMap
keys), `enable-global-auth`, and `no-auth-locations`: parsing and route building
(table-driven), the flags, and the check through the gateway with a real auth service."""

from __future__ import annotations

import copy

import aiohttp
import pytest
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_extauth import auth_service
from test_gw_routing_kit import NGX, build, decide, one, path, problems_for, rule, simple
from test_gw_routing_kit import ingress as kit_ingress

from gateway.__main__ import parse_args
from gateway.routing.extauth import AuthScope, global_auth_scope

HOST = "api.example.com"
ACME = "/.well-known/acme-challenge"
SCOPE = global_auth_scope({"global-auth-url": "http://auth.local/global",
                           "global-auth-response-headers": "X-User"})


@pytest.mark.parametrize("settings, locations, error", [
    ({"global-auth-method": "POST"}, ACME, "global-auth-method: set without global-auth-url"),
    ({"global-auth-url": "auth.local"}, ACME, "global-auth-url: 'auth.local' is not an http(s) URL"),
    ({"global-auth-url": "http://a/", "global-auth-method": "FETCH"}, ACME,
     "global-auth-method: 'FETCH' is not an HTTP method"),
    ({"global-auth-url": "http://a/", "global-auth-always-set-cookie": "maybe"}, ACME,
     "global-auth-always-set-cookie: 'maybe' is not a boolean"),
    ({"global-auth-url": "http://a/", "global-auth-cache-key": "$request_time"}, ACME,
     "global-auth-cache-key: nginx variable(s) $request_time not supported"),
    ({"global-auth-snippet": "x"}, ACME, "global-auth-snippet: not a global auth setting"),
])
def test_settings_that_cannot_be_used_stop_the_start(settings, locations, error):
    with pytest.raises(ValueError) as exc:
        global_auth_scope(settings, locations)
    assert str(exc.value) == error


def test_settings_read_as_the_annotations_of_the_same_suffix():
    scope = global_auth_scope({"global-auth-url": "https://auth.local/check", "global-auth-method": "POST",
                               "global-auth-signin": "https://login.example.com/",
                               "global-auth-cache-key": "$remote_user", "global-auth-request-redirect": None,
                               "global-auth-response-headers": ""}, " /healthz, /.well-known/ ")
    check = scope.check
    assert check is not None and check.broken is None
    assert (check.url, check.method, check.response_headers) == ("https://auth.local/check", "POST", ())
    assert check.signin == "https://login.example.com/?rd=$pass_access_scheme://$http_host$escaped_request_uri"
    assert check.cache_key == "$remote_user" and check.describe["global"] is True
    assert scope.exempt == ("/healthz", "/.well-known/")
    assert global_auth_scope({}) == AuthScope(None, (ACME,))  # nothing set: no check


@pytest.mark.parametrize("ann, want", [
    ({}, "http://auth.local/global"),  # no auth-url of its own: the global check
    ({NGX + "auth-url": "http://auth.local/own"}, "http://auth.local/own"),  # its own wins
    ({NGX + "enable-global-auth": "false"}, None),  # opted out
    ({NGX + "enable-global-auth": "true"}, "http://auth.local/global"),
    ({NGX + "enable-global-auth": "false", NGX + "auth-url": "http://auth.local/own"},
     "http://auth.local/own"),  # opting out of the global check keeps its own
])
def test_which_check_a_route_gets(ann, want):
    table, _, msgs = one(ann, auth_scope=SCOPE)
    auth = decide(table).auth
    assert msgs == [] and (auth.url if auth is not None else None) == want
    table, _, _ = one(ann)  # no global check configured
    auth = decide(table).auth
    assert (auth.url if auth is not None else None) == (want if "auth-url" in str(ann) else None)


def test_no_auth_locations_skip_every_check_but_a_denial():
    basic = {NGX + "auth-type": "basic", NGX + "auth-secret": "users"}
    acme = kit_ingress("acme", rule("a.example.com", path(f"{ACME}/", "main"), path("/app", "main")),
                       ann={NGX + "auth-url": "http://auth.local/own", **basic})
    broken = simple("broken", host="b.example.com", p=f"{ACME}/x", ann={NGX + "auth-url": "not a url"})
    table, _ = build(acme, broken, auth_scope=SCOPE)
    exempt = decide(table, p=f"{ACME}/token")
    assert exempt.auth is None and exempt.basic_auth is None  # served unchecked, as ingress-nginx
    checked = decide(table, p="/app")
    assert checked.auth.url == "http://auth.local/own" and checked.basic_auth is not None
    assert decide(table, host="b.example.com", p=f"{ACME}/x/y").auth.broken  # still 503
    table, _ = build(simple("g", p=f"{ACME}/"), auth_scope=AuthScope(SCOPE.check, ()))
    assert decide(table, p=f"{ACME}/t").auth is SCOPE.check  # an empty list exempts nothing


def test_auth_settings_without_auth_url_are_reported():
    _, problems, _ = one({NGX + "auth-method": "POST", NGX + "auth-cache-key": "$remote_user"},
                         auth_scope=SCOPE)
    assert problems_for(problems, "default/ing", "auth-method") == ["needs auth-url; ignored"]
    assert problems_for(problems, "default/ing", "auth-cache-key") == ["needs auth-url; ignored"]


def test_the_flags(capsys):
    base = ["--config", "fleet.yaml"]
    args = parse_args([*base, "--global-auth-url", "http://auth.local/", "--no-auth-locations", "/a,/b"])
    assert args.auth_scope.check.url == "http://auth.local/" and args.auth_scope.exempt == ("/a", "/b")
    assert parse_args(base).auth_scope == AuthScope()
    with pytest.raises(SystemExit) as exc:
        parse_args([*base, "--global-auth-url", "http://auth.local/", "--global-auth-method", "FETCH"])
    assert exc.value.code == 2
    assert "--global-auth-method: 'FETCH' is not an HTTP method" in capsys.readouterr().err


async def test_the_global_check_through_the_gateway():
    async with auth_service() as (svc, base):
        scope = global_auth_scope({"global-auth-url": f"{base}/global",
                                   "global-auth-response-headers": "X-User"})
        acme = app_ingress("acme", HOST, "web")
        acme["spec"]["rules"][0]["http"]["paths"][0]["path"] = ACME
        own = app_ingress("own", "own.example.com", "web", {NGX + "auth-url": f"{base}/own"})
        public = app_ingress("public", "public.example.com", "web", {NGX + "enable-global-auth": "false"})
        ings = [app_ingress("api", HOST, "web"), acme, own, public]
        async with gateway_over(copy.deepcopy(ings), "127.0.77.9", auth_scope=scope) as (app, up), \
                aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{app.proxy.port}"
            async with s.get(f"{url}/x", headers={"Host": HOST}) as r:
                assert r.status == 401
            async with s.get(f"{url}/x", headers={"Host": HOST, "Authorization": "Bearer good"}) as r:
                assert r.status == 200
            assert up.requests[-1].header("x-user") == "alice"  # global-auth-response-headers
            assert [p for _, p, _, _ in svc.seen] == ["/global", "/global"]
            async with s.get(f"{url}/x", headers={"Host": "own.example.com", "Authorization": "Bearer good"}) as r:
                assert r.status == 200 and svc.seen[-1][1] == "/own"
            checks = len(svc.seen)
            async with s.get(f"{url}{ACME}/token", headers={"Host": HOST}) as r:
                assert r.status == 200  # no-auth-locations: unchecked
            async with s.get(f"{url}/x", headers={"Host": "public.example.com"}) as r:
                assert r.status == 200  # enable-global-auth: "false"
            assert len(svc.seen) == checks
            route = next(r for r in app.table.describe() if r["host"] == HOST and r["path"] == "/")
            assert route["externalAuth"]["global"] is True
