"""Type stubs of the compiled module magi_solver._core (hand-written; checked by mypy.stubtest).

Geometry first (owner: geometry core), then dispatch and plan (appended below the marker line).
Coordinates are token positions (int64); every range is half-open [start, end).
"""

import enum
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeAlias, overload

__version__: str

class RangeError(ValueError):
    """Bad geometry input (inverted range, unknown mask type, range outside, ...); names the values."""

_Pair: TypeAlias = tuple[int, int]
_RangeLike: TypeAlias = AttnRange | tuple[int, int] | list[int]
_MaskTypeLike: TypeAlias = AttnMaskType | str | int

class AttnMaskType(enum.Enum):
    """Mask type of one slice; ``.value`` is the string, ``AttnMaskType("causal")`` converts one.

    Int codes (the kernels' attn_type_map) differ from the declaration order:
    FULL 0, CAUSAL 1 (bottom-right aligned), INVCAUSAL 2 (top-left aligned), BICAUSAL 3 (both).
    Wherever a mask type is accepted, its string value or int code is accepted too.
    """

    FULL = "full"
    CAUSAL = "causal"
    BICAUSAL = "bi_causal"
    INVCAUSAL = "inv_causal"
    def to_int_type(self) -> int:
        """The int code (FULL 0, CAUSAL 1, INVCAUSAL 2, BICAUSAL 3)."""
    @staticmethod
    def from_int_type(int_type: int) -> AttnMaskType:
        """The mask type of an int code; RangeError outside 0..3."""

class AttnRange:
    """A half-open token interval [start, end); start <= end is enforced (empty ranges allowed)."""

    def __init__(self, start: int, end: int) -> None: ...
    @staticmethod
    def from_range(attn_range: _RangeLike, check: bool = False) -> AttnRange:
        """Copy an AttnRange or build one from a (start, end) pair (always validated)."""
    @property
    def start(self) -> int: ...
    @start.setter
    def start(self, value: int) -> None: ...
    @property
    def end(self) -> int: ...
    @end.setter
    def end(self, value: int) -> None: ...
    @property
    def seqlen(self) -> int:
        """end - start."""
    def __len__(self) -> int: ...
    def to_naive_range(self) -> tuple[int, int]: ...
    def clone(self) -> AttnRange: ...
    def offset(self, offset: int) -> AttnRange:
        """The range shifted by ``offset``."""
    def truncate(self, start: int | None = None, end: int | None = None) -> AttnRange:
        """Clip to [start, end); an inverted result is the empty range at the clipped start."""
    def intersect(self, other: AttnRange) -> AttnRange:
        """Intersection; an empty result sits at min(max(starts), min(ends))."""
    def intersect_size(self, other: AttnRange) -> int: ...
    def union(self, other: AttnRange) -> list[AttnRange]:
        """One range if they overlap, else both (empty ones dropped), ascending."""
    def union_size(self, other: AttnRange) -> int: ...
    def diff_by(self, other: AttnRange) -> list[AttnRange]:
        """other - self: the parts of ``other`` outside this range (0, 1 or 2 ranges)."""
    def is_subrange_of(self, other: AttnRange) -> bool: ...
    def is_overlap_with(self, other: AttnRange) -> bool:
        """Strict overlap: touching ranges do not overlap."""
    def is_empty(self) -> bool: ...
    def is_valid_close(self, start: int | None = None, end: int | None = None) -> bool: ...
    def is_valid_open(self, start: int | None = None, end: int | None = None) -> bool: ...
    def check_valid(self, start: int | None = None, end: int | None = None) -> None:
        """RangeError unless start <= end (defaults: this range's own bounds)."""
    def __eq__(self, other: object) -> bool: ...
    def __lt__(self, other: AttnRange) -> bool: ...
    def __le__(self, other: AttnRange) -> bool: ...
    def __gt__(self, other: AttnRange) -> bool: ...
    def __ge__(self, other: AttnRange) -> bool: ...
    def __hash__(self) -> int: ...
    def __copy__(self) -> AttnRange: ...
    def __deepcopy__(self, memo: Any) -> AttnRange: ...
    def __getstate__(self) -> tuple[int, int]: ...
    def __setstate__(self, state: tuple[int, int]) -> None: ...

