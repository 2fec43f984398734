"""server-alias (gateway/routing/aliases.py): more names for an Ingress's host, table-driven
and through the gateway with a real HTTP client."""

from __future__ import annotations

import json

import pytest
from test_gw_app import gateway_over, get
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import NGX, build, ingress, path, problems_for, rule, service_of, simple


def aliased(value: str, **kw) -> dict:
    return simple("main", host="a.example.com", svc="main", ann={NGX + "server-alias": value}, **kw)


def test_an_alias_is_served_by_its_hosts_rules():
    ing = ingress("two", rule("a.example.com", path("/", "main"), path("/api", "api")),
                  rule("b.example.com", path("/", "other")),
                  ann={NGX + "server-alias": "www.example.com, A.example.org"})
    table, problems = build(ing)
    assert problems_for(problems, "default/two") == []
    assert service_of(table, "www.example.com", "/api/x") == "api"  # the first rule host's rules
    assert service_of(table, "a.example.org", "/") == "main"
    assert service_of(table, "nope.example.com") is None
    assert table.describe_aliases() == {"a.example.org": "a.example.com", "www.example.com": "a.example.com"}


@pytest.mark.parametrize("value, others, message", [
    ("b.example.com", [simple("b", host="b.example.com", svc="other")],
     "alias 'b.example.com' is a rule host (of this or another Ingress); ignored"),
    ("*.example.org", [], "alias '*.example.org': wildcard and regex aliases are not supported; ignored"),
    ("~^www\\d+\\.example\\.com$", [], "wildcard and regex aliases are not supported"),
    ("bad_name!", [], "alias 'bad_name!':"),
])
def test_aliases_that_are_not_taken(value, others, message):
    table, problems = build(aliased(value, age=1), *others)
    assert any(message in m for m in problems_for(problems, "default/main", "server-alias"))
    assert table.describe_aliases() == {}
    if others:
        assert service_of(table, "b.example.com") == "other"  # the real host keeps its rules


def test_the_oldest_ingress_keeps_an_alias():
    older = aliased("shared.example.com", age=1)
    newer = simple("newer", host="c.example.com", svc="other", age=2,
                   ann={NGX + "server-alias": "shared.example.com"})
    table, problems = build(newer, older)
    assert service_of(table, "shared.example.com") == "main"
    assert problems_for(problems, "default/newer", "server-alias") == [
        "alias 'shared.example.com' is already an alias of default/main; ignored"]


async def test_an_alias_through_the_gateway():
    ing = app_ingress("site", "site.example.com", "web", {NGX + "server-alias": "www.site.example.com"})
    async with gateway_over([ing], "127.0.83.1", admin=True) as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}/hello"
        status, _ = await get(url, "www.site.example.com:8080")
        assert status == 200 and up.requests[-1].header("host") == "www.site.example.com:8080"
        assert (await get(url, "other.example.com"))[0] == 404
        status, body = await get(f"http://127.0.0.1:{app.admin_port}/routes", "x")
        assert json.loads(body)["serverAliases"] == {"www.site.example.com": "site.example.com"}
