"""Frozen configuration dataclasses of the distributed runtime (reference §4.6).

Why frozen: configs are part of the hashable DistAttnRuntimeKey, so two equal configs must
select the same cached runtime on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from magi_attention.common.enum import AttnOverlapMode, DispatchAlgType, OverlapAlgType
from magi_attention.errors import MagiAttentionError

__all__ = [
    "DistAttnConfig", "DispatchConfig", "DispatchAlg", "LBDispatchAlg", "DPDispatchAlg",
    "BSDispatchAlg", "MinHeapDispatchAlg", "BTPDispatchAlg", "ToppHeapDispatchAlg",
    "RandomSelectDispatchAlg", "SequentialDispatchAlg", "BatchToppHeapDispatchAlg",
    "SortedSequentialSelectAlg", "CostAwareDispatchAlg", "OverlapConfig", "OverlapAlg", "UniformOverlapAlg",
    "GreedyOverlapAlg", "GrpCollConfig",
]


@dataclass(frozen=True)
class DispatchAlg:
    """Base of the chunk-to-rank dispatch algorithms; ``solver_name`` is the magi_solver alg."""

    type: ClassVar = None
    solver_name: ClassVar[str | None] = None
    is_optimal = False
    is_partitions_returned = False
    is_equal_num_workloads = False
    is_affinity_considered = False

    def solver_kwargs(self) -> dict:
        return {}


@dataclass(frozen=True)
class LBDispatchAlg(DispatchAlg):
    type = DispatchAlgType.LOWER_BOUND


@dataclass(frozen=True)
class DPDispatchAlg(DispatchAlg):
    type = DispatchAlgType.DYNAMIC_PROGRAMMING
    is_optimal = True


@dataclass(frozen=True)
class BSDispatchAlg(DispatchAlg):
    type = DispatchAlgType.BINARY_SEARCH
    is_optimal = True
    is_partitions_returned = True


@dataclass(frozen=True)
class MinHeapDispatchAlg(DispatchAlg):
    type = DispatchAlgType.MIN_HEAP
    solver_name = "min_heap"
    is_partitions_returned = True
    is_equal_num_workloads = True


@dataclass(frozen=True)
class BTPDispatchAlg(DispatchAlg):
    type = DispatchAlgType.BACKTRACKING_PRUNING
    solver_name = "backtracking_pruning"
    is_optimal = True
    is_partitions_returned = True
    is_equal_num_workloads = True


@dataclass(frozen=True)
class ToppHeapDispatchAlg(DispatchAlg):
    top_p: float = 0.0
    type = DispatchAlgType.TOPP_HEAP
    solver_name = "topp_heap"
    is_partitions_returned = True
    is_equal_num_workloads = True
    is_affinity_considered = True

    def solver_kwargs(self) -> dict:
        return {"top_p": float(self.top_p)}


@dataclass(frozen=True)
class RandomSelectDispatchAlg(DispatchAlg):
    type = DispatchAlgType.RANDOM_SELECT
    solver_name = "random_select"
    is_partitions_returned = True
    is_equal_num_workloads = True


@dataclass(frozen=True)
class SequentialDispatchAlg(DispatchAlg):
    type = DispatchAlgType.SEQUENTIAL
    solver_name = "sequential"
    is_partitions_returned = True
    is_equal_num_workloads = True


@dataclass(frozen=True)
class BatchToppHeapDispatchAlg(DispatchAlg):
    top_p: float = 0.0
    num_of_select_chunk: int = 1
    type = DispatchAlgType.BATCH_TOPP_HEAP
    is_partitions_returned = True
    is_equal_num_workloads = True
    is_affinity_considered = True


@dataclass(frozen=True)
class SortedSequentialSelectAlg(DispatchAlg):
    allocation_ratio: float = 1.0
    type = DispatchAlgType.SORTED_SEQUENTIAL_SELECT
    solver_name = "sorted_sequential_select"
    is_partitions_returned = True
    is_equal_num_workloads = True

    def solver_kwargs(self) -> dict:
        return {"allocation_ratio": float(self.allocation_ratio)}


#: CostAwareDispatchAlg's default candidates that magi_solver solves itself, without the turned
#: sequential split (the choice before the turn became a default; benchmarks and tests compare the two)
UNTURNED_CANDIDATES = ("min_heap", "sequential", "sorted_sequential_select")
#: how CostAwareDispatchAlg weighs a rank's plan (see its docstring)
COST_MODELS = ("tiles", "area")


@dataclass(frozen=True)
class CostAwareDispatchAlg(DispatchAlg):
    """Solve the dispatch with each of ``candidates``, plan every rank's stages for each, and keep the
    candidate whose busiest rank has the least planned cost (magi-attn's addition; not in the
    anchor). Each candidate is also solved at the key's chunk size times each of ``chunk_factors``
    (where the padded length divides), so the choice covers coarser, less fragmented dispatches.

    ``cost_model`` says how a rank's plan is weighed (``meta.dispatch_choice``):

    - ``"area"``: host-stage area plus ``remote_cost`` times remote-stage area (``remote_cost``
      stands in for the lower throughput of fragmented remote stages). The busiest rank's least
      work wins.
    - ``"tiles"`` (default): the area choice, unless the tile model finds a plan cheaper than it by
      more than 5% (``dispatch_choice.TILE_MARGIN``). The tile model counts the attention tiles a
      rank's kernel calls visit (128 x 128, each slice tiled from its own start, as FA4 runs varlen
      documents), plus a cost per q tile and per call, plus the K/V tokens the rank receives. Why:
      a kernel's time follows the tiles it visits, not the cells it keeps, so short documents and
      fragments cost more than their area says; at 128k varlen causal the area choice gave one rank
      1.6x (forward) to 1.8x (backward) the other's kernel time. Fitted on 2 x H200 (fa4 backend);
      the margin keeps the measured area choice where the two models nearly agree. Measured:
      varlen causal 1.17 / 1.22x at 128k, 1.03 / 1.08x at 32k (forward / backward); other masks
      keep the area choice.

    Why choose at all: min_heap balances area exactly but scatters a sequence's chunks over the
    ranks, so most of a sliding window's or a document mask's work becomes remote-stage fragments,
    while sequential keeps neighbours together at the price of imbalance. Which one wins depends on
    the mask; this measures it on the plan. Pure and deterministic: every rank makes the same
    choice without communication. Costs one dispatch solve and plan per candidate and factor, once
    per key. ``"rotated_sequential"`` is the sequential split turned by a few chunk counts
    (``meta.dispatch_choice.rotated_sequential``): it balances a sliding window at cp 2, where it
    took a 64k, 8k-window, 4-layer step from 0.88 / 0.81 to 0.94 / 0.92 scaling efficiency (forward /
    backward, 2 x H200, fa4 backend; BENCHMARKS.md "The turned split, the host stage launched
    first"). Measurements of both models: BENCHMARKS.md "Dispatch by tiles".
    """

    candidates: tuple[str, ...] = (*UNTURNED_CANDIDATES, "rotated_sequential")
    remote_cost: float = 1.75
    chunk_factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    cost_model: str = "tiles"
    type = DispatchAlgType.COST_AWARE
    is_partitions_returned = True
    is_equal_num_workloads = True
    is_affinity_considered = True

    def __post_init__(self):
        known = ("min_heap", "sequential", "sorted_sequential_select", "topp_heap", "random_select",
                 "rotated_sequential")
        if not self.candidates or any(c not in known for c in self.candidates):
            raise MagiAttentionError(f"CostAwareDispatchAlg(candidates={self.candidates!r}): give one or "
                                     f"more of {known}")
        if not self.remote_cost > 0:
            raise MagiAttentionError(f"CostAwareDispatchAlg(remote_cost={self.remote_cost!r}) must be > 0")
        if self.cost_model not in COST_MODELS:
            raise MagiAttentionError(f"CostAwareDispatchAlg(cost_model={self.cost_model!r}): give one of "
                                     f"{COST_MODELS}")
        factors = self.chunk_factors
        if (not isinstance(factors, tuple) or not factors
                or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors)):
            raise MagiAttentionError(f"CostAwareDispatchAlg(chunk_factors={factors!r}) must be a non-empty "
                                     "tuple of ints >= 1")


@dataclass(frozen=True)
class DispatchConfig:
    alg: DispatchAlg = field(default_factory=MinHeapDispatchAlg)

    def __post_init__(self):
        if not isinstance(self.alg, DispatchAlg):
            raise TypeError(f"DispatchConfig(): alg must be a DispatchAlg, got {type(self.alg)}")


@dataclass(frozen=True)
class OverlapAlg:
    type = None


@dataclass(frozen=True)
class UniformOverlapAlg(OverlapAlg):
    random_costs: bool = False
    random_seed: int | None = None
    type = OverlapAlgType.UNIFORM


@dataclass(frozen=True)
class GreedyOverlapAlg(OverlapAlg):
    type = OverlapAlgType.GREEDY


@dataclass(frozen=True)
class OverlapConfig:
    """How remote K/V is split into stages overlapped with computation; ``degree`` = #stages."""

    enable: bool = True
    mode: AttnOverlapMode = AttnOverlapMode.STATIC
    degree: int | None = 1
    dynamic_max_degree: int | None = 8
    min_chunk_size: int = 512
    max_num_chunks: int = 64
    alg: OverlapAlg = field(default_factory=UniformOverlapAlg)
    calc_cost_factor: float = 1.0
    comm_cost_factor: float = 1.0

    def __post_init__(self):
        set_ = object.__setattr__
        if isinstance(self.mode, str):
            set_(self, "mode", AttnOverlapMode(self.mode))
        if not self.enable:
            set_(self, "mode", AttnOverlapMode.STATIC)
            set_(self, "degree", 1)
            set_(self, "max_num_chunks", 1)
        bad = []
        if self.mode is AttnOverlapMode.STATIC:
            if self.degree is None or int(self.degree) < 1:
                bad.append(f"static mode needs degree >= 1, got {self.degree}")
            elif self.degree > self.max_num_chunks:
                bad.append(f"degree={self.degree} must be <= max_num_chunks={self.max_num_chunks}")
        else:
            if self.degree is not None:
                bad.append(f"dynamic mode needs degree=None, got {self.degree}")
            if self.dynamic_max_degree is not None and self.dynamic_max_degree <= 0:
                bad.append(f"dynamic_max_degree must be None or > 0, got {self.dynamic_max_degree}")
        if self.min_chunk_size <= 0:
            bad.append(f"min_chunk_size must be > 0, got {self.min_chunk_size}")
        if self.max_num_chunks <= 0:
            bad.append(f"max_num_chunks must be > 0, got {self.max_num_chunks}")
        if self.calc_cost_factor <= 0 or self.comm_cost_factor <= 0:
            bad.append("calc_cost_factor and comm_cost_factor must be > 0")
        if not isinstance(self.alg, OverlapAlg):
            bad.append(f"alg must be an OverlapAlg, got {type(self.alg).__name__}")
        if bad:
            raise MagiAttentionError("OverlapConfig(): " + "; ".join(bad))


@dataclass(frozen=True)
class GrpCollConfig:
    """Native group-collective buffer settings (used only with MAGI_ATTENTION_NATIVE_GRPCOLL=1)."""

    num_sms: int = 24
    nvl_chunk_size: int = 8
    nvl_buffer_size: int = 256
    rdma_chunk_size: int = 16
    rdma_buffer_size: int = 128
    num_nvl_bytes: int = int(2e9)
    num_rdma_bytes: int = 0

    def to_buffer_args(self) -> dict:
        return {"num_nvl_bytes": self.num_nvl_bytes, "num_rdma_bytes": self.num_rdma_bytes,
                "low_latency_mode": False,
                "num_qps_per_rank": 1 if self.num_rdma_bytes == 0 else self.num_sms,
                "explicitly_destroy": True}


@dataclass(frozen=True)
class DistAttnConfig:
    dispatch_config: DispatchConfig = field(default_factory=DispatchConfig)
    overlap_config: OverlapConfig = field(default_factory=OverlapConfig)
    grpcoll_config: GrpCollConfig = field(default_factory=GrpCollConfig)

    def __post_init__(self):
        from magi_attention.env import is_qo_comm_enable

        if is_qo_comm_enable():
            object.__setattr__(self, "overlap_config", OverlapConfig(enable=False))
