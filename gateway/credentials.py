"""Basic and digest authentication's check (gateway/routing/basicauth.py): users and password
hashes from the Secret the route names, read as it is when the request comes (so a changed
Secret applies at once), checked as nginx's `auth_basic` does (digest: gateway/digest.py).

Hashes, as nginx reads them: `{PLAIN}`, `{SHA}`, `{SSHA}`, `$apr1$` (htpasswd's default),
and what the system's crypt(3) knows (`$2y$`/`$2b$` bcrypt, `$5$`, `$6$`, `$1$`, DES).
A slow hash (apr1's 1000 rounds, crypt(3), bcrypt's tens of milliseconds) is computed in a
worker thread, never on the event loop, and every (Authorization, hash) pair's outcome is
remembered by digest, so each is computed once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import warnings
from dataclasses import dataclass, field

from gateway.digest import DigestNonces
from gateway.routing.basicauth import BasicAuth
from gateway.tls import SecretLookup
from gateway.variables import basic_token

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt as _crypt  # removed in Python 3.13: then crypt(3) hashes are refused
    except ImportError:  # pragma: no cover - depends on the Python build
        _crypt = None  # type: ignore[assignment]

log = logging.getLogger("gateway.auth")

_ITOA64 = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: Checked (Authorization, hash) digests kept, at most.
MEMO_SIZE = 4096
#: Hashes cheap enough to check on the event loop.
_FAST = ("{PLAIN}", "{SHA}", "{SSHA}")


@dataclass(frozen=True)
class SlowCheck:
    """A password to check against a slow hash, off the event loop."""

    password: str = field(repr=False)
    hashed: str = field(repr=False)
    memo: bytes = field(repr=False)


def apr1(password: bytes, salt: bytes, magic: bytes = b"$apr1$") -> bytes:
    """The MD5-based crypt of Apache's htpasswd (magic `$apr1$`; `$1$` is the same with its own
    magic)."""
    salt = salt[:8]
    final = hashlib.md5(password + salt + password).digest()
    ctx = password + magic + salt
    n = len(password)
    while n > 0:
        ctx += final[:min(16, n)]
        n -= 16
    i = len(password)
    while i:
        ctx += b"\0" if i & 1 else password[:1]
        i >>= 1
    final = hashlib.md5(ctx).digest()
    for i in range(1000):
        step = password if i & 1 else final
        if i % 3:
            step += salt
        if i % 7:
            step += password
        step += final if i & 1 else password
        final = hashlib.md5(step).digest()
    out = bytearray()
    for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        v = (final[a] << 16) | (final[b] << 8) | final[c]
        for _ in range(4):
            out.append(_ITOA64[v & 0x3F])
            v >>= 6
    v = final[11]
    for _ in range(2):
        out.append(_ITOA64[v & 0x3F])
        v >>= 6
    return magic + salt + b"$" + bytes(out)


def verify(password: str, hashed: str) -> bool:
    pw = password.encode("utf-8")
    if hashed.startswith("{PLAIN}"):
        return hmac.compare_digest(pw, hashed[7:].encode("utf-8"))
    if hashed.startswith("{SHA}"):
        return hmac.compare_digest(base64.b64encode(hashlib.sha1(pw).digest()), hashed[5:].encode())
    if hashed.startswith("{SSHA}"):
        try:
            raw = base64.b64decode(hashed[6:], validate=True)
        except (binascii.Error, ValueError):
            return False
        return len(raw) > 20 and hmac.compare_digest(hashlib.sha1(pw + raw[20:]).digest(), raw[:20])
    if hashed.startswith("$apr1$"):
        salt = hashed[6:].partition("$")[0].encode()
        return hmac.compare_digest(apr1(pw, salt), hashed.encode())
    if _crypt is None:
        return False
    try:
        computed = _crypt.crypt(password, hashed)
    except (OSError, ValueError):
        return False
    return computed is not None and hmac.compare_digest(computed.encode(), hashed.encode())


def parse_users(obj: dict, secret_type: str, kind: str = "basic") -> dict[str, str] | str:
    """user -> hash from a Secret (auth-file: its `auth` key, htpasswd lines; auth-map: every
    key a user), or why it cannot be used. Digest: "user:realm" -> HA1 (htdigest lines
    `user:realm:HA1`; auth-map values `realm:HA1`)."""
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        return "has no data"
    try:
        decoded = {str(k): base64.b64decode(v, validate=True).decode("utf-8")
                   for k, v in data.items()}
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        return "has data that is not base64 UTF-8"
    if secret_type == "auth-map":
        lines = [f"{k}:{v.strip()}" for k, v in decoded.items() if v.strip()]
    elif "auth" in decoded:
        lines = [line.strip() for line in decoded["auth"].splitlines()]
    else:
        return "has no auth key"
    users = {}
    for line in lines:
        # basic: user:hash; digest: user:realm:HA1, keyed "user:realm"
        user, sep, hashed = line.rpartition(":") if kind == "digest" else line.partition(":")
        if sep and user and not user.startswith("#") and (kind != "digest" or ":" in user):
            users[user] = hashed.strip()
    return users or "lists no user"


class CredentialStore:
    """Checks an Authorization header against a route's BasicAuth."""

    def __init__(self, lookup: SecretLookup | None = None) -> None:
        self.lookup: SecretLookup = lookup or (lambda ns, name: None)
        self._users: dict[tuple[str, str, str, str], tuple[str, dict[str, str] | str]] = {}
        self._verified: dict[bytes, bool] = {}  # (Authorization, hash) digest -> outcome
        self._reported: set[tuple[tuple[str, str], str]] = set()
        self.digest = DigestNonces()

    def check(self, auth: BasicAuth, authorization: str | None, method: bytes = b"GET",
              uri: bytes = b"/") -> int | SlowCheck:
        """0: let through; 401: ask again (with `challenge`); 503: the Secret cannot be used;
        400: a digest header made for another URI; 500: the check itself failed (logged; the
        request is refused, never let through); a SlowCheck: the password's hash is slow to
        compute, `await verify_slow(it)`."""
        try:
            return self._check(auth, authorization, method, uri)
        except Exception:
            log.exception("%s auth check failed on %r", auth.kind, uri)
            return 500

    def _check(self, auth: BasicAuth, authorization: str | None, method: bytes,
               uri: bytes) -> int | SlowCheck:
        users = self._table(auth)
        if isinstance(users, str):
            if (auth.secret, users) not in self._reported:
                self._reported.add((auth.secret, users))
                log.warning("%s auth secret %s %s: answering 503", auth.kind, "/".join(auth.secret), users)
            return 503
        if auth.kind == "digest":
            return self.digest.check(users, auth.realm, method.decode("latin-1"),
                                     uri.decode("latin-1"), authorization)
        token = basic_token(authorization) if authorization else None
        if token is None:
            return 401
        try:
            user, sep, password = token.decode("utf-8").partition(":")
        except UnicodeDecodeError:
            return 401
        hashed = users.get(user)
        if not sep or hashed is None:
            return 401
        memo = hashlib.sha256(f"{authorization}\0{hashed}".encode()).digest()
        known = self._verified.get(memo)
        if known is not None:
            return 0 if known else 401
        if not hashed.startswith(_FAST):
            return SlowCheck(password, hashed, memo)
        return self._remember(memo, verify(password, hashed))

    def challenge(self, auth: BasicAuth, authorization: str | None) -> bytes:
        """The WWW-Authenticate line of a 401 (digest: a fresh nonce, stale when only the old
        one was refused)."""
        if auth.kind == "digest":
            return self.digest.challenge(auth.realm, authorization)
        return auth.challenge

    async def verify_slow(self, slow: SlowCheck) -> int:
        """`verify` in a worker thread (crypt(3) and apr1 take milliseconds; bcrypt tens), so
        the event loop keeps serving meanwhile; the outcome is remembered like any."""
        ok = await asyncio.get_running_loop().run_in_executor(None, verify, slow.password, slow.hashed)
        return self._remember(slow.memo, ok)

    def _remember(self, memo: bytes, ok: bool) -> int:
        if len(self._verified) >= MEMO_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[memo] = ok
        return 0 if ok else 401

    def _table(self, auth: BasicAuth) -> dict[str, str] | str:
        obj = self.lookup(*auth.secret)
        if obj is None:
            return "not found"
        key = (*auth.secret, auth.secret_type, auth.kind)
        stamp = str((obj.get("metadata") or {}).get("resourceVersion")
                    or repr(sorted((obj.get("data") or {}).items())))
        cached = self._users.get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, parse_users(obj, auth.secret_type, auth.kind))
            self._users[key] = cached
        return cached[1]
