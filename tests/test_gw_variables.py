"""gateway/variables.py: the one nginx-variable grammar (upstream-hash-by, the auth-url
family, mirror-target), table-driven."""

from __future__ import annotations

import base64

import pytest

from gateway.types import RequestView
from gateway.variables import compile_hash_key, cookie_value, expand, unknown

HEADERS = {"host": "API.example.com:8443", "x-token": "t1", "cookie": "a=1; Session=abc, b=2",
           "authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
VIEW = RequestView("POST", "/a b?x=1&Uid=42", "api.example.com", HEADERS, "10.0.0.7", "https")


@pytest.mark.parametrize("template, want", [
    ("https://$host/oauth2/auth", "https://api.example.com/oauth2/auth"),
    ("$scheme://$http_host$request_uri", "https://API.example.com:8443/a b?x=1&Uid=42"),
    ("$pass_access_scheme://$best_http_host$escaped_request_uri",
     "https://API.example.com:8443%2Fa%20b%3Fx%3D1%26Uid%3D42"),
    ("$uri|$args|$query_string|$request_method", "/a b|x=1&Uid=42|x=1&Uid=42|POST"),
    ("${arg_uid}-$arg_x-$arg_none.", "42-1-."),  # ${} and argument names case-insensitive
    ("$http_x_token|$cookie_session|$cookie_b|$cookie_none|$http_none", "t1|abc|2||"),
    ("$remote_addr $binary_remote_addr $remote_user", "10.0.0.7 10.0.0.7 alice"),
    ("$hostname", None),  # not $host followed by "name": an unknown variable
    ("http://auth.local/check", "http://auth.local/check"),
])
def test_expand(template, want):
    if want is None:
        assert unknown(template) == "nginx variable(s) $hostname not supported"
        with pytest.raises(ValueError):
            expand(template, VIEW)
    else:
        assert unknown(template) is None and expand(template, VIEW) == want


def test_remote_user_needs_basic_credentials():
    bearer = RequestView("GET", "/", "h", {"authorization": "Bearer x"})
    assert expand("[$remote_user]", bearer) == "[]"
    assert expand("$scheme", bearer) == "http"  # the default listener scheme


@pytest.mark.parametrize("header, name, want", [
    ("a=1; Session=abc", "session", "abc"),
    ("a=1, session=2", "session", "2"),  # repeated Cookie headers arrive joined with ", "
    ("sessionx=1", "session", None),
    ("", "a", None),
])
def test_cookie_value(header, name, want):
    assert cookie_value(header, name) == want


def test_hash_keys_need_a_variable_we_know():
    with pytest.raises(ValueError, match="names no variable"):
        compile_hash_key("constant")
    with pytest.raises(ValueError, match="unsupported variable"):
        compile_hash_key("$request_time")
    assert compile_hash_key("$cookie_session")(VIEW) == "abc"
