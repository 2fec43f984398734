"""Routing: Ingress + IngressClass + annotations -> a RouteTable (pure; see README.md)."""

from .build import build_route_table
from .classes import select_ingresses
from .options import BuildOptions
from .table import RouteTable
from .values import Problem

__all__ = ["BuildOptions", "Problem", "RouteTable", "build_route_table", "select_ingresses"]
