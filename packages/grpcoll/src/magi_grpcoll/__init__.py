"""magi_grpcoll: group_cast / group_reduce collectives (multicast and its transpose-reduce) over
torch.distributed, with precomputed plans for repeated use.

Shape legend: S_in / S_out rows of input / output along dim 0, W group size, H heads.
"""

from magi_grpcoll._version import INTERFACE_VERSION, __version__
from magi_grpcoll.api import clear_plan_cache, group_cast, group_reduce
from magi_grpcoll.errors import GrpCollError
from magi_grpcoll.impl._graphs import LaunchGraphs
from magi_grpcoll.impl.native import native_call_state, set_native_call_count
from magi_grpcoll.kernels import REDUCE_OPS
from magi_grpcoll.plan import GroupCastPlan, GroupReducePlan
from magi_grpcoll.work import GrpCollWork

__all__ = [
    "INTERFACE_VERSION",
    "REDUCE_OPS",
    "GroupCastPlan",
    "GroupReducePlan",
    "GrpCollError",
    "GrpCollWork",
    "LaunchGraphs",
    "__version__",
    "clear_plan_cache",
    "group_cast",
    "group_reduce",
    "native_call_state",
    "set_native_call_count",
]
