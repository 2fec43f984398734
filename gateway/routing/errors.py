"""ingress-nginx `default-backend` and `custom-http-errors` (rule scope, main Ingresses).

`default-backend: <service>` names a Service in the Ingress's namespace (its first port, as
ingress-nginx takes `Spec.Ports[0]`). It becomes the last fallback of the Ingress's
decisions: used when the rule's backend has no usable endpoint in any member cluster.

`custom-http-errors: "404,503"`: an upstream answer with one of these statuses is not
forwarded; the data path asks the default backend instead, as ingress-nginx's
`error_page <code> = @custom_<upstream>_<code>` location does (proxy_intercept_errors):
the same method and body, the path `/` with the original query (`rewrite (.*) / break`),
and the headers `X-Code`, `X-Format`, `X-Original-URI`, `X-Namespace`, `X-Ingress-Name`,
`X-Service-Name`, `X-Service-Port`, `X-Request-ID`; the client gets that answer as it is,
its status included (`error_page ... =` without a code). The codes of an Ingress without
`default-backend` go to the gateway's global default backend (`--default-backend-service`,
ingress-nginx's flag of the same name), which is not a fallback for the rule's backend;
without one either, the annotation is reported and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from gateway.types import BackendRef, RouteDecision

from .policy import Context
from .values import Annotations, is_dns_label, split_list

ERROR_KEYS = ("default-backend", "custom-http-errors")


@dataclass(frozen=True)
class ErrorSettings:
    """One Ingress's default backend and the statuses its pages replace."""

    backend: BackendRef | None = None
    codes: frozenset[int] = frozenset()
    fallback: bool = True  # also the rule's last fallback (the annotation, not the global one)


NO_ERRORS = ErrorSettings()


def parse_errors(ann: Annotations, ctx: Context) -> ErrorSettings:
    """Both annotations; a bad value ignores that annotation with a named Problem."""
    backend = _default_backend(ann, ctx)
    found = ann.string("custom-http-errors")
    if found is None:
        return ErrorSettings(backend)
    full, text = found
    items = split_list(text)
    if not items or not all(i.isdigit() and 400 <= int(i) <= 599 for i in items):
        ann.problem(full, f"{text!r}: expected status codes 400-599 like '404,503'; ignored")
        return ErrorSettings(backend)
    codes = frozenset(int(i) for i in items)
    if backend is None and ctx.default_backend is not None and not ann.has("default-backend"):
        return ErrorSettings(ctx.default_backend, codes, fallback=False)
    if backend is None:
        reason = ("the default-backend annotation is unusable" if ann.has("default-backend")
                  else "no default-backend annotation and no --default-backend-service")
        ann.problem(full, f"{reason}: no default backend to ask for the pages; ignored")
        return NO_ERRORS
    return ErrorSettings(backend, codes)


def _default_backend(ann: Annotations, ctx: Context) -> BackendRef | None:
    found = ann.string("default-backend")
    if found is None:
        return None
    full, name = found
    if not is_dns_label(name):
        ann.problem(full, f"{name!r} is not a Service name (a Service of the Ingress's "
                    "namespace); ignored")
        return None
    ref = service_ref(ctx.services, ctx.namespace, name)
    if isinstance(ref, str):
        ann.problem(full, f"{ref}; ignored")
        return None
    return ref


def service_ref(services: Mapping[tuple[str, str], dict] | None, namespace: str,
                name: str) -> BackendRef | str:
    """A Service's first port (ingress-nginx takes `Spec.Ports[0]`), or why there is none."""
    svc = (services or {}).get((namespace, name))
    if svc is None:
        return f"Service {namespace}/{name} is not known in any member cluster"
    ports = (svc.get("spec") or {}).get("ports") or []
    port = ports[0].get("port") if ports else None
    if not isinstance(port, int):
        return f"Service {namespace}/{name} has no port"
    return BackendRef(namespace, name, port)


def global_default_backend(name: str | None, services: Mapping[tuple[str, str], dict] | None
                           ) -> tuple[BackendRef | None, str | None]:
    """`--default-backend-service NAMESPACE/NAME` -> its BackendRef, or why it is not used."""
    if not name:
        return None, None
    ns, _, svc_name = name.partition("/")
    ref = service_ref(services, ns, svc_name)
    if isinstance(ref, str):
        return None, (f"--default-backend-service {name}: {ref}; requests no rule matches "
                      "get 404 until it is")
    return ref, None


def bind_errors(decision: RouteDecision, errors: ErrorSettings, ingress: str) -> RouteDecision:
    """`decision` with the default backend as its last fallback and, for custom-http-errors,
    the prebuilt error-page request (nothing changes for a redirect: it never proxies)."""
    ref = errors.backend
    if ref is None or decision.redirect is not None:
        return decision
    fallbacks = decision.fallbacks
    default = None
    if errors.fallback and ref != decision.backend:
        default = ref
        if ref not in fallbacks:
            fallbacks += (ref,)
    namespace, _, name = ingress.partition("/")
    page = RouteDecision(
        backend=ref, route_name=decision.route_name,
        # nginx's @custom location retries like any (error, timeout), never on a status
        retry=replace(decision.retry, on_statuses=()), timeouts=decision.timeouts,
        set_headers=(("X-Namespace", namespace), ("X-Ingress-Name", name),
                     ("X-Service-Name", decision.backend.service),
                     ("X-Service-Port", str(decision.backend.port))))
    return replace(decision, fallbacks=fallbacks, error_codes=errors.codes, error_page=page,
                   default_backend=default)


def describe_errors(decision: RouteDecision) -> dict | None:
    """The /routes view of a decision's default backend and intercepted statuses."""
    page = decision.error_page
    if page is None:
        return None
    return {"defaultBackend": str(page.backend), "customHttpErrors": sorted(decision.error_codes)}
