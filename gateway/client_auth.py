"""Client certificates on the HTTPS listener (ingress-nginx `auth-tls-*`): the TLS side.

For a host whose Ingress sets `auth-tls-secret` (gateway/routing/clientcert.py), a handshake
whose server name (SNI) is that host switches to a context holding the host's certificate
and the Secret's CAs, and asks the client for a certificate, as nginx's `ssl_verify_client`
does: the client may send none, and a certificate that does not verify does not fail the
handshake. The outcome is judged per request (`ClientCertCheck.admit`), so nginx's answers
(400, the error page, 421, 403) are possible.

Python's `ssl` cannot ask one connection of a listener for a certificate and not another,
nor keep a failed verification from aborting the handshake. nginx does both from its SNI
callback with `SSL_set_verify`; this module does the same through ctypes on the OpenSSL that
`_ssl` uses (`_OpenSSL`). The pointers it reads are checked against OpenSSL's own answers
before anything is called with them; when that check fails, client certificates are
refused (the hosts answer 503) rather than skipped.
"""

from __future__ import annotations

import _ssl
import base64
import binascii
import ctypes
import hashlib
import ssl
from collections.abc import Callable
from contextlib import AbstractContextManager
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.routing.clientcert import NO_PEER, ClientCertCheck, ClientCertPolicy, PeerCertificate

SSL_VERIFY_PEER = 1
SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 2
X509_V_FLAG_CRL_CHECK = 0x4  # the leaf's revocation, against the CRLs in the store
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_PTR = ctypes.sizeof(ctypes.c_void_p)
#: The attribute the SNI callback leaves on a connection's SSLObject: (server name, ClientAuth
#: or None).
TAG = "amcs_client_auth"

SecretLookup = Callable[[str, str], "dict | None"]
#: Writes bytes to a private file for the duration of a `with` (gateway/tls.py's).
PrivateFile = Callable[[bytes], AbstractContextManager[str]]
#: A server context with the listener's settings serving a PEM chain + key (gateway/tls.py's).
ChainContext = Callable[[bytes], ssl.SSLContext]


class _OpenSSL:
    """The few OpenSSL calls `ssl` does not offer, on the library `_ssl` is linked with."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(_ssl.__file__)  # its dependencies (libssl) resolve the symbols
        vp, c_int, c_long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self._sigs(lib, [("SSL_set_verify", None, [vp, c_int, _VERIFY_CALLBACK]),
                         ("SSL_set_verify_depth", None, [vp, c_int]),
                         ("SSL_get_SSL_CTX", vp, [vp]),
                         ("SSL_get_verify_result", c_long, [vp]),
                         ("SSL_CTX_get_verify_mode", c_int, [vp]),
                         ("SSL_load_client_CA_file", vp, [ctypes.c_char_p]),
                         ("SSL_CTX_set_client_CA_list", None, [vp, vp]),
                         ("X509_verify_cert_error_string", ctypes.c_char_p, [c_long]),
                         ("ERR_clear_error", None, []),
                         ("SSL_get0_param", vp, [vp]),
                         ("SSL_get_session", vp, [vp]),
                         ("SSL_session_reused", c_int, [vp]),
                         ("SSL_SESSION_set1_id_context", c_int, [vp, ctypes.c_char_p, ctypes.c_uint]),
                         ("X509_VERIFY_PARAM_set_flags", c_int, [vp, ctypes.c_ulong])])
        self.lib = lib
        self.accept = _VERIFY_CALLBACK(self._accept)
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED
        if lib.SSL_CTX_get_verify_mode(self.ctx_pointer(probe)) != (
                SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT):
            raise OSError("the SSLContext layout is not the expected one")
        obj = probe.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
        if lib.SSL_get_SSL_CTX(self.ssl_pointer(obj)) != self.ctx_pointer(probe):
            raise OSError("the SSLObject layout is not the expected one")

    def _accept(self, ok: int, store: int) -> int:
        """nginx's verify callback: the error is recorded in the verify result, the handshake
        goes on. A failed signature check leaves errors queued, which the next read on this
        thread would take for its own failure: cleared."""
        if not ok:
            self.lib.ERR_clear_error()
        return 1

    @staticmethod
    def _sigs(lib: ctypes.CDLL, sigs: list) -> None:
        for name, restype, argtypes in sigs:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes

    @staticmethod
    def ctx_pointer(ctx: ssl.SSLContext) -> int:
        """CPython's PySSLContext: the SSL_CTX * follows the object header."""
        return ctypes.c_void_p.from_address(id(ctx) + 2 * _PTR).value or 0

    @staticmethod
    def ssl_pointer(sslobj: ssl.SSLObject) -> int:
        """CPython's PySSLSocket (`_sslobj`): header, socket weakref, then the SSL *."""
        return ctypes.c_void_p.from_address(id(sslobj._sslobj) + 3 * _PTR).value or 0  # type: ignore[attr-defined]

    def ask_certificate(self, sslobj: ssl.SSLObject, auth: ClientAuth) -> bool:
        """In the SNI callback, after the switch to `auth.context`: ask for a certificate
        (nginx's SSL_set_verify); False when the pointers do not agree (nothing called)."""
        pointer = self.ssl_pointer(sslobj)
        if not pointer or self.lib.SSL_get_SSL_CTX(pointer) != self.ctx_pointer(auth.context):
            return False
        # OpenSSL decides on resumption before this callback, under the listener's session
        # context: a session made here gets a context of its own, so it never resumes (its
        # certificate was verified under settings that may have changed since).
        session = self.lib.SSL_get_session(pointer)
        if session and not self.lib.SSL_session_reused(pointer):
            self.lib.SSL_SESSION_set1_id_context(session, auth.session_id, len(auth.session_id))
        if auth.policy.verify != "off":
            self.lib.SSL_set_verify(pointer, SSL_VERIFY_PEER, self.accept)
            self.lib.SSL_set_verify_depth(pointer, auth.policy.depth)
            if auth.crl:  # (verify flags stay the listener's across the context switch)
                self.lib.X509_VERIFY_PARAM_set_flags(self.lib.SSL_get0_param(pointer),
                                                     X509_V_FLAG_CRL_CHECK)
        return True

    def verify_result(self, sslobj: ssl.SSLObject) -> tuple[int, str]:
        code = int(self.lib.SSL_get_verify_result(self.ssl_pointer(sslobj)))
        text = self.lib.X509_verify_cert_error_string(code)
        return code, (text or b"").decode("latin-1")

    def set_client_ca_list(self, ctx: ssl.SSLContext, path: str) -> None:
        """The CA names sent with the certificate request (browsers choose by them)."""
        names = self.lib.SSL_load_client_CA_file(path.encode())
        if names:
            self.lib.SSL_CTX_set_client_CA_list(self.ctx_pointer(ctx), names)  # takes ownership