class AttnRanges:
    """An ordered list of AttnRange with token-set algebra.

    ``merge()`` of a list is read as "these tokens stored back to back, ascending" by the
    ``make_range(s)_local`` maps. Items are returned as copies: assign through ``ranges[i] = ...``.
    """

    def __init__(self) -> None: ...
    @staticmethod
    def from_ranges(ranges: AttnRanges | Iterable[_RangeLike], check: bool = False) -> AttnRanges:
        """Copy of AttnRanges, AttnRange items or (start, end) pairs (always validated)."""
    @staticmethod
    def from_cu_seqlens(cu_seqlens: Sequence[int], seq_len: int) -> AttnRanges:
        """[(cu[0], cu[1]), ...]; cu must start at 0, increase strictly and end at seq_len."""
    def to_naive_ranges(self) -> list[tuple[int, int]]: ...
    def to_cu_seqlens(self, seq_len: int) -> list[int]:
        """Inverse of from_cu_seqlens; RangeError unless is_cu_seqlens(seq_len)."""
    def clone(self) -> AttnRanges: ...
    def append(self, attn_range: _RangeLike, check: bool = False) -> None: ...
    def insert(self, idx: int, attn_range: _RangeLike, check: bool = False) -> None: ...
    def extend(self, ranges: AttnRanges | Iterable[_RangeLike], check: bool = False) -> None: ...
    def pop(self, idx: int = -1) -> AttnRange: ...
    def sort(self) -> AttnRanges:
        """Stable sort by start (a new list)."""
    def merge(self) -> AttnRanges:
        """Sort, then join overlapping or touching ranges (a new list)."""
    def merge_with_split_alignment(self, split_alignment: int = 1) -> AttnRanges:
        """Round starts down and ends up to multiples of split_alignment (> 0), then merge."""
    def clear_empty(self) -> AttnRanges: ...
    def find_hole_ranges(
        self, other_attn_ranges: AttnRanges, is_self_merged: bool = False, is_other_merged: bool = False
    ) -> AttnRanges:
        """self - other as token sets, merged. The flags skip re-merging inputs known to be merged."""
    def find_overlap_ranges(
        self, other_attn_ranges: AttnRanges, is_self_merged: bool = False, is_other_merged: bool = False
    ) -> AttnRanges:
        """self ∩ other as token sets, merged."""
    def make_range_local(self, other_attn_range: AttnRange, is_self_merged: bool = False) -> AttnRange:
        """Position of a global range in the buffer holding merge(self) back to back.

        Example: [[5, 10), [15, 20), [25, 30)] maps [17, 20) to [7, 10). RangeError unless the
        range lies inside one merged range.
        """
    def make_ranges_local(self, other_attn_ranges: AttnRanges, is_self_merged: bool = False) -> AttnRanges: ...
    def chunk(self, chunk_size: int, check: bool = True) -> list[AttnRanges]:
        """Consecutive groups of chunk_size (> 0) tokens in list order; ranges must not overlap."""
    def truncate(self, start: int | None = None, end: int | None = None) -> AttnRanges:
        """Clip every range to [start, end) and drop the empty results (order kept)."""
    def is_sorted(self) -> bool: ...
    def is_merged(self) -> bool:
        """Sorted and prev.end < next.start."""
    def is_non_overlap(self) -> bool: ...
    def is_cu_seqlens(self, seq_len: int) -> bool: ...
    def is_valid(self) -> bool: ...
    def is_empty(self) -> bool:
        """No ranges at all."""
    def check_valid(self) -> None: ...
    @property
    def total_seqlen(self) -> int:
        """Sum of the lengths (overlaps counted each time)."""
    @property
    def max_seqlen(self) -> int: ...
    @property
    def start(self) -> int:
        """Smallest start; RangeError when empty."""
    @property
    def end(self) -> int:
        """Largest end; RangeError when empty."""
    @property
    def size(self) -> int: ...
    @property
    def points(self) -> list[int]:
        """Sorted distinct endpoints."""
    def intersect_size(self) -> int:
        """Tokens covered more than once, each counted (coverage - 1) times."""
    def intersect_size_with(self, other: AttnRanges) -> int: ...
    def union_size(self) -> int: ...
    def union_size_with(self, other: AttnRanges) -> int: ...
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, idx: int) -> AttnRange: ...
    @overload
    def __getitem__(self, idx: slice) -> AttnRanges: ...
    @overload
    def __setitem__(self, idx: int, value: _RangeLike) -> None: ...
    @overload
    def __setitem__(self, idx: slice, value: AttnRanges | Iterable[_RangeLike]) -> None: ...
    def __delitem__(self, idx: int) -> None: ...
    def __iter__(self) -> Iterator[AttnRange]: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __copy__(self) -> AttnRanges: ...
    def __deepcopy__(self, memo: Any) -> AttnRanges: ...
    def __getstate__(self) -> tuple[list[tuple[int, int]]]: ...
    def __setstate__(self, state: tuple[list[tuple[int, int]]]) -> None: ...

