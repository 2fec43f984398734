"""ingress-nginx's `proxy-redirect-from`/`-to` (nginx `proxy_redirect`), `proxy-cookie-domain`
(`proxy_cookie_domain`) and `proxy-cookie-path` (`proxy_cookie_path`): the pod's `Location`
and `Refresh` headers, and the `domain`/`path` attributes of its `Set-Cookie` headers, are
rewritten on the way to the client, as nginx does:

* a plain `from` replaces what it matches, and only that: a prefix of `Location` (and of the
  URL after `url=` in `Refresh`) and of a cookie path, compared case-sensitively; a whole
  cookie domain, compared case-insensitively without its leading dot (which stays);
* `~regex` (`~*regex`: case-insensitive) must match from the start, and the value from there
  to its end becomes `to` with `$1`..`$9` replaced by the groups;
* `off` (and `default` for `proxy-redirect-from`) turns it off, as does leaving it out.

Pure: `ResponseRewriter.apply` takes and gives the flat header list of the data path
(gateway/proxy/heads.py: name, ": ", value, CRLF, ...), a new list when something changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .values import Annotations

REWRITE_KEYS: Final = frozenset({"proxy-redirect-from", "proxy-redirect-to", "proxy-cookie-domain",
                                 "proxy-cookie-path"})
_GROUP: Final = re.compile(r"\$(\d)")
_VARIABLE: Final = re.compile(r"\$(?!\d)")


@dataclass(frozen=True)
class Rewrite:
    """One nginx rewrite: `source` -> `target`; `regex` when `source` was `~...`."""

    source: str
    target: str
    regex: re.Pattern[str] | None = None
    whole: bool = False  # the whole value must match (cookie domains), else a prefix
    fold: bool = False  # compare case-insensitively (cookie domains)

    def apply(self, value: str) -> str | None:
        """The rewritten value, or None when it does not match."""
        if self.regex is not None:
            m = self.regex.match(value)
            if m is None:
                return None

            def group(ref: re.Match[str]) -> str:  # an unset or missing group is empty
                k = int(ref.group(1))
                return (m.group(k) or "") if k <= m.re.groups else ""

            return _GROUP.sub(group, self.target)
        if self.whole:
            return self.target if (value.lower() == self.source.lower() if self.fold
                                   else value == self.source) else None
        return self.target + value[len(self.source):] if value.startswith(self.source) else None

    def describe(self) -> dict:
        return {"from": self.source, "to": self.target}


@dataclass(frozen=True)
class ResponseRewriter:
    location: Rewrite | None = None  # Location, and the URL of Refresh
    cookie_domain: Rewrite | None = None
    cookie_path: Rewrite | None = None

    def apply(self, parts: list[bytes]) -> list[bytes]:
        """`parts` (a response head's flat header list, [0] the status line's slot) with the
        rewrites done; the same list when nothing changed."""
        out: list[bytes] | None = None
        for i in range(1, len(parts) - 3, 4):
            name = parts[i]
            if len(name) not in (8, 7, 10):  # Location, Refresh, Set-Cookie
                continue
            lower = name.lower()
            value = parts[i + 2].decode("latin-1")
            if lower == b"location" and self.location is not None:
                new = self.location.apply(value)
            elif lower == b"refresh" and self.location is not None:
                new = self._refresh(value)
            elif lower == b"set-cookie" and (self.cookie_domain or self.cookie_path) is not None:
                new = self._cookie(value)
            else:
                continue
            if new is not None and new != value:
                if out is None:
                    out = parts.copy()
                out[i + 2] = new.encode("latin-1", "replace").translate(None, b"\r\n")
        return parts if out is None else out

    def _refresh(self, value: str) -> str | None:
        at = value.lower().find("url=")
        if at < 0 or self.location is None:
            return None
        new = self.location.apply(value[at + 4:])
        return None if new is None else value[:at + 4] + new

    def _cookie(self, value: str) -> str | None:
        pieces = value.split(";")
        changed = False
        for n, piece in enumerate(pieces[1:], 1):
            key, eq, attr = piece.partition("=")
            name = key.strip().lower()
            rule = (self.cookie_domain if name == "domain" else
                    self.cookie_path if name == "path" else None)
            if rule is None or not eq:
                continue
            text = attr.strip()
            dot = "." if name == "domain" and text.startswith(".") and rule.regex is None else ""
            new = rule.apply(text[len(dot):])
            if new is not None:
                pieces[n] = f"{key}={dot}{new}"
                changed = True
        return ";".join(pieces) if changed else None

    def describe(self) -> dict:
        return {name: rule.describe() if rule is not None else None for name, rule in (
            ("redirect", self.location), ("cookieDomain", self.cookie_domain),
            ("cookiePath", self.cookie_path))}


def _rewrite(ann: Annotations, full: str, source: str, target: str, *, whole: bool = False,
             fold: bool = False) -> Rewrite | None:
    regex = None
    if source.startswith("~"):
        flags = re.IGNORECASE if source.startswith("~*") else 0
        try:
            regex = re.compile(source[2:] if flags else source[1:], flags)
        except re.error as exc:
            ann.problem(full, f"{source!r} is not a valid regex ({exc}); ignored")
            return None
    if _VARIABLE.search(target):
        ann.problem(full, f"{target!r}: nginx variables other than $1-$9 are not expanded "
                    "here; ignored")
        return None
    return Rewrite(source, target, regex, whole=whole, fold=fold)


def _pair(ann: Annotations, key: str, **kind: bool) -> Rewrite | None:
    """proxy-cookie-domain / -path: "off", or "<from> <to>"."""
    found = ann.string(key)
    if found is None or found[1].lower() == "off":
        return None
    full, text = found
    words = text.split()
    if len(words) != 2:
        ann.problem(full, f"{text!r}: expected 'off' or '<from> <to>'; ignored")
        return None
    return _rewrite(ann, full, words[0], words[1], **kind)


def parse_response_rewrite(ann: Annotations) -> ResponseRewriter | None:
    location = None
    source, target = ann.string("proxy-redirect-from"), ann.string("proxy-redirect-to")
    if source is not None and source[1].lower() not in ("off", "default"):
        if target is None:
            ann.problem(source[0], "needs proxy-redirect-to; ignored")
        elif " " in source[1] or " " in target[1]:
            ann.problem(source[0], "proxy-redirect-from and -to must have no spaces; ignored")
        else:
            location = _rewrite(ann, source[0], source[1], target[1])
    elif target is not None and source is None:
        ann.problem(target[0], "needs proxy-redirect-from; ignored")
    domain = _pair(ann, "proxy-cookie-domain", whole=True, fold=True)
    path = _pair(ann, "proxy-cookie-path")
    if location is None and domain is None and path is None:
        return None
    return ResponseRewriter(location, domain, path)
