"""Engines: the controller's work queue (and, elsewhere, the DNS and gateway data paths)."""

from mcs_controller.engine.workqueue import ShutDown, WorkQueue

__all__ = ["ShutDown", "WorkQueue"]