@overload
def slice_area(q_start: int, q_end: int, k_start: int, k_end: int, mask_type: _MaskTypeLike) -> int:
    """Exact number of visible cells of the slice [q_start, q_end) x [k_start, k_end)."""

@overload
def slice_area(q_range: AttnRange, k_range: AttnRange, mask_type: _MaskTypeLike) -> int: ...

class AttnRectangle:
    """Cells (q, k) with q in q_range, k in k_range and d_lo <= k - q <= d_hi, bounds kept tightest.

    Every slice is such a set and so is every q- or k-cut of one; area() is O(1) and
    to_slices() turns any rectangle back into at most 3 standard slices.
    """

    def __init__(self, q_range: AttnRange, k_range: AttnRange, mask_type: _MaskTypeLike = ...) -> None: ...
    @staticmethod
    def from_band(q_range: AttnRange, k_range: AttnRange, d_lo: int, d_hi: int) -> AttnRectangle: ...
    @property
    def q_range(self) -> AttnRange: ...
    @property
    def k_range(self) -> AttnRange: ...
    @property
    def d_lo(self) -> int: ...
    @property
    def d_hi(self) -> int: ...
    def is_empty(self) -> bool: ...
    def area(self) -> int:
        """Exact cell count, O(1)."""
    def cut_q(self, pos: int) -> tuple[AttnRectangle, AttnRectangle]:
        """(rows < pos, rows >= pos), an exact partition of the cells."""
    def cut_k(self, pos: int) -> tuple[AttnRectangle, AttnRectangle]:
        """(columns < pos, columns >= pos), an exact partition of the cells."""
    def to_slices(self) -> list[tuple[AttnRange, AttnRange, AttnMaskType]]:
        """At most 3 (q_range, k_range, mask_type) slices with exactly these cells."""
    def to_qk_range_mask_type(self) -> list[tuple[AttnRange, AttnRange, AttnMaskType]]:
        """Alias of to_slices (anchor name)."""
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __getstate__(self) -> tuple[int, int, int, int, int, int]: ...
    def __setstate__(self, state: tuple[int, int, int, int, int, int]) -> None: ...

class AttnRectangles:
    """A list of (cell-disjoint) rectangles with batch cuts and q/k unions."""

    @overload
    def __init__(self) -> None: ...
    @overload
    def __init__(self, rects: Sequence[AttnRectangle]) -> None: ...
    @staticmethod
    def from_ranges(
        q_ranges: AttnRanges | Iterable[_RangeLike],
        k_ranges: AttnRanges | Iterable[_RangeLike],
        mask_types: Sequence[_MaskTypeLike],
    ) -> AttnRectangles:
        """One rectangle per slice; empty slices (incl. BICAUSAL with Lq > Lk) are dropped."""
    @property
    def rects(self) -> list[AttnRectangle]: ...
    def append(self, rect: AttnRectangle) -> None: ...
    def area(self) -> int: ...
    def size(self) -> int: ...
    def is_empty(self) -> bool: ...
    def cut_q(self, pos: int) -> tuple[AttnRectangles, AttnRectangles]: ...
    def cut_k(self, pos: int) -> tuple[AttnRectangles, AttnRectangles]: ...
    def get_qo_ranges_union(self) -> AttnRanges: ...
    def get_kv_ranges_union(self) -> AttnRanges: ...
    def to_slices(self) -> list[tuple[AttnRange, AttnRange, AttnMaskType]]: ...
    def __len__(self) -> int: ...
    def __getitem__(self, idx: int) -> AttnRectangle: ...
    def __iter__(self) -> Iterator[AttnRectangle]: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __getstate__(self) -> tuple[list[AttnRectangle]]: ...
    def __setstate__(self, state: tuple[list[AttnRectangle]]) -> None: ...

