"""The buffering annotations (gateway/routing/buffering.py): accepted without a problem when
nginx would take the value (the gateway always streams), reported when it would not;
proxy-body-size shares the size parser."""

from __future__ import annotations

import pytest
from test_gw_routing_kit import MSE, NGX, decide, main_and_canary, one, problems_for

from gateway.routing.buffering import BUFFERING_KEYS, parse_size
from gateway.routing.values import COMPATIBLE_KEYS


@pytest.mark.parametrize(("ann", "problem"), [
    ({NGX + "proxy-buffering": "off"}, None),
    ({NGX + "proxy-buffering": "ON"}, None),
    ({NGX + "proxy-request-buffering": "off"}, None),
    ({MSE + "proxy-buffer-size": "16k"}, None),
    ({NGX + "proxy-buffer-size": "8K", NGX + "proxy-buffers-number": "4",
      NGX + "proxy-max-temp-file-size": "0", NGX + "client-body-buffer-size": "1m"}, None),
    ({NGX + "proxy-buffering": "yes"}, "'yes' is not 'on' or 'off'; ignored"),
    ({NGX + "proxy-request-buffering": "true"}, "'true' is not 'on' or 'off'; ignored"),
    ({NGX + "proxy-buffer-size": "16kb"}, "'16kb' is not a size like '8k' or '1m'; ignored"),
    ({NGX + "client-body-buffer-size": "-1"}, "'-1' is not a size like '8k' or '1m'; ignored"),
    ({NGX + "proxy-buffers-number": "0"}, "0 is out of range [1, 1024]; ignored"),
    ({NGX + "proxy-buffers-number": "four"}, "'four' is not an integer; ignored"),
    ({NGX + "proxy-buffering": ""}, "empty value; ignored"),
])
def test_buffering_annotations(ann, problem):
    table, _, msgs = one(ann)
    assert msgs == ([problem] if problem else [])
    d = decide(table)  # served either way
    assert d is not None and d.backend.service == "main" and not d.deny


def test_a_canary_may_carry_them_too():
    _, problems = main_and_canary({NGX + "proxy-buffer-size": "16k"}, {NGX + "proxy-buffer-size": "16k",
                                                                      NGX + "proxy-buffering": "off"})
    assert problems_for(problems, "default/can") == [] and problems_for(problems, "default/main") == []


@pytest.mark.parametrize(("text", "size"), [
    ("0", 0), ("4096", 4096), ("8k", 8192), ("8K", 8192), ("1m", 1 << 20), ("2G", 2 << 30),
    ("", None), ("8kb", None), ("1.5m", None), ("-1", None), (" 8k", None),
])
def test_nginx_sizes(text, size):
    assert parse_size(text) == size


def test_the_keys_are_known():
    assert BUFFERING_KEYS <= COMPATIBLE_KEYS
