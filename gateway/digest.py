"""HTTP Digest authentication (RFC 7616 with MD5 and `qop=auth`), as ingress-nginx's
`auth-type: digest` (nginx-http-auth-digest) checks it: users from an htdigest file
(`user:realm:MD5(user:realm:password)`), the challenge
`Digest algorithm="MD5", qop="auth", realm="...", nonce="..."`.

Nonces need no table: each is the time it was issued and an HMAC of it under a key made at
start, so any nonce this process issued is recognised until it is `NONCE_TIMEOUT` old (then
the answer is a 401 with `stale=true`, and clients retry with the new nonce without asking
the user). Replays are refused: each nonce's request counter (`nc`) must grow, and a nonce
serves at most `NONCE_USES` requests.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict

from gateway.routing.basicauth import quote_realm

#: Seconds a nonce is accepted after it was issued (nginx-http-auth-digest's auth_digest_timeout).
NONCE_TIMEOUT = 60.0
#: Requests one nonce may authenticate (its auth_digest_replays).
NONCE_USES = 20
#: Nonces whose counters are tracked, at most (the oldest are forgotten, and so refused).
TRACKED = 8192
_PARAM = re.compile(r'\s*([A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*,?')


def parse_digest(authorization: str) -> dict[str, str] | None:
    """The parameters of a `Digest` Authorization header (names lower-cased); None: not one."""
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[m.group(1).lower()] = value
        pos = m.end()
    return params


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def expected_response(ha1: str, method: str, params: dict[str, str]) -> str:
    """RFC 7616 `response` for qop=auth: MD5(HA1:nonce:nc:cnonce:qop:MD5(method:uri))."""
    ha2 = _md5(f"{method}:{params['uri']}")
    return _md5(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:{params['qop']}:{ha2}")


class DigestNonces:
    """Issues nonces and checks a request's Digest header against an htdigest table."""

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._counters: OrderedDict[str, tuple[int, int]] = OrderedDict()  # nonce -> (nc, uses)
        #: Nonces issued up to this age are refused unless tracked: one was forgotten.
        self._forgotten_before = 0.0

    def issue(self, now: float | None = None) -> str:
        stamp = f"{int((now if now is not None else time.time()) * 1000):x}"
        return stamp + hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def challenge(self, realm: str, authorization: str | None = None) -> bytes:
        """The WWW-Authenticate line of a 401, with a fresh nonce; `stale=true` when the
        refused header was right but for its nonce being too old or used up."""
        stale = authorization is not None and self.check_stale(authorization)
        line = (f'WWW-Authenticate: Digest algorithm="MD5", qop="auth", realm="{quote_realm(realm)}", '
                f'nonce="{self.issue()}"' + (', stale="true"' if stale else "") + "\r\n")
        return line.encode("latin-1", "replace")

    def check_stale(self, authorization: str) -> bool:
        params = parse_digest(authorization)
        if params is None or "nonce" not in params:
            return False
        issued = self._issued(params["nonce"])
        return issued is not None and self._stale(params["nonce"], issued, time.time())

    def _stale(self, nonce: str, issued: float, now: float) -> bool:
        """Too old, used up, or (untracked and issued before a forgotten one) maybe replayed."""
        counters = self._counters.get(nonce)
        if now - issued > NONCE_TIMEOUT:
            return True
        return counters[1] >= NONCE_USES if counters is not None else issued <= self._forgotten_before

    def _issued(self, nonce: str) -> float | None:
        stamp, mac = nonce[:-32], nonce[-32:]
        good = hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        if not stamp or not hmac.compare_digest(mac.encode("utf-8", "replace"), good.encode()):
            return None
        try:
            return int(stamp, 16) / 1000
        except ValueError:
            return None

    def check(self, table: dict[str, str], realm: str, method: str, uri: str,
              authorization: str | None, now: float | None = None) -> int:
        """0: let through; 401: challenge again; 400: a header made for another request
        (nginx-http-auth-digest answers 400 too). `table`: "user:realm" -> HA1
        (gateway/credentials.py reads it from the Secret)."""
        params = parse_digest(authorization) if authorization else None
        if params is None:
            return 401
        needed = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
        if any(k not in params for k in needed) or params["qop"] != "auth" \
                or params.get("algorithm", "MD5").upper() != "MD5":
            return 401
        if params["uri"] != uri:
            return 400  # a header made for another request
        ha1 = table.get(f"{params['username']}:{params['realm']}")
        if params["realm"] != realm or ha1 is None:
            return 401
        if not hmac.compare_digest(expected_response(ha1.lower(), method, params).encode(),
                                   params["response"].lower().encode("utf-8", "replace")):
            return 401  # (bytes: compare_digest refuses non-ASCII text)
        now = time.time() if now is None else now
        nonce = params["nonce"]
        issued = self._issued(nonce)
        if issued is None:
            return 401  # not ours (another replica, a restart): a fresh one
        try:
            nc = int(params["nc"], 16)
        except ValueError:
            return 400
        if self._stale(nonce, issued, now):
            return 401  # (the challenge says stale="true": check_stale)
        last, uses = self._counters.get(nonce) or (0, 0)
        if nc <= last:
            return 401  # a replay
        self._counters[nonce] = (nc, uses + 1)
        self._counters.move_to_end(nonce)
        while len(self._counters) > TRACKED:
            old, _ = self._counters.popitem(last=False)
            self._forgotten_before = max(self._forgotten_before, self._issued(old) or 0.0)
        return 0