# ---- dispatch and plan ----
# Dispatch: the padded mask is cut along q into chunks, each weighed by its visible area, and the
# chunks are balanced over cp_size ranks (equal chunk counts). Plan: per rank a host stage on
# local KV plus num_stages remote stages, each fetching KV with one group_cast (KV-only comm).

class DispatchMeta:
    """Which chunks each rank holds (read-only, picklable; build with make_dispatch_meta).

    Rank r's local shard holds the chunks partitions[r] (ascending) back to back. With
    cp_size == 1 there is one chunk of total_seqlen tokens.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def total_seqlen(self) -> int:
        """Padded sequence length."""
    @property
    def chunk_size(self) -> int: ...
    @property
    def num_chunks(self) -> int: ...
    @property
    def cp_size(self) -> int: ...
    @property
    def shard_seqlen(self) -> int:
        """total_seqlen / cp_size."""
    @property
    def max_valid_ids(self) -> int:
        """Largest q end over slices with non-empty q and k (padding excluded)."""
    @property
    def chunk_areas(self) -> list[int]:
        """Visible cells in each chunk's q rows (the workloads balanced)."""
    @property
    def partitions(self) -> list[list[int]]:
        """Chunk ids of each rank, ascending, num_chunks / cp_size each."""
    @property
    def perm_idxs(self) -> list[int]:
        """The partitions concatenated in rank order."""
    @property
    def unperm_idxs(self) -> list[int]:
        """Inverse permutation of perm_idxs."""
    @property
    def host_ranges_per_rank(self) -> list[list[tuple[int, int]]]:
        """Merged global token ranges of each rank (its local buffer, back to back)."""
    def position_ids(self, rank: int) -> Any:
        """numpy int64 [shard_seqlen]: global positions of rank's tokens, clamped to max_valid_ids - 1."""
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __getstate__(self) -> tuple[int, int, int, int, int, list[int], list[list[int]]]: ...
    def __setstate__(self, state: tuple[int, int, int, int, int, list[int], list[list[int]]]) -> None: ...

def make_dispatch_meta(
    q_ranges: Sequence[tuple[int, int]],
    k_ranges: Sequence[tuple[int, int]],
    mask_types: Sequence[int],
    total_seqlen: int,
    chunk_size: int,
    cp_size: int,
    alg: str = "min_heap",
    *,
    top_p: float = 0.0,
    seed: int = 0,
    allocation_ratio: float = 1.0,
) -> DispatchMeta:
    """Chunk the padded mask, weigh chunks by area and balance them over cp_size ranks.

    alg: "min_heap", "sequential", "random_select" (seed), "topp_heap" (top_p, k-range IoU
    affinity), "sorted_sequential_select" (allocation_ratio) or "backtracking_pruning" (exact,
    at most 32 chunks). Raises RangeError on bad input (chunk_size not dividing total_seqlen,
    num_chunks % cp_size != 0, ranges outside [0, total_seqlen], inverted ranges, ...).
    """

def solve_dispatch(
    workloads: Sequence[int],
    cp_size: int,
    alg: str = "min_heap",
    *,
    top_p: float = 0.0,
    seed: int = 0,
    allocation_ratio: float = 1.0,
    job_k_ranges: Sequence[Sequence[tuple[int, int]]] | None = None,
    job_sample_ids: Sequence[int] | None = None,
) -> list[list[int]]:
    """Partition job indices into cp_size equal-count buckets (each ascending) with alg."""

