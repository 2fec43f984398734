"""ingress-nginx `rewrite-target` (+ `x-forwarded-prefix`), `app-root` and the
permanent/temporal redirects, as ingress-nginx builds them into nginx:

* `rewrite "(?i)<path>" <target> break;` in the rule's location: the target with `$1`..`$9`
  taken from the rule path's regex (searched, case-insensitive) replaces the URI, the
  query string is kept; `X-Forwarded-Prefix` is set only on such rewritten locations.
* `if ($uri = /) { return 302 $scheme://$http_host<app-root>; }` at server (host) level.
* `return <code> <url>;` in the location, before the rewrite: temporal first, then permanent.

Parsing validates like ingress-nginx's annotation validators; every bad value is a
`Problem` and only that annotation is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.types import Redirect, RequestView, RouteDecision

from .matching import EXACT
from .values import Annotations

if TYPE_CHECKING:
    from .matching import HostTable
    from .table import Route

X_FORWARDED_PREFIX = "X-Forwarded-Prefix"
#: ingress-nginx RegexPathWithCapture (rewrite-target, app-root): "/" then path chars and "$".
_PATH_WITH_CAPTURE = re.compile(r"^/[-._~a-zA-Z0-9/:$]*$")
#: x-forwarded-prefix (ingress-nginx: path chars, may hold captures "$1").
_PREFIX_CHARS = re.compile(r"^[-._~a-zA-Z0-9/:$]+$")
#: A `$` must start a capture reference $1..$9 (nginx variables are not supported).
_BAD_DOLLAR = re.compile(r"\$(?![1-9])")
#: Characters allowed in a redirect URL: RFC 3986 unreserved + reserved + "%", no "$".
_URL_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!&'()*+,;=%]+$")
#: Redirect codes: ingress-nginx replaces a permanent code outside 300-308 by 301 and a bad
#: temporal one by 302 (its unit test: 307 kept, 418 -> 302); 304, 305 and 306 are not
#: redirects and are refused here too, and 308 is not a temporal code.
PERMANENT_CODES = frozenset({300, 301, 302, 303, 307, 308})
TEMPORAL_CODES = frozenset({300, 301, 302, 303, 307})


@dataclass(frozen=True)
class RewriteSettings:
    """The rewrite/redirect annotations of one (main) Ingress, validated."""

    target: str | None = None  # rewrite-target
    target_key: str | None = None  # its full annotation key (names it in problems)
    prefix: str | None = None  # x-forwarded-prefix
    prefix_key: str | None = None
    app_root: str | None = None
    app_root_key: str | None = None
    redirect: Redirect | None = None
    redirect_key: str | None = None

    def keys(self) -> list[str]:
        """The full keys of the annotations that took effect."""
        return [k for k in (self.target_key, self.prefix_key, self.app_root_key,
                            self.redirect_key) if k]

    def needs_rewrite(self, path: str) -> bool:
        """ingress-nginx: a rule whose path equals the target is not rewritten."""
        return self.target is not None and self.target != path


def parse_rewrite(ann: Annotations) -> RewriteSettings:
    target = _path_value(ann, "rewrite-target", captures=True)
    prefix = _prefix(ann, has_target=target is not None)
    app_root = _path_value(ann, "app-root", captures=False)
    redirect = _redirect(ann)
    return RewriteSettings(
        target=target[1] if target else None, target_key=target[0] if target else None,
        prefix=prefix[1] if prefix else None, prefix_key=prefix[0] if prefix else None,
        app_root=app_root[1] if app_root else None,
        app_root_key=app_root[0] if app_root else None,
        redirect=redirect[1] if redirect else None,
        redirect_key=redirect[0] if redirect else None)


def _path_value(ann: Annotations, key: str, *, captures: bool) -> tuple[str, str] | None:
    found = ann.string(key)
    if found is None:
        return None
    full, value = found
    if not _PATH_WITH_CAPTURE.match(value):
        ann.problem(full, f"{value!r} must be a path starting with '/' made of letters, "
                    "digits and -._~/:" + (" and $1..$9" if captures else "") + "; ignored")
        return None
    if captures and _BAD_DOLLAR.search(value):
        ann.problem(full, f"{value!r}: '$' must start a capture reference $1..$9 (nginx "
                    "variables are not supported); ignored")
        return None
    if not captures and "$" in value:
        ann.problem(full, f"{value!r}: '$' is not allowed here; ignored")
        return None
    return full, value


def _prefix(ann: Annotations, *, has_target: bool) -> tuple[str, str] | None:
    found = ann.string("x-forwarded-prefix")
    if found is None:
        return None
    full, value = found
    if not _PREFIX_CHARS.match(value) or _BAD_DOLLAR.search(value):
        ann.problem(full, f"{value!r}: expected a path (letters, digits, -._~/:, captures "
                    "$1..$9); ignored")
        return None
    if not has_target:
        ann.problem(full, "has no effect without a valid rewrite-target (ingress-nginx sets "
                    "the header only on rewritten paths); ignored")
        return None
    return full, value


def _redirect(ann: Annotations) -> tuple[str, Redirect] | None:
    """temporal-redirect before permanent-redirect (ingress-nginx's order)."""
    temporal = _redirect_url(ann, "temporal-redirect")
    permanent = _redirect_url(ann, "permanent-redirect")
    t_code = _redirect_code(ann, "temporal-redirect-code", TEMPORAL_CODES, 302, temporal)
    p_code = _redirect_code(ann, "permanent-redirect-code", PERMANENT_CODES, 301, permanent)
    if temporal is not None:
        if permanent is not None:
            ann.problem(permanent[0], "ignored: temporal-redirect takes precedence")
        return temporal[0], Redirect(t_code, temporal[1])
    if permanent is not None:
        return permanent[0], Redirect(p_code, permanent[1])
    return None


def _redirect_url(ann: Annotations, key: str) -> tuple[str, str] | None:
    found = ann.string(key)
    if found is None:
        return None
    full, url = found
    if "$" in url:
        ann.problem(full, f"{url!r}: nginx variables are not supported; ignored")
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc
            or not _URL_CHARS.match(url)):
        ann.problem(full, f"{url!r} is not an absolute http(s) URL; ignored")
        return None
    return full, url


