"""Group-collective implementations: a2a-v (any backend), hierarchical (2-D mesh), native (NVLink)."""

from __future__ import annotations

from magi_grpcoll.impl.a2av import A2AVImpl
from magi_grpcoll.impl.base import GrpCollImpl, get_impl, registered_impls
from magi_grpcoll.impl.hier import HierImpl
from magi_grpcoll.impl.native import NativeImpl

__all__ = ["A2AVImpl", "GrpCollImpl", "HierImpl", "NativeImpl", "get_impl", "registered_impls"]
