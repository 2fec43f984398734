"""The per-route families GatewayMetrics writes itself are the ones prometheus_client would
write from the same counts, in both exposition formats, and they splice into a scrape."""

from __future__ import annotations

import aiohttp
import pytest
from gwkit import LibraryFamilies
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from gateway.metrics import GatewayMetrics
from mcs_controller.ops.admin import AdminServer

ROUTES = [
    "demo/shop|shop.example.com/",
    'demo/odd|q.example.com/a"quoted"\\back\\slash',  # label values that need escaping
    "demo/lines|x.example.com/new\nline",
    "demo/ünï|ü.example.com/π",
]


def filled() -> GatewayMetrics:
    m = GatewayMetrics(CollectorRegistry())
    for i, route in enumerate(ROUTES):
        for j in range(i + 1):
            m.observe(route, "east", 200, 0.0004 * (j + 1) * 10 ** j)
        m.observe(route, "west", 503, 7.5)
        m.observe(route, "", 404, 0.0)  # answered without an upstream: counted, not timed
    m.routes[ROUTES[0]]["east"].statuses[200] = 1234567  # Go's exponent formatting
    return m


def samples(families) -> tuple[list, set]:
    names, found = [], set()
    for family in families:
        names.append((family.name, family.type, family.documentation))
        for s in family.samples:
            found.add((s.name, tuple(sorted(s.labels.items())), s.value))
    return names, found


@pytest.mark.parametrize("openmetrics", [False, True])
def test_render_is_what_prometheus_client_writes_from_the_same_counts(openmetrics: bool) -> None:
    m = filled()
    reference = CollectorRegistry()
    reference.register(LibraryFamilies(m))
    if openmetrics:
        ours = parse_openmetrics(m.render(True) + "# EOF\n")
        theirs = parse_openmetrics(generate_openmetrics(reference).decode())
    else:
        ours = parse_text(m.render(False))
        theirs = parse_text(generate_latest(reference).decode())
    ours_names, ours_samples = samples(ours)
    theirs_names, theirs_samples = samples(theirs)
    assert ours_names == theirs_names
    assert ours_samples == theirs_samples
    assert any(value == 1234567 for _, _, value in ours_samples)
    # the byte form too, for the plain text format (what most scrapes see)
    if not openmetrics:
        assert sorted(m.render(False).splitlines()) == sorted(
            line for line in generate_latest(reference).decode().splitlines())


def test_an_empty_gateway_renders_the_families_without_samples() -> None:
    m = GatewayMetrics(CollectorRegistry())
    names, found = samples(parse_openmetrics(m.render(True) + "# EOF\n"))
    assert [n for n, _, _ in names] == ["gateway_requests", "gateway_upstream_latency_seconds"]
    assert found == set()


@pytest.mark.parametrize("accept, openmetrics", [
    ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", True),
    ("text/plain", False),
])
async def test_a_scrape_splices_the_rendered_families_into_the_registry(accept: str, openmetrics: bool) -> None:
    registry = CollectorRegistry()
    m = GatewayMetrics(registry)
    m.observe(ROUTES[1], "east", 200, 0.002)
    m.retry(ROUTES[1])
    server = AdminServer("127.0.0.1", 0, registry, ready=lambda: True, encode_aside=True,
                         render=m.render)
    await server.start()
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{server.url}/metrics",
                                                       headers={"Accept": accept}) as r:
            text = await r.text()
            assert r.headers["Content-Type"].startswith(
                "application/openmetrics-text" if openmetrics else "text/plain")
    finally:
        await server.stop()
    # the strict OpenMetrics parser wants one # EOF, at the very end
    families = {f.name: f for f in (parse_openmetrics(text) if openmetrics else parse_text(text))}
    requests = families["gateway_requests"]
    assert [(s.labels["route"], s.value) for s in requests.samples] == [(ROUTES[1], 1)]
    assert families["gateway_retries"].samples[0].value == 1  # from the registry's collect
    latency = families["gateway_upstream_latency_seconds"]
    count = [s for s in latency.samples if s.name.endswith("_count")]
    assert [s.value for s in count] == [1]
