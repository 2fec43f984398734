"""A Kubernetes API server on 127.0.0.1 (served.py over an EmbeddedCluster) and a real client.

Use the `kubeapi` fixture for `(embedded, client)`, or `kubeapi_factory` to choose a
bearer token or the embedded store's options and to reach the server (to stop it).
Load with `pytest_plugins = ["kubeapi_fixture"]` (or import the fixtures).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.kube import KubeCluster, load_kubeconfig
from mcs_controller.access.served import KubeApiServer, serve_cluster


@dataclass
class KubeApi:
    embedded: EmbeddedCluster
    server: KubeApiServer
    client: KubeCluster
    kubeconfig: Path

    def write_kubeconfig(self, path: Path, *, token: str | None = None) -> Path:
        """Another kubeconfig for this server, with `token` ("" for none) as its user."""
        return write_kubeconfig(self.server, path, token=token)


def write_kubeconfig(server: KubeApiServer, path: Path, *, token: str | None = None) -> Path:
    """A kubeconfig for `server`; `token` overrides the server's own (None: use the server's)."""
    config = server.kubeconfig()
    if token is not None:
        config["users"][0]["user"] = {"token": token} if token else {}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def kubeapi_factory(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[KubeApi]]]:
    made: list[KubeApi] = []

    async def make(*, token: str | None = None, request_timeout: float = 5.0,
                   page_size: int = 500, **embedded: Any) -> KubeApi:
        store = EmbeddedCluster(embedded.pop("name", "c1"), **embedded)
        server = await serve_cluster(store, "127.0.0.1", 0, token=token)
        path = write_kubeconfig(server, tmp_path / f"kubeconfig-{len(made)}")
        client = KubeCluster(store.name, load_kubeconfig(str(path)),
                             request_timeout=request_timeout, page_size=page_size)
        api = KubeApi(store, server, client, path)
        made.append(api)
        return api

    yield make
    for api in made:
        await api.client.close()
        await api.server.stop()


@pytest.fixture
async def kubeapi(
    kubeapi_factory: Callable[..., Awaitable[KubeApi]],
) -> tuple[EmbeddedCluster, KubeCluster]:
    api = await kubeapi_factory()
    return api.embedded, api.client
