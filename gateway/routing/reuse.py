"""What one route-table build hands the next: each Ingress's parse, and each backend's
policy.

A big hub rebuilds its table from every Ingress whenever one of them changes, and parsing
is most of a build (gateway/routing/ingress.py: some 140 annotation keys per Ingress). A
parse depends only on the Ingress object, on the Services and ConfigMaps it looked up, and
on the build's own settings (member clusters, --default-backend-service, global auth). The
informer caches never change an object in place (an update is a new object), so a parse is
still right when the Ingress and every object it looked up are the very same objects as
last time, and the settings are equal: then the build takes it as it is and parses only
what changed.

A backend whose policy fields are the same as last build's gets the same BackendPolicy
object, so the upstream manager (which compares every backend's policy on each install, on
the event loop) passes it by identity.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.types import BackendPolicy, BackendRef

from .extauth import ConfigMapLookup
from .ingress import Parsed, parse_ingress
from .policy import Context, build_policy

Lookup = tuple[tuple[str, str], object]  # ((namespace, name), what was found: None if nothing)


class _Recorded(Mapping[tuple[str, str], dict]):
    """The build's Services as one parse sees them: each lookup is written down."""

    __slots__ = ("_services", "_seen")

    def __init__(self, services: Mapping[tuple[str, str], dict], seen: list[Lookup]) -> None:
        self._services = services
        self._seen = seen

    def get(self, key: tuple[str, str], default: object = None) -> object:  # type: ignore[override]
        found = self._services.get(key)
        self._seen.append((key, found))
        return default if found is None else found

    def __getitem__(self, key: tuple[str, str]) -> dict:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found  # type: ignore[return-value]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._services)

    def __len__(self) -> int:
        return len(self._services)


@dataclass
class _Entry:
    ingress: dict  # the object parsed (identity is the test)
    parsed: Parsed
    services: list[Lookup]
    configmaps: list[Lookup]


class Reuse:
    """Kept by the gateway across builds (BuildOptions.reuse); one build at a time."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._next: dict[str, _Entry] = {}  # this build's (kept by `end`)
        self._settings: tuple = ()
        self._policies: dict[BackendRef, tuple[dict[str, Any], BackendPolicy]] = {}
        self._next_policies: dict[BackendRef, tuple[dict[str, Any], BackendPolicy]] = {}
        self.reused = self.parsed = 0  # in the last build (tests and benches read them)

    def begin(self, settings: tuple) -> None:
        """A build starts; `settings`: what every parse depends on besides its lookups."""
        if settings != self._settings:
            self._entries = {}
            self._settings = settings
        self._next = {}
        self._next_policies = {}
        self.reused = self.parsed = 0

    def parse(self, ing: dict, key: str, build: Context) -> Parsed:
        """The Ingress's parse: last build's when nothing it depends on changed, else fresh."""
        entry = self._entries.get(key)
        if entry is not None and entry.ingress is ing and _same(entry, build):
            self.reused += 1
        else:
            services: list[Lookup] = []
            configmaps: list[Lookup] = []
            seen = Context("", build.clusters,
                           _Recorded(build.services or {}, services), build.default_backend,
                           build.auth, _recording(build.configmap, configmaps))
            entry = _Entry(ing, parse_ingress(ing, key, seen), services, configmaps)
            self.parsed += 1
        self._next[key] = entry
        return entry.parsed

    def policy(self, ref: BackendRef, fields: dict[str, Any]) -> BackendPolicy:
        """The backend's policy from its fields: last build's object when they are equal."""
        last = self._policies.get(ref)
        policy = last[1] if last is not None and last[0] == fields else build_policy(fields)
        self._next_policies[ref] = (fields, policy)
        return policy

    def end(self) -> None:
        """The build is done: keep what it used (deleted Ingresses and backends go)."""
        self._entries, self._next = self._next, {}
        self._policies, self._next_policies = self._next_policies, {}


def _same(entry: _Entry, build: Context) -> bool:
    """Each lookup finds the same object again (the ConfigMap lookups are made again, so the
    build records what it read: the gateway rebuilds when one of them changes)."""
    services = build.services or {}
    for key, found in entry.services:
        if services.get(key) is not found:
            return False
    for (namespace, name), found in entry.configmaps:
        if build.configmap is None or build.configmap(namespace, name) is not found:
            return False
    return True


def _recording(configmap: ConfigMapLookup | None, seen: list[Lookup]) -> ConfigMapLookup | None:
    if configmap is None:
        return None

    def lookup(namespace: str, name: str) -> dict | None:
        found = configmap(namespace, name)
        seen.append(((namespace, name), found))
        return found
    return lookup

