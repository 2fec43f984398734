"""Operations plumbing shared by the controller, the DNS server and the gateway.

Structured logs (`logs`), Prometheus metrics on a per-instance registry (`metrics`)
and the admin HTTP endpoints /metrics, /healthz, /readyz (`admin`).
"""

from mcs_controller.ops.admin import AdminServer
from mcs_controller.ops.logs import kv, setup_logging
from mcs_controller.ops.metrics import ControllerMetrics, new_registry

__all__ = ["AdminServer", "ControllerMetrics", "kv", "new_registry", "setup_logging"]
