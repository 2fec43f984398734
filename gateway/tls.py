"""TLS termination: the certificates our Ingresses name in `spec.tls`, chosen per connection
by SNI (ingress-nginx semantics, gateway/README.md "TLS").

`CertificateStore.context` is the HTTPS listener's server context. It holds the default
certificate (`--default-tls-cert/--default-tls-key`, else a self-signed one made at start)
and an SNI callback that switches each handshake to the context of the certificate for
the server name: the exact host, else its one-label wildcard (`*.example.com` covers
`a.example.com`, not `a.b.example.com`), else the default. `update()` recomputes the
host -> certificate map from our Ingresses (oldest first, as routing selects them) and the
hub's `kubernetes.io/tls` Secrets; a certificate's context is rebuilt only when its Secret's
data changed, so a rotated Secret is served to the next handshake and open connections keep
their session. A Secret that cannot be used (missing, wrong type, missing keys, bad PEM, a
key that does not match, a certificate that does not cover the host) never stops anything:
its hosts get the default certificate and a `TLSProblem` names the reason.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.client_auth import TAG, ClientAuth, ClientAuthLoader, native
from gateway.routing.clientcert import ClientCertCheck
from gateway.routing.matching import host_error
from gateway.routing.values import Problem

TLS_SECRET_TYPE = "kubernetes.io/tls"
DEFAULT_CN = "amcs gateway default certificate"  # like ingress-nginx's fake certificate
#: The Event reason of every TLS problem.
TLS_SECRET_INVALID = "TLSSecretInvalid"

SecretLookup = Callable[[str, str], "dict | None"]
T = TypeVar("T")


class TLSConfigError(ValueError):
    """The default certificate files cannot be used (a startup error, not a Problem)."""


@dataclass(frozen=True)
class TLSProblem(Problem):
    """A tls entry (or one of its hosts) served with the default certificate, and why."""

    reason: str = TLS_SECRET_INVALID


@dataclass(frozen=True)
class Certificate:
    """A loaded certificate: its server context and what it covers."""

    context: ssl.SSLContext
    names: tuple[str, ...]  # DNS SANs (lower-case), or the CN when there are none
    subject: str
    not_after: str
    sha256: str  # of the leaf, hex
    pem: bytes = field(default=b"", repr=False, compare=False)  # chain + key (auth-tls contexts)

    def covers(self, host: str) -> bool:
        """Go's VerifyHostname, which ingress-nginx uses: a name equal to the host, or a
        `*.` name covering exactly one more label (a wildcard host needs that very name)."""
        if host in self.names:
            return True
        dot = host.find(".")
        return not host.startswith("*.") and dot > 0 and "*" + host[dot:] in self.names


def server_context() -> ssl.SSLContext:
    """A server context with the listener's settings (TLS 1.2+, ingress-nginx's default;
    ALPN http/1.1 only, so HTTP/2 clients fall back)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _no_password() -> bytes:
    """Keeps OpenSSL from prompting on the terminal for an encrypted key."""
    raise TLSConfigError("the private key is encrypted (a passphrase is not supported)")


