"""magi_solver: mask geometry, dispatch and distributed attention plans (C++ core, no torch).

The compiled module ``magi_solver._core`` is private; import the names from here. Geometry:
``AttnRange`` / ``AttnRanges`` (half-open token intervals and their set algebra), ``AttnMaskType``
(FULL 0, CAUSAL 1, INVCAUSAL 2, BICAUSAL 3), ``AttnRectangle(s)`` (slices as box x diagonal band,
for exact area and cuts), ``slice_area`` and ``RangeError`` (a ``ValueError``).
"""

from magi_solver import _core
from magi_solver._core import (
    AttnMaskType,
    AttnRange,
    AttnRanges,
    AttnRectangle,
    AttnRectangles,
    RangeError,
    slice_area,
)
from magi_solver._version import INTERFACE_VERSION, __version__

# dispatch and plan (S2)
# isort: split
from magi_solver._core import (
    CalcArgs,
    CastArgs,
    DispatchMeta,
    DistAttnPlan,
    OverlapParams,
    RankPlan,
    StagePlan,
    make_dispatch_meta,
    make_dist_attn_plan,
    solve_dispatch,
)

# ---- end of dispatch and plan (S2) ----

# dynamic solver
# isort: split
from magi_solver._core import (
    DynamicPlan,
    DynamicRankPlan,
    DynCastArgs,
    DynReduceArgs,
    make_dynamic_plan,
)

# ---- end of dynamic solver ----

__all__ = [
    "INTERFACE_VERSION",
    "__version__",
    "_core",
    # geometry
    "AttnMaskType",
    "AttnRange",
    "AttnRanges",
    "AttnRectangle",
    "AttnRectangles",
    "RangeError",
    "slice_area",
    # dispatch and plan (S2)
    "CalcArgs",
    "CastArgs",
    "DispatchMeta",
    "DistAttnPlan",
    "OverlapParams",
    "RankPlan",
    "StagePlan",
    "make_dispatch_meta",
    "make_dist_attn_plan",
    "solve_dispatch",
    # dynamic solver
    "DynCastArgs",
    "DynReduceArgs",
    "DynamicPlan",
    "DynamicRankPlan",
    "make_dynamic_plan",
]
