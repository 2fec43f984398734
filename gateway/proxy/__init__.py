"""The gateway's HTTP/1.1 data path: asyncio.Protocol + httptools on both sides (uvloop-ready).

`ProxyServer(router, clusters, metrics=..., limits=Limits(...))` asks the Router where each
request goes and the ClusterManager which endpoint takes it, forwards over pooled keep-alive
connections, streams bodies with flow control, retries/falls back, mirrors, enforces limits.
`ProxyHooks` is the metrics interface (a no-op base class the app subclasses).

Design, in one place:
* One protocol object per client connection (client.py) and per upstream connection
  (pool.py); parser callbacks drive an `Exchange` (exchange.py + response.py + retry.py) per
  request. No task per request: a task exists only while connecting a new upstream socket.
* Flow control: an upstream socket whose write buffer is full pauses reading from the
  client, a full client write buffer pauses reading from the upstream; body bytes waiting
  for a connection pause the client past `Limits.pending_high`. Bodies are never buffered
  whole; the proxy holds at most about one read per direction plus the transports' buffers.
* Pool: idle keep-alive connections per upstream address, LIFO, capped per address, closed
  after `upstream_idle_timeout`. Reuse only after a complete response to a fully sent request
  on a connection both sides keep alive. A pooled connection found closed gets one free retry.
* Retry buffer: up to `Limits.retry_buffer` (64 KiB) of request body is kept by reference so a
  retry can resend it; a longer body is not retried once its first byte left.
* Expect: 100-continue: answered by the proxy (as nginx and Envoy do) once the request is
  routed and an endpoint picked, and not forwarded: retries and upstreams that ignore Expect
  just work; the cost is that an upstream cannot refuse the body before it is sent (a 404 or
  503 of our own is sent without 100, and the connection closes).
* Timeouts: a deadline per exchange plus the header-read and keep-alive deadlines, all
  checked by one lazy timer per client connection (no timer handle per request).
* Responses use standard reason phrases; the upstream's own phrase is not kept (as Envoy).
"""

from gateway.proxy.config import Limits
from gateway.proxy.hooks import ProxyHooks
from gateway.proxy.server import ProxyServer

__all__ = ["Limits", "ProxyHooks", "ProxyServer"]
