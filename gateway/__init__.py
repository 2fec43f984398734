"""The multi-cluster L7 gateway (see gateway/README.md)."""

from gateway._native import check_fresh

check_fresh()
