"""Upstream: endpoints of every member cluster, their health, and load balancing.

`UpstreamManager` implements `gateway.types.ClusterManager`; the parts are usable alone:
`EndpointCatalog` (discovery), `Balancer` (one backend's picks), `HealthChecker` (active
HTTP checks), `OutlierDetector` (passive ejection).
"""

from gateway.upstream.balancer import Balancer
from gateway.upstream.discovery import EndpointCatalog
from gateway.upstream.health import HealthChecker, http_probe
from gateway.upstream.lb import compile_hash_key, priority_loads
from gateway.upstream.manager import UpstreamManager, narrow
from gateway.upstream.outlier import OutlierDetector

__all__ = [
    "Balancer",
    "EndpointCatalog",
    "HealthChecker",
    "OutlierDetector",
    "UpstreamManager",
    "compile_hash_key",
    "http_probe",
    "narrow",
    "priority_loads",
]