_native: _OpenSSL | str | None = None


def native() -> _OpenSSL | str:
    """The binding, or why it cannot be used (worked out once)."""
    global _native
    if _native is None:
        try:
            _native = _OpenSSL()
        except (OSError, AttributeError) as exc:
            _native = f"client certificates cannot be asked for on this Python/OpenSSL ({exc})"
    return _native


class ClientAuth:
    """One host's handshake settings: its certificate plus the Secret's CAs."""

    __slots__ = ("policy", "context", "session_id", "key", "crl")

    def __init__(self, policy: ClientCertPolicy, context: ssl.SSLContext, key: tuple,
                 crl: bool = False) -> None:
        self.policy, self.context, self.key, self.crl = policy, context, key, crl
        self.session_id = hashlib.sha256(repr(key).encode()).digest()[:32]


def read_ca(secret: SecretLookup, ref: tuple[str, str]) -> tuple[bytes, bytes] | str:
    """(ca.crt, ca.crl or b"") of the Secret, or why it cannot be used."""
    obj = secret(*ref)
    where = f"auth-tls-secret {'/'.join(ref)}"
    if obj is None:
        return f"{where}: not found"
    data = obj.get("data") or {}
    if not isinstance(data, dict) or not data.get("ca.crt"):
        return f"{where}: has no ca.crt"
    try:
        ca = base64.b64decode(data["ca.crt"], validate=True)
        crl = base64.b64decode(data.get("ca.crl") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        return f"{where}: ca.crt or ca.crl is not base64"
    try:
        x509.load_pem_x509_certificates(ca)
    except ValueError:
        return f"{where}: ca.crt is not a PEM certificate"
    if crl:
        try:
            x509.load_pem_x509_crl(crl)
        except ValueError:
            return f"{where}: ca.crl is not a PEM CRL"
    return ca, crl


class ClientAuthLoader:
    """Makes each host's ClientAuth, keeping the one of unchanged settings (an open
    connection's handshake stays the host's own across rebuilds)."""

    def __init__(self, private_file: PrivateFile, chain_context: ChainContext) -> None:
        self.private_file, self.chain_context = private_file, chain_context
        self._made: dict[tuple, ClientAuth] = {}

    def load(self, check: ClientCertCheck, server_pem: bytes, server_id: str,
             secret: SecretLookup) -> ClientAuth | str:
        binding = native()
        if isinstance(binding, str):
            return binding
        found = read_ca(secret, check.policy.secret)
        if isinstance(found, str):
            return found
        ca, crl = found
        key = (check.host, server_id, hashlib.sha256(ca + b"\0" + crl).hexdigest(), check.policy)
        made = self._made.get(key)
        if made is not None:
            return made
        try:
            ctx = self.chain_context(server_pem)
            with self.private_file(ca.rstrip(b"\n") + b"\n" + crl) as path:
                ctx.load_verify_locations(cafile=path)
                binding.set_client_ca_list(ctx, path)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return f"auth-tls-secret {'/'.join(check.policy.secret)}: cannot be loaded ({exc})"
        made = self._made[key] = ClientAuth(check.policy, ctx, key, bool(crl))
        return made

    def keep(self, used: set[tuple]) -> None:
        for gone in set(self._made) - used:
            del self._made[gone]


def peer_certificate(sslobj: ssl.SSLObject | None) -> PeerCertificate | None:
    """What the handshake of a connection established; None: not TLS."""
    if sslobj is None:
        return None
    tag = getattr(sslobj, TAG, None)
    if tag is None:
        return NO_PEER
    name, auth = tag
    der = sslobj.getpeercert(binary_form=True) if auth is not None else None
    if not der:
        return PeerCertificate(name, auth)
    binding = native()
    assert not isinstance(binding, str)  # auth is set only when the binding works
    code, reason = binding.verify_result(sslobj)
    cert = x509.load_der_x509_certificate(der)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return PeerCertificate(name, auth, "SUCCESS" if code == 0 else f"FAILED:{reason}", code,
                           cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                           quote(pem, safe=""))
