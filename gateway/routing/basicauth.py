"""ingress-nginx basic and digest authentication: `auth-type: basic|digest` with
`auth-secret`, `auth-secret-type` and `auth-realm` (rule scope, main Ingresses; a canary's
requests are checked by its main Ingress's settings).

The users live in a Secret of the Ingress's namespace (or `ns/name`): with
`auth-secret-type: auth-file` (the default) its `auth` key holds an htpasswd file (basic) or
an htdigest file (digest: `user:realm:HA1` lines), with `auth-map` every key is a user and
its value the hash (digest: `realm:HA1`). The check itself is gateway/credentials.py (and
gateway/digest.py), against the Secret as it is at that moment. A setting that cannot be used
(no `auth-secret`, an unknown type) denies the route (503) as ingress-nginx's denied location
does: a route that asks for authentication is never served without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .values import Annotations, object_ref

BASIC_AUTH_KEYS = ("auth-type", "auth-secret", "auth-secret-type", "auth-realm")


@dataclass(frozen=True)
class BasicAuth:
    """One Ingress's basic authentication; `broken` names why its routes answer 503 instead."""

    secret: tuple[str, str] = ("", "")  # (namespace, name)
    kind: str = "basic"  # or "digest"
    secret_type: str = "auth-file"  # or "auth-map"
    realm: str = ""
    broken: str | None = None
    describe: dict = field(default_factory=dict, compare=False)

    @property
    def challenge(self) -> bytes:
        """The WWW-Authenticate line of a basic 401 (a digest one carries a fresh nonce:
        CredentialStore.challenge)."""
        return f'WWW-Authenticate: Basic realm="{quote_realm(self.realm)}"\r\n'.encode("latin-1", "replace")


def quote_realm(realm: str) -> str:
    """The realm as the inside of an HTTP quoted-string (backslash and quote escaped)."""
    return realm.replace("\\", "\\\\").replace('"', '\\"')


def parse_basic_auth(ann: Annotations, namespace: str) -> BasicAuth | None:
    found = ann.string("auth-type")
    if found is None:
        ann.orphans(BASIC_AUTH_KEYS[1:], "auth-type")
        return None
    full, kind = found
    why = None
    if kind not in ("basic", "digest"):
        why = f"{kind!r} is not an authentication type (basic, digest)"
    secret = ann.string("auth-secret")
    ref = ("", "")
    if why is None:
        if secret is None:
            why = "auth-secret is missing"
        else:
            named = object_ref(secret[1], namespace)
            if named is None:
                full, why = secret[0], f"{secret[1]!r} is not a Secret name (name or namespace/name)"
            else:
                ref = named
    found_type = ann.string("auth-secret-type")
    secret_type = found_type[1] if found_type else "auth-file"
    if why is None and secret_type not in ("auth-file", "auth-map"):
        full, why = found_type[0], f"{secret_type!r} is not auth-file or auth-map"  # type: ignore[index]
    if why is not None:
        ann.problem(full, f"{why}; the routes of this Ingress answer 503 (denied, as ingress-nginx)")
        return BasicAuth(broken=why, describe={"denied": why})
    found_realm = ann.string("auth-realm")
    realm = found_realm[1] if found_realm else ""
    return BasicAuth(ref, kind, secret_type, realm, describe={
        "type": kind, "secret": "/".join(ref), "secretType": secret_type, "realm": realm})
