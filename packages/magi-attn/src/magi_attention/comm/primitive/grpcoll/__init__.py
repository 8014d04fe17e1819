"""``magi_attention.comm.primitive.grpcoll``: magi_grpcoll's ``group_cast`` and ``group_reduce``
(the anchor's signatures and semantics; their work handle's ``wait_post_process`` returns the
result), and the native implementation's ``GrpCollConfig``."""

from magi_attention import _compat
from magi_attention.config import GrpCollConfig

group_cast = _compat.grpcoll.group_cast
group_reduce = _compat.grpcoll.group_reduce
GrpCollWork = _compat.grpcoll.GrpCollWork

__all__ = ["GrpCollConfig", "GrpCollWork", "group_cast", "group_reduce"]
