"""The gateway's HTTP/1.1 data path: asyncio.Protocol + httptools on both sides.

`ProxyServer(router, clusters, metrics=..., limits=Limits(...))` asks the Router where each
request goes and the ClusterManager which endpoint takes it, forwards over pooled keep-alive
connections, streams bodies with flow control, retries/falls back, mirrors, and enforces
limits. `ProxyHooks` is the metrics interface (no-op base class).
"""

from gateway.proxy.config import Limits
from gateway.proxy.hooks import ProxyHooks
from gateway.proxy.server import ProxyServer

__all__ = ["Limits", "ProxyHooks", "ProxyServer"]