def check_key_pair(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with this certificate + key, or TLSConfigError naming the problem."""
    for path in (cert_file, key_file):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TLSConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    ctx = server_context()
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except TLSConfigError as exc:
        raise TLSConfigError(f"{key_file}: {exc}") from None
    except (ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(f"{cert_file} + {key_file}: not a PEM certificate and its "
                             f"matching private key ({getattr(exc, 'reason', None) or exc})"
                             ) from None
    return ctx


def self_signed(cn: str = DEFAULT_CN, days: int = 365) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): the default certificate when none is given (ingress-nginx
    makes its "Fake Certificate" the same way). EC P-256: made in a millisecond."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("ingress.local")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class CertificateStore:
    """Host -> certificate for the HTTPS listener; see the module docstring."""

    def __init__(self, default_cert: str | None = None, default_key: str | None = None):
        self._dir: str | None = None  # private (0700) temp dir, created on first use
        self._by_host: dict[str, Certificate | None] = {}  # None: the default certificate
        self._cache: dict[tuple[str, str], tuple[bytes, Certificate | str]] = {}
        self.hosts: frozenset[str] = frozenset()  # hosts with a certificate configured
        self.referenced: frozenset[tuple[str, str]] = frozenset()  # Secrets named by spec.tls
        if (default_cert is None) != (default_key is None):
            raise TLSConfigError("--default-tls-cert and --default-tls-key go together")
        #: auth-tls-* hosts: SNI name -> the handshake settings asking for a certificate
        #: (None: a host that asks for none); empty when no Ingress uses client certificates.
        self._auths: dict[str, ClientAuth | None] = {}
        self.client_auth = ClientAuthLoader(self.private_file, self.chain_context)
        if default_cert is not None and default_key is not None:
            self.context = check_key_pair(default_cert, default_key)
            self.default_source = f"{default_cert} + {default_key}"
            with open(default_cert, "rb") as crt, open(default_key, "rb") as key:
                self._default_pem = _bundle(crt.read(), key.read())
        else:
            loaded = self._load_pem(*self_signed())
            if isinstance(loaded, str):  # cannot happen with our own PEM
                raise TLSConfigError(f"default certificate: {loaded}")
            self._default_pem = loaded.pem
            self.context = loaded.context
            self.default_source = "self-signed"
        self.context.sni_callback = self._sni

    # -- the handshake ---------------------------------------------------------------------

    def _sni(self, sslobj: ssl.SSLObject, server_name: str | None,
             listener: ssl.SSLContext) -> None:
        auths = self._auths
        if auths:  # some host asks for client certificates: note what this handshake did
            auth = by_server_name(auths, server_name)
            if auth is not None:
                sslobj.context = auth.context
                binding = native()
                asked = not isinstance(binding, str) and binding.ask_certificate(sslobj, auth)
                setattr(sslobj, TAG, (server_name, auth if asked else None))
                return
            setattr(sslobj, TAG, (server_name, None))
        cert = self.select(server_name)
        if cert is not None:
            sslobj.context = cert.context

    def select(self, server_name: str | None) -> Certificate | None:
        """The certificate for this SNI name; None: the default one (also without SNI)."""
        return by_server_name(self._by_host, server_name)  # (swapped whole by update())

    # -- configuration ---------------------------------------------------------------------

    def update(self, ingresses: Iterable[tuple[str, dict]], secret: SecretLookup) -> list[Problem]:
        """Recompute host -> certificate from our Ingresses (key, object), oldest first, and
        a Secret lookup (namespace, name) -> Secret or None. Returns the problems."""
        problems: list[Problem] = []
        by_host: dict[str, Certificate | None] = {}
        owner: dict[str, tuple[str, str]] = {}  # host -> (Ingress key, "ns/secret" or "")
        used: set[tuple[str, str]] = set()

        def load(ns: str, name: str) -> Certificate | str:
            used.add((ns, name))
            return self._load_secret(secret, ns, name)

        for key, ing in ingresses:
            try:
                self._ingress(key, ing, by_host, owner, problems, load)
            except Exception as exc:  # item 6: a malformed spec.tls never takes TLS down
                problems.append(TLSProblem(key, None, f"spec.tls unreadable ({exc!r}); "
                                           "ignored"))
        for gone in set(self._cache) - used:
            del self._cache[gone]
        self._by_host = by_host
        self.hosts = frozenset(by_host)
        self.referenced = frozenset(used)
        return list({str(p): p for p in problems}.values())  # one per message

    def update_client_auth(self, checks: Mapping[str, ClientCertCheck | None],
                           secret: SecretLookup) -> list[Problem]:
        """After a route-table build: load each auth-tls host's handshake settings (its
        certificate, as `select` finds it, plus the CAs of its auth-tls-secret) into its
        ClientCertCheck; a Secret that cannot be used is a problem, and the host's HTTPS
        requests answer 503."""
        problems: list[Problem] = []
        auths: dict[str, ClientAuth | None] = {}
        used: set[tuple] = set()
        refs = set(self.referenced)
        for host, check in checks.items():
            if check is None or check.broken is not None:
                auths[host] = None
                continue
            refs.add(check.policy.secret)
            # a wildcard host is served the certificate of that very wildcard
            cert = self._by_host.get(host) if host.startswith("*.") else self.select(host)
            pem, ident = (cert.pem, cert.sha256) if cert is not None else (self._default_pem, "default")
            loaded = self.client_auth.load(check, pem, ident, secret)
            if isinstance(loaded, str):
                check.broken = loaded
                auths[host] = None
                problems.append(TLSProblem(check.ingress, "auth-tls-secret", f"{loaded}; HTTPS "
                                           f"requests to {host} answer 503"))
                continue
            check.auth = auths[host] = loaded
            used.add(loaded.key)
        self.client_auth.keep(used)
        self._auths = auths if any(a is not None for a in auths.values()) else {}
        self.referenced = frozenset(refs)
        return list({str(p): p for p in problems}.values())

    def _ingress(self, key: str, ing: dict, by_host: dict[str, Certificate | None],
                 owner: dict[str, tuple[str, str]], problems: list[Problem],
                 load: Callable[[str, str], Certificate | str]) -> None:
        spec = ing.get("spec") or {}
        ns = (ing.get("metadata") or {}).get("namespace") or "default"
        entries = [e for e in spec.get("tls") or [] if isinstance(e, dict)]
        listed: set[str] = set()
        usable: list[tuple[str, Certificate]] = []  # ("ns/secret", certificate)
        for entry in entries:
            secret_name = str(entry.get("secretName") or "")
            cert = load(ns, secret_name) if secret_name else None
            where = f"{ns}/{secret_name}"
            if isinstance(cert, Certificate):
                usable.append((where, cert))
            source = where if secret_name else ""  # "": the default certificate
            if isinstance(cert, str):
                problems.append(TLSProblem(key, None, f"tls secret {where}: {cert}; its hosts "
                                           "get the default certificate"))
            for raw in entry.get("hosts") or []:
                host = str(raw).strip().lower()
                error = host_error(host) if host else "empty host"
                if error:
                    problems.append(TLSProblem(key, None, f"tls host {host!r}: {error}; "
                                               "ignored"))
                    continue
                listed.add(host)
                if host in owner:
                    if owner[host][1] != source:
                        problems.append(TLSProblem(
                            key, None, f"tls host {host}: already served by "
                            f"{owner[host][1] or 'the default certificate'} of {owner[host][0]} "
                            "(the oldest Ingress wins); ignored"))
                    continue
                owner[host] = (key, source)
                if isinstance(cert, Certificate) and not cert.covers(host):
                    problems.append(TLSProblem(
                        key, None, f"tls secret {where}: the certificate ({cert.subject}; "
                        f"{', '.join(cert.names) or 'no names'}) does not cover {host}; the "
                        "default certificate is served for it"))
                    cert_for_host = None
                else:
                    cert_for_host = cert if isinstance(cert, Certificate) else None
                by_host[host] = cert_for_host
        # ingress-nginx: a rule host no tls entry lists takes the first of the Ingress's
        # certificates that covers it (e.g. a tls entry without hosts).
        for rule in spec.get("rules") or []:
            host = str((rule or {}).get("host") or "").strip().lower()
            if not host or host in listed or host in owner:
                continue
            for where, cert in usable:
                if cert.covers(host):
                    by_host[host], owner[host] = cert, (key, where)
                    break

    def _load_secret(self, lookup: SecretLookup, ns: str, name: str) -> Certificate | str:
        """The Secret's certificate, or why it cannot be used (cached by the data's hash)."""
        obj = lookup(ns, name)
        if obj is None:
            return "not found"
        kind = obj.get("type") or "Opaque"
        if kind != TLS_SECRET_TYPE:
            return f"has type {kind!r}, not {TLS_SECRET_TYPE!r}"
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            return "has no data map"
        missing = [k for k in ("tls.crt", "tls.key") if not data.get(k)]
        if missing:
            return f"has no {' or '.join(missing)}"
        try:
            crt = base64.b64decode(data["tls.crt"], validate=True)
            key = base64.b64decode(data["tls.key"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            return "tls.crt or tls.key is not base64"
        digest = hashlib.sha256(crt + b"\0" + key).digest()
        cached = self._cache.get((ns, name))
        if cached is not None and cached[0] == digest:
            return cached[1]
        result = self._load_pem(crt, key)
        self._cache[(ns, name)] = (digest, result)
        return result

    def _load_pem(self, crt: bytes, key: bytes) -> Certificate | str:
        try:
            chain = x509.load_pem_x509_certificates(crt)
        except ValueError:
            return "tls.crt is not a PEM certificate"
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except TypeError:
            return "tls.key is encrypted (a passphrase is not supported)"
        except (ValueError, binascii.Error):
            return "tls.key is not a PEM private key"
        except Exception as exc:  # unsupported algorithms and the like
            return f"tls.key cannot be used ({exc})"
        leaf = chain[0]
        if private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != leaf.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            return "tls.key does not match the certificate in tls.crt"
        pem = _bundle(crt, key)
        try:
            ctx = self.chain_context(pem)
        except (ssl.SSLError, OSError, TLSConfigError) as exc:
            return f"certificate and key cannot be loaded ({getattr(exc, 'reason', None) or exc})"
        return Certificate(ctx, _names(leaf), leaf.subject.rfc4514_string(),
                           leaf.not_valid_after_utc.isoformat(),
                           leaf.fingerprint(hashes.SHA256()).hex(), pem)

    @contextmanager
    def private_file(self, data: bytes) -> Iterator[str]:
        """OpenSSL loads certificates from files: one in the private directory (0600) for the
        duration of the `with`, removed at once."""
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="amcs-gateway-tls-")  # mode 0700
        path = os.path.join(self._dir, f"{os.urandom(8).hex()}.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            yield path
        finally:
            os.unlink(path)

    def chain_context(self, pem: bytes) -> ssl.SSLContext:
        """A server context with the listener's settings serving this chain + key (`_bundle`)."""
        ctx = server_context()
        with self.private_file(pem) as path:
            ctx.load_cert_chain(path, password=_no_password)
        return ctx

    def close(self) -> None:
        """Remove the private directory (nothing is left in it between loads)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def describe(self) -> dict:
        """For /routes: every host with a certificate, and the default one."""
        hosts = {}
        for host, cert in sorted(self._by_host.items()):
            hosts[host] = ({"certificate": "default"} if cert is None else
                           {"subject": cert.subject, "names": list(cert.names),
                            "notAfter": cert.not_after, "sha256": cert.sha256})
        asking = sorted(h for h, a in self._auths.items() if a is not None)
        return {"default": self.default_source, "hosts": hosts, "clientCertificates": asking}


def by_server_name(table: Mapping[str, T | None], server_name: str | None) -> T | None:
    """What `table` (by host) holds for a TLS server name: the exact host, else its one-label
    wildcard (`*.example.com` covers `a.example.com`, not `a.b.example.com`)."""
    if not server_name:
        return None  # no SNI (or an IP address)
    name = server_name.rstrip(".").lower()
    if name in table:
        return table[name]
    dot = name.find(".")
    return table.get("*" + name[dot:]) if dot > 0 else None


def _bundle(crt: bytes, key: bytes) -> bytes:
    """A certificate chain and its key as one PEM file (what load_cert_chain reads)."""
    return crt.rstrip(b"\n") + b"\n" + key


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:  # ingress-nginx still accepts the Common Name (deprecated)
        names = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)]
    return tuple(n for n in names if not _is_ip(n))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


#: Secret types whose data the gateway keeps: certificates, and basic-auth users (Opaque).
KEPT_SECRET_TYPES = frozenset({TLS_SECRET_TYPE, "Opaque"})


def trim_secret(obj: dict) -> dict:
    """Informer transform: only TLS and Opaque Secrets keep their data (service-account
    tokens, registry credentials and the like are never held)."""
    if (obj.get("type") or "Opaque") in KEPT_SECRET_TYPES:
        return obj
    return {"metadata": obj.get("metadata") or {}, "type": obj.get("type")}