def _redirect_code(ann: Annotations, key: str, allowed: frozenset[int], default: int,
                   url: tuple[str, str] | None) -> int:
    found = ann.string(key)
    if found is None:
        return default
    full, text = found
    base = key.removesuffix("-code")
    if not (text.isdigit() and int(text) in allowed):
        codes = ", ".join(str(c) for c in sorted(allowed))
        ann.problem(full, f"{text!r} is not a redirect code ({codes}); "
                    + (f"{default} is used" if url is not None else "ignored"))
        return default
    if url is None:
        ann.problem(full, f"has no effect without a valid {base}; ignored")
    return int(text)


# -- per rule: the compiled rewrite --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A target with `$1`..`$9`, precompiled to a %-format (nginx reads one digit after
    '$': `$12` is `$1` then "2")."""

    text: str
    fmt: str  # "%s" per reference, literal '%' doubled
    refs: tuple[int, ...]  # 0-based group indexes, in order

    @classmethod
    def parse(cls, text: str) -> Template:
        pieces = re.split(r"\$([1-9])", text)  # literal, digit, literal, digit, ...
        fmt = "%s".join(piece.replace("%", "%%") for piece in pieces[::2])
        return cls(text, fmt, tuple(int(d) - 1 for d in pieces[1::2]))

    @property
    def max_group(self) -> int:
        return max(self.refs, default=-1) + 1

    def expand(self, groups: tuple[str, ...]) -> str:
        if not self.refs:
            return self.text
        return self.fmt % tuple([groups[i] for i in self.refs])


@dataclass(frozen=True, slots=True)
class Rewriter:
    """One rule's rewrite: its path as a case-insensitive regex and the two templates
    (every reference is known to exist in the regex)."""

    pattern: re.Pattern[str]
    target: Template
    prefix: Template | None = None

    def apply(self, decision: RouteDecision, request_target: str) -> RouteDecision:
        """The per-request decision: `path` rewritten (query kept), X-Forwarded-Prefix set."""
        mark = request_target.find("?")
        match = self.pattern.search(request_target if mark < 0 else request_target[:mark])
        new = None
        if match is not None:
            groups = match.groups("")  # a group that did not participate is "" (nginx)
            new = self.target.expand(groups)
            if 0 <= mark < len(request_target) - 1:
                new += request_target[mark:]
            if new == request_target:
                new = None
        else:  # nginx leaves the URI alone; the header's captures are then empty
            groups = ("",) * self.pattern.groups
        if self.prefix is None:
            return derive(decision, path=new)
        headers = decision.set_headers
        if headers:
            headers = tuple(h for h in headers if h[0].lower() != "x-forwarded-prefix")
        headers += ((X_FORWARDED_PREFIX, self.prefix.expand(groups)),)
        return derive(decision, path=new, set_headers=headers)

    def describe(self) -> dict:
        return {"regex": self.pattern.pattern, "target": self.target.text,
                "xForwardedPrefix": None if self.prefix is None else self.prefix.text}


def compile_rewriter(path: str, settings: RewriteSettings
                     ) -> tuple[Rewriter | None, list[tuple[str | None, str]]]:
    """The rule's Rewriter (None when the rewrite cannot apply to this path) and the
    problems as (annotation key, message)."""
    assert settings.target is not None
    try:
        pattern = re.compile(path, re.IGNORECASE)
    except re.error as exc:
        return None, [(settings.target_key, f"path {path!r} is not a valid regex ({exc}); "
                       "not rewritten")]
    target = Template.parse(settings.target)
    if target.max_group > pattern.groups:
        return None, [(settings.target_key, f"uses ${target.max_group} but path {path!r} "
                       f"has {pattern.groups} capture group(s); not rewritten")]
    prefix = None if settings.prefix is None else Template.parse(settings.prefix)
    problems: list[tuple[str | None, str]] = []
    if prefix is not None and prefix.max_group > pattern.groups:
        problems.append((settings.prefix_key, f"uses ${prefix.max_group} but path {path!r} "
                         f"has {pattern.groups} capture group(s); header not set for this "
                         "path"))
        prefix = None
    return Rewriter(pattern, target, prefix), problems


# -- per host: app-root ------------------------------------------------------------------------


def app_root_redirect(base: RouteDecision, scheme: str, app_root: str,
                      request: RequestView) -> RouteDecision:
    """`return 302 $scheme://$http_host<app-root>`: the Host header as received (with its
    port); without a Host the Location stays relative."""
    host = request.headers.get("host") or request.host
    location = f"{scheme}://{host}{app_root}" if host else app_root
    return derive(base, redirect=Redirect(302, location))


def derive(decision: RouteDecision, **changes: object) -> RouteDecision:
    """`dataclasses.replace` for the per-request path (~8x cheaper): RouteDecision is a
    plain frozen dataclass (no __post_init__, no validation), so copying its fields is
    equivalent; falls back to replace() should it ever get slots."""
    fields = getattr(decision, "__dict__", None)
    if fields is None:
        return replace(decision, **changes)  # type: ignore[arg-type]
    new = object.__new__(type(decision))
    new.__dict__.update(fields)
    new.__dict__.update(changes)
    return new


def install_rewriters(hosts: HostTable[Route], regex_hosts: dict[str, str],
                      problem: Callable[[str, str, str | None], None]) -> None:
    """Regex mode for the hosts that asked for it (`use-regex` or a rewritten path, named in
    `regex_hosts`): every path of the host becomes a regex, as in ingress-nginx, and one that
    is not a valid regex is reported and left out. Then each route's rewriter, unless a
    redirect of its Ingress answers first (ingress-nginx's order)."""
    unusable: set[int] = set()  # ids of routes whose path is not a valid regex
    for host, reason in regex_hosts.items():
        vhost = hosts.get_or_create(host)
        owners = {r.path: r for r in vhost.paths.prefix.values()}
        for bad in vhost.paths.enable_regex():
            owner = owners.get(bad)
            unusable.add(id(owner))
            problem(owner.ingress if owner else "-", f"{host or '*'} path {bad!r} is not a valid "
                    f"regex (regex paths are on for this host by {reason.rsplit('/', 1)[-1]}); "
                    "path ignored", reason)
        for route in vhost.paths.values():
            route.use_regex = route.path_type != EXACT
    for vhost in hosts.hosts():
        for route in vhost.paths.values():
            rewrite = route.rewrite
            if (rewrite is not None and rewrite.needs_rewrite(route.path)
                    and rewrite.redirect is None and id(route) not in unusable):
                route.rewriter, problems = compile_rewriter(route.path, rewrite)
                for annotation, message in problems:
                    problem(route.ingress, f"{route.host or '*'}: {message}", annotation)
