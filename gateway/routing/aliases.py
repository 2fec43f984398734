"""ingress-nginx `server-alias`: more names for an Ingress's host. A request for an alias is
served by that host's rules, as nginx's extra `server_name` values do.

The alias goes to the Ingress's first rule host (the server that would list it in nginx).
An alias that is itself a rule host of any Ingress is ignored (ingress-nginx: "conflicting
hostname and alias"), and of two Ingresses naming the same alias the oldest keeps it; both
are reported. Aliases are exact names: wildcards and nginx regex names are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .matching import HostTable, host_error
from .values import Annotations, split_list

KEY = "server-alias"


def parse_aliases(ann: Annotations) -> tuple[str, ...]:
    found = ann.string(KEY)
    if found is None:
        return ()
    out: list[str] = []
    for name in (n.lower() for n in split_list(found[1], ",")):
        why = ("wildcard and regex aliases are not supported" if name.startswith(("*", "~"))
               else host_error(name))
        if why:
            ann.problem(found[0], f"alias {name!r}: {why}; ignored")
        elif name not in out:
            out.append(name)
    return tuple(out)


def install_aliases(hosts: HostTable[Any], wanted: Iterable[tuple[str, list[str], tuple[str, ...]]],
                    problem: Callable[[str, str, str], None]) -> None:
    """`wanted`: (Ingress key, its rule hosts, its aliases), oldest Ingress first;
    `problem(Ingress key, message, annotation)`."""
    owners: dict[str, str] = {}
    for key, rule_hosts, aliases in wanted:
        host = next((h for h in rule_hosts if h and not h.startswith("*.")), None)
        for alias in aliases:
            if host is None:
                problem(key, f"alias {alias!r}: the Ingress has no rule host to alias; ignored", KEY)
            elif alias in hosts.exact:
                problem(key, f"alias {alias!r} is a rule host (of this or another Ingress); ignored", KEY)
            elif alias in owners:
                problem(key, f"alias {alias!r} is already an alias of {owners[alias]}; ignored", KEY)
            else:
                owners[alias] = key
                hosts.aliases[alias] = hosts.exact[host]
