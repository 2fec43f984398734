"""Limits of the data path (nginx/Envoy names in comments, so operators recognise them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Per-listener limits. Sizes in bytes, times in seconds."""

    max_connections: int = 10000  # beyond it: 503 and close (Envoy max_downstream_connections)
    max_request_line: int = 8192  # request-target length: 414 (nginx large_client_header_buffers)
    max_header_size: int = 65536  # whole request head: 431
    max_header_count: int = 100  # Envoy max_headers_count: 431
    max_field_size: int = 16384  # one header line: 431
    header_timeout: float = 10.0  # first byte of a head to its end: 408 (nginx client_header_timeout)
    keepalive_timeout: float = 60.0  # idle client connection between requests (nginx keepalive_timeout)
    max_request_body: int | None = None  # 413 when a body is known to exceed it (client_max_body_size)
    #: Bytes of request body kept so a retry can resend it after it started flowing upstream;
    #: a longer body is not retried once its first byte left (the first attempt's result stands).
    retry_buffer: int = 65536
    #: Body bytes held while no upstream connection is ready before client reading pauses.
    pending_high: int = 262144
    max_idle_per_endpoint: int = 128  # pooled keep-alive connections per upstream address
    upstream_idle_timeout: float = 30.0  # pooled connection idle time before we close it
    max_mirrors_in_flight: int = 256  # beyond it a mirror copy is dropped, never the primary
    max_mirror_body: int = 1048576  # a longer request body is not mirrored (dropped)
    mirror_timeout: float = 5.0  # each mirror copy's own deadline
    #: A mirror line that wrote a batch less than this long ago holds new copies until this
    #: long from now, so a busy shadow is woken about once per period (0: every loop turn).
    mirror_hold: float = 0.001
    #: Keep the event loop polling (never blocking) for this long after the last read: on a VM
    #: an idle vCPU halts and wakes slowly, which shows in tail latency at moderate load
    #: (HAProxy's `busy-polling`, bounded). Costs CPU while traffic flows; 0 = off.
    busy_poll: float = 0.0
    #: ssl-passthrough: connecting to an endpoint (then the next one is tried, as
    #: ingress-nginx's proxy-connect-timeout default) ...
    passthrough_connect_timeout: float = 5.0
    #: ... and a spliced pair with no byte either way for this long is closed (nginx stream
    #: proxy_timeout's default; a client gone without a FIN would hold both sockets for good).
    passthrough_idle_timeout: float = 600.0
