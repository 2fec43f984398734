"""Test helpers: an embedded fleet with a running controller, and objects to put in it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import ENDPOINT_SLICES, NAMESPACES, SERVICE_EXPORTS, SERVICES
from mcs_controller.engine.controller import Controller
from mcs_controller.model import labels as L


async def eventually(check: Callable[[], object], within: float = 3.0, interval: float = 0.01):
    """Poll an (async or plain) check until it returns truthy without raising; return it."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            last = None
        except (AssertionError, LookupError, Exception) as exc:  # noqa: BLE001 - retried
            last = exc
        await asyncio.sleep(interval)
    if last is not None:
        raise last
    raise AssertionError("condition not met in time")


async def settle(controller: Controller, quiet: float = 0.15, within: float = 5.0) -> None:
    """Wait until the queue is empty and no write happened for `quiet` seconds."""
    deadline = time.monotonic() + within
    last_total, last_change = controller.writer.total, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        busy = len(controller.queue) > 0 or controller.queue.in_progress
        if controller.writer.total != last_total or busy:
            last_total, last_change = controller.writer.total, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            return
    raise AssertionError("controller did not settle")


def namespace(name: str) -> dict:
    return {"metadata": {"name": name}}


def service(name: str, ns: str, *, headless: bool = False, ports=None, **spec) -> dict:
    body = {"selector": {"app": name}, "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}]}
    if headless:
        body["clusterIP"] = "None"
    body.update(spec)
    return {"metadata": {"name": name, "namespace": ns}, "spec": body}


def export(name: str, ns: str) -> dict:
    return {"metadata": {"name": name, "namespace": ns}}


def endpoint(ip: str, ready: bool | None = True, **extra) -> dict:
    ep = {"addresses": [ip], **extra}
    if ready is not None:
        ep["conditions"] = {"ready": ready, "serving": ready, "terminating": False}
    return ep


def source_slice(svc: str, ns: str, endpoints: list[dict], *, name: str | None = None,
                 family: str = "IPv4", ports=None) -> dict:
    """A slice as the built-in EndpointSlice controller writes it."""
    return {
        "metadata": {"name": name or f"{svc}-abcde", "namespace": ns,
                     "labels": {L.LABEL_SERVICE_NAME: svc, L.LABEL_MANAGED_BY: L.BUILTIN_SLICE_CONTROLLER}},
        "addressType": family,
        "ports": ports or [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


@dataclass
class Fleet:
    clusters: dict[str, EmbeddedCluster]
    hub: EmbeddedCluster
    controller: Controller

    def __getitem__(self, name: str) -> EmbeddedCluster:
        return self.clusters[name]

    async def exported(self, cluster: str, name: str, ns: str, endpoints: list[dict], **svc) -> None:
        c = self.clusters[cluster]
        await c.create(SERVICES, service(name, ns, **svc))
        await c.create(ENDPOINT_SLICES, source_slice(name, ns, endpoints))
        await c.create(SERVICE_EXPORTS, export(name, ns))


@contextlib.asynccontextmanager
async def running_fleet(
    names=("c1", "c2", "c3"), namespaces=("demo",), grace_period: float = 30.0, start: bool = True
) -> AsyncIterator[Fleet]:
    clusters = {}
    for i, name in enumerate(names):
        c = EmbeddedCluster(name, service_cidr=f"10.{10 + i}.0.0/16", bookmark_interval=0)
        for ns in namespaces:
            await c.create(NAMESPACES, namespace(ns))
        clusters[name] = c
    hub = EmbeddedCluster("hub", service_cidr="10.9.0.0/16", bookmark_interval=0)
    for ns in namespaces:
        await hub.create(NAMESPACES, namespace(ns))
    controller = Controller(clusters, hub, grace_period=grace_period, workers=2)
    fleet = Fleet(clusters, hub, controller)
    task = None
    if start:
        await controller.start_informers()
        task = asyncio.create_task(controller.run_workers())
    try:
        yield fleet
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await controller.stop()
