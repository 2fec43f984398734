"""ingress-nginx client-certificate authentication (`auth-tls-*`): the pure part.

ingress-nginx configures these on the nginx *server* (the host), not the location: the
oldest Ingress that sets `auth-tls-secret` for a host decides for every path of that host,
including other Ingresses' paths (a later Ingress with other settings is reported). Here
that is `install_client_certs`, which gives each route of such a host its `ClientCertCheck`.

The TLS side (gateway/client_auth.py) asks the client for a certificate during the handshake
of a connection whose server name (SNI) is such a host, verifies it against the Secret's
`ca.crt`, and describes the outcome as a `PeerCertificate`. `ClientCertCheck.admit` then
decides each request as nginx does after reading the request head (gateway/README.md,
"Client certificates"):

* plain HTTP is not checked (nginx's port 80 has no TLS); the `ssl-client-*` headers a client
  sent are removed;
* the certificate settings could not be loaded (no `ca.crt`, ...): 503, never served unchecked;
* the connection was set up for another host (SNI), with verification on: 421;
* no certificate with `on`, or a failed verification (`optional_no_ca` tolerates an unknown
  issuer): 400, or a 302 to `auth-tls-error-page`;
* `auth-tls-match-cn` not found in the subject DN: 403;
* else upstream, with `ssl-client-verify`, `-subject-dn`, `-issuer-dn` and (with
  `auth-tls-pass-certificate-to-upstream`) `ssl-client-cert`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .values import Annotations, object_ref

CLIENT_CERT_KEYS = ("auth-tls-secret", "auth-tls-verify-client", "auth-tls-verify-depth",
                    "auth-tls-error-page", "auth-tls-pass-certificate-to-upstream",
                    "auth-tls-match-cn")
KEY = "auth-tls-secret"
VERIFY_MODES = ("on", "off", "optional", "optional_no_ca")
#: The request headers this feature sets upstream (client-sent ones are always removed).
CLIENT_CERT_HEADERS = frozenset({"ssl-client-verify", "ssl-client-subject-dn",
                                 "ssl-client-issuer-dn", "ssl-client-cert"})
#: OpenSSL verify errors `optional_no_ca` tolerates (nginx's ngx_ssl_verify_error_optional):
#: the issuer is unknown or the certificate is self-signed.
ISSUER_UNKNOWN = frozenset({2, 18, 19, 20, 21})
NO_CERTIFICATE = "No required SSL certificate was sent"  # nginx's 496 page (sent as 400)
BAD_CERTIFICATE = "The SSL certificate error"  # nginx's 495 page (sent as 400)
MISDIRECTED = "misdirected request: the TLS server name names another host"
UNAUTHORIZED = "client certificate unauthorized"


@dataclass(frozen=True)
class ClientCertPolicy:
    """One Ingress's auth-tls-* annotations (ingress-nginx's defaults)."""

    secret: tuple[str, str]  # (namespace, name): a Secret with ca.crt (and ca.crl)
    verify: str = "on"
    depth: int = 1
    error_page: str = ""
    pass_certificate: bool = False
    match_cn: str = ""  # a regex searched in the subject DN

    def describe(self) -> dict:
        return {"secret": "/".join(self.secret), "verifyClient": self.verify,
                "verifyDepth": self.depth, "errorPage": self.error_page or None,
                "passCertificateToUpstream": self.pass_certificate,
                "matchCN": self.match_cn or None}


def parse_client_cert(ann: Annotations, namespace: str) -> ClientCertPolicy | None:
    """The policy, or None without `auth-tls-secret`. A bad value of the other keys is
    reported and its default used, as ingress-nginx does; an unusable Secret name denies."""
    found = ann.string(KEY)
    if found is None:
        ann.orphans(CLIENT_CERT_KEYS[1:], KEY)
        return None
    ref = object_ref(found[1], namespace)
    if ref is None:
        ann.problem(found[0], f"{found[1]!r} is not a Secret name (name or namespace/name); "
                    "HTTPS requests to the Ingress's hosts answer 503")
        ref = ("", "")
    verify = ann.string("auth-tls-verify-client")
    mode = "on"
    if verify is not None:
        if verify[1] in VERIFY_MODES:
            mode = verify[1]
        else:
            ann.problem(verify[0], f"{verify[1]!r} is not one of {', '.join(VERIFY_MODES)}; "
                        "'on' is used")
    depth = ann.integer("auth-tls-verify-depth", low=1, high=100)
    page = ann.string("auth-tls-error-page")
    error_page = ""
    if page is not None:
        if re.match(r"(?i)https?://[^\s/]+", page[1]) and not re.search(r"\s", page[1]):
            error_page = page[1]
        else:
            ann.problem(page[0], f"{page[1]!r} is not an http(s) URL; ignored")
    match = ann.string("auth-tls-match-cn")
    match_cn = ""
    if match is not None:
        if not match[1].startswith("CN="):
            ann.problem(match[0], f"{match[1]!r} does not start with CN=; ignored")
        else:
            try:
                re.compile(match[1])
                match_cn = match[1]
            except re.error as exc:
                ann.problem(match[0], f"{match[1]!r} is not a valid regular expression ({exc}); "
                            "HTTPS requests to the Ingress's hosts answer 403")
                match_cn = "(?!)"  # matches nothing: refuse rather than serve unchecked
    return ClientCertPolicy(ref, mode, depth if depth is not None else 1, error_page,
                            bool(ann.boolean("auth-tls-pass-certificate-to-upstream")), match_cn)


@dataclass(frozen=True)
class PeerCertificate:
    """What the TLS handshake of one connection established (gateway/client_auth.py)."""

    server_name: str | None  # the SNI the client sent
    auth: Any = None  # the ClientAuth the handshake asked with (None: no certificate asked)
    verify: str = "NONE"  # nginx's $ssl_client_verify: NONE, SUCCESS or FAILED:<reason>
    code: int = 0  # the OpenSSL verify result
    subject: str = ""  # RFC 2253, as nginx's $ssl_client_s_dn
    issuer: str = ""
    escaped_pem: str = ""  # nginx's $ssl_client_escaped_cert


#: A connection that asked for no certificate (or a request on plain HTTP).
NO_PEER = PeerCertificate(None)


@dataclass(frozen=True)
class Admission:
    """`status` 0: proxy, with `headers` set upstream; else answer `status`."""

    status: int = 0
    text: str = ""
    location: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


PLAIN = Admission()


class ClientCertCheck:
    """The client-certificate settings of one host, as every route of it sees them.
    `auth` (the TLS side's loaded settings) and `broken` are set before the table is used."""

    __slots__ = ("host", "policy", "ingress", "auth", "broken", "_match")

    def __init__(self, host: str, policy: ClientCertPolicy, ingress: str) -> None:
        self.host, self.policy, self.ingress = host, policy, ingress
        self.auth: Any = None
        self.broken: str | None = None if policy.secret[1] else "the auth-tls-secret is not usable"
        self._match = re.compile(policy.match_cn) if policy.match_cn else None

    def admit(self, peer: PeerCertificate | None) -> Admission:
        """`peer` None: the request came over plain HTTP."""
        if peer is None:
            return PLAIN
        if self.broken is not None or self.auth is None:
            return Admission(503, f"denied: client certificate settings cannot be applied "
                             f"({self.broken or 'not loaded'})")
        policy = self.policy
        if peer.auth is not self.auth:
            if peer.server_name and policy.verify != "off":
                return Admission(421, MISDIRECTED)
            peer = NO_PEER
        if policy.verify != "off" and peer.verify != "SUCCESS":
            refusal = None
            if peer.verify == "NONE":
                if policy.verify == "on":
                    refusal = NO_CERTIFICATE
            elif not (policy.verify == "optional_no_ca" and peer.code in ISSUER_UNKNOWN):
                refusal = BAD_CERTIFICATE
            if refusal is not None:
                if policy.error_page:
                    return Admission(302, f"redirecting to {policy.error_page}", policy.error_page)
                return Admission(400, refusal)
        if self._match is not None and not self._match.search(peer.subject):
            return Admission(403, UNAUTHORIZED)
        headers = [("ssl-client-verify", peer.verify)]
        if peer.subject:
            headers += [("ssl-client-subject-dn", peer.subject),
                        ("ssl-client-issuer-dn", peer.issuer)]
        if policy.pass_certificate and peer.escaped_pem:
            headers.append(("ssl-client-cert", peer.escaped_pem))
        return Admission(headers=tuple(headers))

    def describe(self) -> dict:
        return {**self.policy.describe(), "ingress": self.ingress,
                "problem": self.broken if self.broken is not None else
                None if self.auth is not None else "no HTTPS listener (--listen-tls)"}


def install_client_certs(hosts: Any, wanted: Iterable[tuple[str, list[str], ClientCertPolicy]],
                         problem: Callable[[str, str, str], None]) -> dict[str, ClientCertCheck | None]:
    """`hosts`: the table's HostTable of routes; `wanted`: (Ingress key, its rule hosts, its
    policy), oldest Ingress first; `problem(Ingress key, message, annotation)`. Returns, for
    the TLS side, the checks by host (aliases included) and, when there is any, None for every
    other host (so a host's own name is not taken for a wildcard that asks for certificates)."""
    checks: dict[str, ClientCertCheck | None] = {}
    for key, rule_hosts, policy in wanted:
        for host in dict.fromkeys(rule_hosts):
            held = checks.get(host)
            if held is not None:
                if held.policy != policy:
                    problem(key, f"host {host or '(any)'} already takes the client-certificate "
                            f"settings of {held.ingress} (the oldest Ingress wins); ignored", KEY)
                continue
            check = checks[host] = ClientCertCheck(host, policy, key)
            if not host:
                check.broken = "client certificates need a rule host (they are asked per TLS server name)"
    if not checks:
        return checks
    for vhost in hosts.hosts():
        check = checks.setdefault(vhost.name, None)
        if check is None:
            continue
        for route in vhost.paths.values() + ([vhost.default] if vhost.default else []):
            route.client_cert = check
    for alias, vhost in hosts.aliases.items():
        checks.setdefault(alias, checks.get(vhost.name))
    return checks
