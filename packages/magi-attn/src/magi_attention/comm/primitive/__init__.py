"""``magi_attention.comm.primitive``: the group collectives (``grpcoll``), from magi_grpcoll."""

from magi_attention.comm.primitive import grpcoll
from magi_attention.comm.primitive.grpcoll import group_cast, group_reduce

__all__ = ["grpcoll", "group_cast", "group_reduce"]