class OverlapParams:
    """Multi-stage overlap settings (read-only, picklable).

    mode "static" uses degree remote stages; "dynamic" picks per rank the degree in
    1..dynamic_max_degree (0: no limit but max_num_chunks) minimising the pipeline cost, and every
    rank gets the largest.
    alg "uniform" cuts the remote chunks into equal-count contiguous groups; "greedy" balances
    each stage's comm against the previous stage's compute (never worse than uniform).
    enable=False: one remote stage holding all remote KV.
    """

    def __init__(
        self,
        *,
        enable: bool = True,
        mode: str = "static",
        degree: int = 1,
        dynamic_max_degree: int = 8,
        min_chunk_size: int = 512,
        max_num_chunks: int = 64,
        alg: str = "uniform",
        calc_cost_factor: float = 1.0,
        comm_cost_factor: float = 1.0,
        random_costs: bool = False,
        random_seed: int = 0,
    ) -> None: ...
    @property
    def enable(self) -> bool: ...
    @property
    def mode(self) -> str: ...
    @property
    def degree(self) -> int: ...
    @property
    def dynamic_max_degree(self) -> int: ...
    @property
    def min_chunk_size(self) -> int: ...
    @property
    def max_num_chunks(self) -> int: ...
    @property
    def alg(self) -> str: ...
    @property
    def calc_cost_factor(self) -> float: ...
    @property
    def comm_cost_factor(self) -> float: ...
    @property
    def random_costs(self) -> bool: ...
    @property
    def random_seed(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __getstate__(self) -> tuple[Any, ...]: ...
    def __setstate__(self, state: tuple[Any, ...]) -> None: ...

class CalcArgs:
    """Kernel arguments of one stage: q host-local, k local to the stage's KV buffer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def q_ranges(self) -> list[tuple[int, int]]: ...
    @property
    def k_ranges(self) -> list[tuple[int, int]]: ...
    @property
    def mask_types(self) -> list[int]: ...
    @property
    def area(self) -> int:
        """Visible cells of all slices."""
    def __len__(self) -> int: ...
    def as_arrays(self) -> tuple[Any, Any, Any]:
        """(q int32 [N, 2], k int32 [N, 2], mask types int32 [N]) numpy arrays."""

class CastArgs:
    """group_cast arguments of one rank for one stage (token units of the local K buffer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def input_split_sizes(self) -> list[int]:
        """Splits of the host KV buffer; sum to shard_seqlen."""
    @property
    def dst_indices(self) -> list[list[int]]:
        """Destination ranks of each input split: sorted, unique, never self."""
    @property
    def output_split_sizes(self) -> list[int]:
        """Splits of the receive buffer; sum to num_recv_tokens."""
    @property
    def src_index(self) -> list[int]:
        """Source rank of each output split."""

class StagePlan:
    """One remote stage of one rank."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def remote_k_ranges(self) -> list[tuple[int, int]]:
        """Global, merged; the receive buffer holds them back to back."""
    @property
    def num_recv_tokens(self) -> int: ...
    @property
    def calc(self) -> CalcArgs: ...
    @property
    def cast(self) -> CastArgs: ...

class RankPlan:
    """One rank's host stage and remote stages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def rank(self) -> int: ...
    @property
    def host_q_ranges(self) -> list[tuple[int, int]]: ...
    @property
    def host_k_ranges(self) -> list[tuple[int, int]]: ...
    @property
    def remote_k_ranges(self) -> list[tuple[int, int]]:
        """Keys this rank's slices touch minus the keys it holds (global, merged)."""
    @property
    def host_calc(self) -> CalcArgs: ...
    @property
    def stages(self) -> list[StagePlan]: ...

class DistAttnPlan:
    """The plans of the requested ranks; num_stages is the same for every rank."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def cp_size(self) -> int: ...
    @property
    def num_stages(self) -> int: ...
    @property
    def built_ranks(self) -> list[int]: ...
    def rank_plan(self, rank: int) -> RankPlan:
        """RangeError when this rank was not built."""
    def flat_calls(self, with_slices: bool = True) -> tuple[Any, Any, Any, Any, Any, Any]:
        """Every rank's kernel calls in flat numpy arrays (interface 1.1; every rank must be built):
        (area int64 [cp, 1 + num_stages], call j of rank r with 0 the host stage; recv int64 [cp], the
        K/V tokens a rank's stages receive; q int32 [N, 2], k int32 [N, 2], mask types int32 [N], call
        int32 [N]: the slices of every non-empty call and its index r * (1 + num_stages) + j).
        ``with_slices=False`` leaves the slices out (N = 0)."""

def make_dist_attn_plan(
    q_ranges: Sequence[tuple[int, int]],
    k_ranges: Sequence[tuple[int, int]],
    mask_types: Sequence[int],
    dispatch_meta: DispatchMeta,
    overlap: OverlapParams = ...,
    ranks: Sequence[int] | None = None,
) -> DistAttnPlan:
    """Static distributed attention plan of the listed ranks (all when None); pure, no collectives."""

# ---- dynamic solver ----
# QO comm (design §4): every cell of the mask goes to some rank, not necessarily the owner of its
# q; each rank's bucket splits into a host part (q and k held locally) and a remote part computed
# on two receive buffers (remote Q, remote KV), filled by one group_cast each. One remote stage.
# With flatten_head_groups every range lives in the expanded space [0, G*T), G = num_heads_kv:
# position g*T + t is token t of head group g, and a rank's local buffer is group-major.

class DynReduceArgs:
    """group_reduce arguments of one rank: the transpose of a DynCastArgs.

    Every row received by the cast goes back to its source: the out/lse ("lse") reduce and the
    dq reduce use DynamicRankPlan.q_reduce, the dk/dv reduce uses kv_reduce.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def input_split_sizes(self) -> list[int]:
        """Splits of the remote buffer (the cast's output splits)."""
    @property
    def dst_index(self) -> list[int]:
        """Destination rank of each input split (the cast's src_index)."""
    @property
    def output_split_sizes(self) -> list[int]:
        """Splits of the local buffer (the cast's input splits)."""
    @property
    def src_indices(self) -> list[list[int]]:
        """Contributing ranks of each output split (the cast's dst_indices)."""

class DynCastArgs:
    """group_cast arguments of one rank, in tokens of its local buffer (api §8.2 semantics).

    dst_indices / src_index may contain the rank itself: locally held rows that a remote slice
    needs are copied into the remote buffer as well (the anchor's calc_local_range), so the remote
    calc runs in one coordinate system and their partial outputs return through the reduce.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def input_split_sizes(self) -> list[int]:
        """Splits of the local buffer; sum to its length (num_head_groups * shard_seqlen)."""
    @property
    def dst_indices(self) -> list[list[int]]:
        """Destination ranks of each input split: sorted, unique, self allowed, may be empty."""
    @property
    def output_split_sizes(self) -> list[int]:
        """Splits of the receive buffer, ascending global order; sum to its length."""
    @property
    def src_index(self) -> list[int]:
        """Source rank of each output split (self allowed)."""
    def transpose(self) -> DynReduceArgs:
        """The group_reduce arguments returning every received row to its source."""

class DynamicRankPlan:
    """One rank's host calc, remote calc and the Q / KV casts filling its remote buffers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def rank(self) -> int: ...
    @property
    def host_ranges(self) -> list[tuple[int, int]]:
        """Global (expanded) merged ranges of the local buffer, back to back."""
    @property
    def host_calc(self) -> CalcArgs:
        """Cells whose q and k this rank holds; q and k local to the host buffer."""
    @property
    def remote_calc(self) -> CalcArgs:
        """All other cells of the bucket; q local to the remote-Q buffer, k to the remote-KV buffer."""
    @property
    def remote_q_ranges(self) -> list[tuple[int, int]]:
        """Global, merged: the remote-Q buffer's contents back to back ascending (own rows included)."""
    @property
    def remote_kv_ranges(self) -> list[tuple[int, int]]:
        """Global, merged: the remote-KV buffer's contents back to back ascending (own rows included)."""
    @property
    def num_remote_q_tokens(self) -> int: ...
    @property
    def num_remote_kv_tokens(self) -> int: ...
    @property
    def q_cast(self) -> DynCastArgs:
        """Fills the remote-Q buffer (forward: q; backward: q, o, do and lse)."""
    @property
    def kv_cast(self) -> DynCastArgs:
        """Fills the remote-KV buffer."""
    @property
    def q_reduce(self) -> DynReduceArgs:
        """q_cast.transpose(): out/lse ("lse" reduce) and dq back to their owners."""
    @property
    def kv_reduce(self) -> DynReduceArgs:
        """kv_cast.transpose(): dk/dv back to their owners."""

class DynamicPlan:
    """Cell assignment of every rank plus the requested ranks' plans (pure, deterministic)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Not constructible from Python (built by the solver); raises TypeError."""

    @property
    def cp_size(self) -> int: ...
    @property
    def alg(self) -> str:
        """"binary_greedy", "ncq" or "grg"."""
    @property
    def feasible(self) -> bool:
        """max(per_rank_area) <= 1.10 * average area."""
    @property
    def cost(self) -> float:
        """calc_cost_factor * max area + comm_cost_factor * (max weighted comm + sum / (10 * cp))."""
    @property
    def num_head_groups(self) -> int:
        """num_heads_kv when head groups are flattened, else 1."""
    @property
    def total_seqlen(self) -> int:
        """num_head_groups * dispatch total_seqlen (the coordinate space of every range)."""
    @property
    def num_heads_q(self) -> int: ...
    @property
    def num_heads_kv(self) -> int: ...
    @property
    def flatten_head_groups(self) -> bool: ...
    @property
    def per_rank_area(self) -> list[int]:
        """Mask cells computed by each rank (host + remote)."""
    @property
    def per_rank_comm(self) -> list[int]:
        """Tokens each rank receives from other ranks: per_rank_comm_q + per_rank_comm_kv."""
    @property
    def per_rank_comm_q(self) -> list[int]:
        """Q tokens received from other ranks (self copies not counted)."""
    @property
    def per_rank_comm_kv(self) -> list[int]:
        """KV tokens (K and V count once) received from other ranks."""
    @property
    def built_ranks(self) -> list[int]: ...
    def rank_plan(self, rank: int) -> DynamicRankPlan:
        """RangeError when this rank was not built."""
    def buckets(self, rank: int) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
        """Exact cells of ``rank`` as (q_range, k_range, mask type int) in global coordinates."""

def make_dynamic_plan(
    q_ranges: Sequence[tuple[int, int]],
    k_ranges: Sequence[tuple[int, int]],
    mask_types: Sequence[int],
    dispatch_meta: DispatchMeta,
    *,
    alg: str = "binary_greedy",
    num_heads_q: int = 1,
    num_heads_kv: int = 1,
    flatten_head_groups: bool = False,
    calc_cost_factor: float = 1.0,
    comm_cost_factor: float = 1.0,
    seed: int = 42,
    ranks: Sequence[int] | None = None,
) -> DynamicPlan:
    """Dynamic attention plan (QO comm) of the listed ranks (all when None); pure, no collectives.

    The mask is cut at dispatch-chunk boundaries in q and k into a grid; ``alg`` assigns every
    grid cell to a rank: "ncq" keeps it on its q owner (KV-only behaviour), "grg" is a seeded
    greedy over random orders, "binary_greedy" binary-searches a per-rank communication budget
    (OpenMP, parallel k-ary search) and never scores worse than NCQ. A received q token weighs
    num_heads_q / num_heads_kv, a kv token 2 (K and V). ``flatten_head_groups`` lets the GQA
    groups of one block land on different ranks (ranges then live in the expanded space).

    Example:
        >>> meta = make_dispatch_meta([(0, 64)], [(0, 64)], [1], 64, 8, 4)
        >>> plan = make_dynamic_plan([(0, 64)], [(0, 64)], [1], meta)
        >>> rp = plan.rank_plan(0)  # rp.q_cast / rp.kv_cast feed group_cast; rp.q_reduce the lse reduce
    """
