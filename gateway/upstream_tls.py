"""Client TLS contexts for proxy-ssl-* profiles (gateway.types.UpstreamTLS), from the hub's
Secrets: `ca.crt` (required, as ingress-nginx) holds the certificates a pod's is checked
against when the profile verifies; `tls.crt` + `tls.key`, when both are there, are presented
to pods that ask for a client certificate.

A context is made once per profile and Secret version and reused by every connection; a
Secret that cannot be used makes the routes answer 503 (nginx would not load such a
configuration), named once in the log.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import ssl
import tempfile
from collections.abc import Callable

from gateway.types import UpstreamTLS

log = logging.getLogger("gateway.upstream_tls")

#: Minimum versions set as asked; below these the context keeps OpenSSL's own floor (TLS
#: 1.2 on current distributions), where ingress-nginx's default list starts at TLSv1.
_MODERN = frozenset({"TLSv1_2", "TLSv1_3"})

SecretLookup = Callable[[str, str], "dict | None"]


class UpstreamTLSError(OSError):
    """The profile's Secret cannot be used (raised where a connection was to be made)."""


class UpstreamTLSStore:
    def __init__(self, lookup: SecretLookup | None = None) -> None:
        self.lookup: SecretLookup = lookup or (lambda ns, name: None)
        #: profile -> (the Secret's version, (context, server_hostname) or why not)
        self._made: dict[UpstreamTLS, tuple[str, tuple[ssl.SSLContext, str] | str]] = {}
        self._reported: set[tuple[UpstreamTLS, str]] = set()
        #: The last profile asked for, the Secret object it was answered from and the answer:
        #: a route's requests ask again and again, and the informer replaces a Secret's object
        #: on every change, so the same two objects need no version or dict lookup (whose
        #: profile hash covers ten fields).
        self._last: tuple[UpstreamTLS | None, dict | None, tuple[ssl.SSLContext, str] | str] = (
            None, None, "")

    def problem(self, profile: UpstreamTLS) -> str | None:
        """Why connections of this profile cannot be made (the routes answer 503), or None."""
        if profile.broken is not None:
            return profile.broken
        made = self._context(profile)
        if isinstance(made, str):
            if (profile, made) not in self._reported:
                self._reported.add((profile, made))
                log.warning("proxy-ssl-secret %s %s: answering 503", "/".join(profile.secret), made)
            return made
        return None

    def context(self, profile: UpstreamTLS) -> tuple[ssl.SSLContext, str]:
        """The client context and the server_hostname for a connection of this profile."""
        made = self._context(profile) if profile.broken is None else profile.broken
        if isinstance(made, str):
            raise UpstreamTLSError(f"proxy-ssl-secret {'/'.join(profile.secret)} {made}")
        return made

    def _context(self, profile: UpstreamTLS) -> tuple[ssl.SSLContext, str] | str:
        obj = self.lookup(*profile.secret)
        if obj is None:
            return "not found"
        last_profile, last_obj, last_made = self._last
        if profile is last_profile and obj is last_obj:
            return last_made
        made = self._context_of(profile, obj)
        self._last = (profile, obj, made)
        return made

    def _context_of(self, profile: UpstreamTLS, obj: dict) -> tuple[ssl.SSLContext, str] | str:
        meta = obj.get("metadata") or {}
        version = str(meta.get("resourceVersion") or repr(sorted((obj.get("data") or {}).items())))
        cached = self._made.get(profile)
        if cached is not None and cached[0] == version:
            return cached[1]
        made = _make(profile, obj.get("data") or {})
        if len(self._made) >= 256:
            self._made.clear()
        self._made[profile] = (version, made)
        return made


def _make(profile: UpstreamTLS, data: dict) -> tuple[ssl.SSLContext, str] | str:
    try:
        pem = {k: base64.b64decode(data[k], validate=True) for k in ("ca.crt", "tls.crt", "tls.key")
               if data.get(k)}
    except (binascii.Error, ValueError, TypeError):
        return "has data that is not base64"
    if "ca.crt" not in pem:
        return "has no ca.crt"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cadata=pem["ca.crt"].decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError):
        return "has a ca.crt that is not PEM certificates"
    if "tls.crt" in pem and "tls.key" in pem:
        why = _load_client_cert(ctx, pem["tls.crt"], pem["tls.key"])
        if why is not None:
            return why
    try:
        if profile.min_version in _MODERN:  # older ones: as the system's OpenSSL allows
            ctx.minimum_version = ssl.TLSVersion[profile.min_version]
        ctx.maximum_version = ssl.TLSVersion[profile.max_version]
        ctx.set_ciphers(profile.ciphers)
    except (ssl.SSLError, ValueError, KeyError) as exc:
        return f"cannot be used with proxy-ssl-protocols/-ciphers ({exc})"
    ctx.check_hostname = profile.verify
    ctx.verify_mode = ssl.CERT_REQUIRED if profile.verify else ssl.CERT_NONE
    # server_hostname is both the SNI sent and the name checked: Python's ssl cannot check a
    # name without sending it, so a verifying profile sends SNI whatever proxy-ssl-server-name
    # says (a difference from nginx, harmless to a pod that serves one certificate).
    return ctx, profile.server_name if profile.sni or profile.verify else ""


def _load_client_cert(ctx: ssl.SSLContext, crt: bytes, key: bytes) -> str | None:
    """`load_cert_chain` reads files only: a private temporary file, removed at once."""
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(crt + b"\n" + key)
        ctx.load_cert_chain(path)
    except (ssl.SSLError, ValueError) as exc:
        return f"has a tls.crt/tls.key pair that cannot be used ({exc.__class__.__name__})"
    finally:
        os.unlink(path)
    return None
