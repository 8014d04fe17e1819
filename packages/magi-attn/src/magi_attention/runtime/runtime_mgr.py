"""Key creation and the per-key manager (dispatch meta + plan + runtime).

Building a manager needs no collective: the solver is pure and deterministic, so every rank
computes the same dispatch meta and its own rank plan independently.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from magi_attention import _compat
from magi_attention.common.enum import AttnOverlapMode, AttnRole
from magi_attention.common.ranges import mask_type_codes, naive_ranges
from magi_attention.config import CostAwareDispatchAlg, DistAttnConfig
from magi_attention.env import check_flag_comb
from magi_attention.errors import MagiAttentionError
from magi_attention.functional.dispatch import ChunkLayout, dispatch_func, undispatch_func
from magi_attention.meta.dispatch_choice import refined_dispatch_meta, solve_dispatch
from magi_attention.meta.key import DistAttnRuntimeKey, resolve_cp_group
from magi_attention.runtime._common import plans_take_group_lists
from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr, resolved
from magi_attention.runtime.dist_attn import DistAttnRuntime, dist_attn_func
from magi_attention.runtime.prefetch import build_in_background
from magi_attention.runtime.qo_comm import QOCommRuntime, qo_comm_attn_func

__all__ = ["DistAttnRuntimeMgr", "init_dist_attn_runtime_key", "init_dist_attn_runtime_mgr",
           "get_or_create_mgr", "prefetch_mgr", "check_flag_comb"]


#: On: a prefetched key's build also does its runtime's first-call host work (stage plans, native
#: bindings, mask translations: ``DistAttnRuntimeMgr.prepare_ahead``) on the prefetch thread; off:
#: the first calc_attn does it, as for a key made at once.
PREPARE_AHEAD = True

#: On: under MAGI_ATTENTION_QO_COMM the dynamic solver cuts the mask on the key's chunk grid even where
#: the cost-aware dispatch picked coarser chunks (``refined_dispatch_meta``), so it can hand one part
#: of a long document to another rank; off: on the dispatch's own chunks.
QO_KEY_CHUNK_GRID = True


def _check_int(fn: str, name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int,)) and not (
            isinstance(v, torch.Tensor) and v.numel() == 1):
        raise MagiAttentionError(f"{fn}(): {name}={v!r} must be an int")
    v = int(v)
    if v < lo:
        raise MagiAttentionError(f"{fn}(): {name}={v} must be >= {lo}")
    return v


def init_dist_attn_runtime_key(q_ranges, k_ranges, attn_mask_type, total_seqlen_q, total_seqlen_k,
                               num_heads_q, num_heads_kv, head_dim, pad_size, chunk_size,
                               cp_group_or_mesh, dist_attn_config: DistAttnConfig | None = None,
                               is_same_source: bool = True, is_q_permutable: bool = True,
                               is_k_permutable: bool = True, dispatch_source=None,
                               fn: str = "magi_attn_flex_key") -> DistAttnRuntimeKey:
    """Validate everything (before any collective) and build the padded, hashable key."""
    flags = check_flag_comb()
    if (is_same_source, is_q_permutable, is_k_permutable) != (True, True, True):
        raise NotImplementedError(
            f"NYI: {fn}(): only self-attention (is_same_source=is_q_permutable=is_k_permutable="
            f"True) is supported, got ({is_same_source}, {is_q_permutable}, {is_k_permutable})")
    cfg = dist_attn_config if dist_attn_config is not None else DistAttnConfig()
    if not isinstance(cfg, DistAttnConfig):
        raise MagiAttentionError(f"{fn}(): dist_attn_config must be a DistAttnConfig, got "
                                 f"{type(cfg).__name__}")
    alg = cfg.dispatch_config.alg
    solvable = alg.solver_name is not None or isinstance(alg, CostAwareDispatchAlg)
    if not (solvable and alg.is_partitions_returned and alg.is_equal_num_workloads):
        raise MagiAttentionError(
            f"{fn}(): dispatch alg {type(alg).__name__} does not return equal-size partitions; "
            "use MinHeapDispatchAlg, SequentialDispatchAlg, ToppHeapDispatchAlg, "
            "SortedSequentialSelectAlg, RandomSelectDispatchAlg, BTPDispatchAlg or CostAwareDispatchAlg")
    tq = _check_int(fn, "total_seqlen_q", total_seqlen_q, 1)
    tk = _check_int(fn, "total_seqlen_k", total_seqlen_k, 1)
    hq = _check_int(fn, "num_heads_q", num_heads_q, 1)
    hk = _check_int(fn, "num_heads_kv", num_heads_kv, 1)
    d = _check_int(fn, "head_dim", head_dim, 1)
    pad = _check_int(fn, "pad_size", pad_size, 0)
    chunk = _check_int(fn, "chunk_size", chunk_size, 1)
    if hq % hk:
        raise MagiAttentionError(f"{fn}(): num_heads_q={hq} must be a multiple of "
                                 f"num_heads_kv={hk} (GQA)")
    if tq != tk:
        raise NotImplementedError(f"NYI: {fn}(): total_seqlen_q={tq} != total_seqlen_k={tk}; "
                                  "only self-attention (equal lengths) is supported")
    qr = list(naive_ranges(q_ranges, fn=fn, arg="q_ranges"))
    kr = list(naive_ranges(k_ranges, fn=fn, arg="k_ranges"))
    if len(qr) != len(kr):
        raise MagiAttentionError(f"{fn}(): q_ranges has {len(qr)} ranges but k_ranges has "
                                 f"{len(kr)}; each slice needs one of each")
    types = list(mask_type_codes(attn_mask_type, len(qr), fn=fn))
    for name, rs, total in (("q_ranges", qr, tq), ("k_ranges", kr, tk)):
        for i, (s, e) in enumerate(rs):
            if e > total:
                raise MagiAttentionError(f"{fn}(): {name}[{i}]=({s}, {e}) ends beyond "
                                         f"total_seqlen={total}")
    cp_group, cp_mesh = resolve_cp_group(cp_group_or_mesh, hierarchical=flags.hierarchical_comm,
                                         fn=fn)
    cp_size = dist.get_world_size(cp_group)
    total = tq + pad
    if cp_size > 1:
        if total % chunk:
            raise MagiAttentionError(
                f"{fn}(): padded total seqlen {total} (= {tq} + pad_size {pad}) is not divisible by "
                f"chunk_size={chunk}; use pad_size=compute_pad_size({tq}, {cp_size}, {chunk})")
        if (total // chunk) % cp_size:
            raise MagiAttentionError(
                f"{fn}(): {total // chunk} chunks cannot be split evenly over cp_size={cp_size}; "
                f"use pad_size=compute_pad_size({tq}, {cp_size}, {chunk})")
    if pad:
        qr.append((tq, total))
        kr.append((0, 0))
        types.append(0)
    return DistAttnRuntimeKey(
        q_ranges=tuple(qr), k_ranges=tuple(kr), attn_mask_type=tuple(types),
        total_seqlen_q=total, total_seqlen_k=tk + pad, num_heads_q=hq, num_heads_kv=hk,
        head_dim=d, pad_size=pad, chunk_size=chunk, cp_group=cp_group, cp_mesh=cp_mesh,
        dist_attn_config=cfg, flags=flags, dispatch_source=dispatch_source,
        is_same_source=is_same_source, is_q_permutable=is_q_permutable,
        is_k_permutable=is_k_permutable)


def _overlap_params(cfg: DistAttnConfig):
    oc = cfg.overlap_config
    alg = oc.alg
    return _compat.solver.OverlapParams(
        enable=oc.enable, mode="dynamic" if oc.mode is AttnOverlapMode.DYNAMIC else "static",
        degree=oc.degree if oc.degree is not None else 1,
        dynamic_max_degree=oc.dynamic_max_degree if oc.dynamic_max_degree is not None else 0,
        min_chunk_size=oc.min_chunk_size, max_num_chunks=oc.max_num_chunks,
        alg=alg.type.value, calc_cost_factor=oc.calc_cost_factor,
        comm_cost_factor=oc.comm_cost_factor,
        random_costs=bool(getattr(alg, "random_costs", False)),
        random_seed=int(getattr(alg, "random_seed", 0) or 0))


def _device_for(group: Any) -> torch.device:
    if dist.get_backend(group) == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class DistAttnRuntimeMgr:
    """Everything one key needs at run time: dispatch meta, rank plan and runtime."""

    def __init__(self, key: DistAttnRuntimeKey, dispatch_meta: Any, plan: Any):
        self.key = key
        self.dispatch_meta = dispatch_meta
        self.plan = plan
        self.cp_group = key.cp_group
        self.rank = dist.get_rank(key.cp_group)
        self.cp_size = dist.get_world_size(key.cp_group)
        self.device = _device_for(key.cp_group)
        self.layout = ChunkLayout(
            partitions=tuple(tuple(int(c) for c in p) for p in dispatch_meta.partitions),
            chunk_size=int(dispatch_meta.chunk_size), rank=self.rank, group=key.cp_group)
        comm_kwargs = {}
        if key.flags.hierarchical_comm and key.cp_mesh is not None:
            comm_kwargs = {"inter_group": key.cp_mesh.get_group(0),
                           "intra_group": key.cp_mesh.get_group(1)}
        if key.flags.qo_comm:  # a magi_solver DynamicPlan: one remote stage, q/o travel too
            self.runtime = QOCommRuntime(plan, self.rank, key.cp_group, key.flags, self.device,
                                         comm_kwargs)
        else:
            built = list(plan.built_ranks)
            group_plans = [plan.rank_plan(r) for r in range(self.cp_size)] \
                if len(built) == self.cp_size else None
            self.runtime = DistAttnRuntime(plan.rank_plan(self.rank), plan.num_stages,
                                           key.cp_group, key.flags, self.device, comm_kwargs, group_plans)
        self._position_ids: torch.Tensor | None = None

    def prepare_ahead(self) -> None:
        """The runtime's first-call host work, done now (``DistAttnRuntime.prepare_ahead``; the
        QO-comm runtime has none): called on the prefetch thread."""
        if isinstance(self.runtime, DistAttnRuntime):
            self.runtime.prepare_ahead(int(self.dispatch_meta.shard_seqlen),
                                       self.key.num_heads_kv * self.key.head_dim)

    def __repr__(self) -> str:
        return (f"DistAttnRuntimeMgr(rank={self.rank}/{self.cp_size}, "
                f"stages={self.runtime.num_stages}, shard_seqlen={self.dispatch_meta.shard_seqlen})")

    def dispatch_qo(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch_func(x, self.layout)

    dispatch_kv = dispatch_qo

    def undispatch_qo(self, x: torch.Tensor) -> torch.Tensor:
        return undispatch_func(x, self.layout)

    undispatch_kv = undispatch_qo

    def get_position_ids(self, attn_role: AttnRole = AttnRole.QUERY) -> torch.Tensor:
        if self._position_ids is None:
            pos = self.dispatch_meta.position_ids(self.rank)
            self._position_ids = torch.as_tensor(pos, dtype=torch.int64).to(self.device)
        return self._position_ids

    def calc_attn(self, q, k, v, sink=None, softmax_scale=None, softcap=0.0,
                  return_max_logits=False):
        _check_calc_inputs(self, q, k, v, sink)
        if self.key.flags.qo_comm:
            if self.key.flags.flatten_head_groups and (sink is not None or return_max_logits):
                raise MagiAttentionError(
                    "calc_attn(): MAGI_ATTENTION_FLATTEN_HEAD_GROUPS=1 is incompatible with "
                    f"{'sink' if sink is not None else 'return_max_logits=True'}; unset the flag "
                    "or drop the sink / max_logits")
            return qo_comm_attn_func(q, k, v, self.runtime, sink=sink,
                                     softmax_scale=softmax_scale, softcap=softcap,
                                     return_max_logits=return_max_logits)
        return dist_attn_func(q, k, v, self.runtime, sink=sink, softmax_scale=softmax_scale,
                              softcap=softcap, return_max_logits=return_max_logits)


def _check_calc_inputs(mgr: DistAttnRuntimeMgr, q, k, v, sink) -> None:
    key, fn = mgr.key, "calc_attn"
    shard = int(mgr.dispatch_meta.shard_seqlen)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise MagiAttentionError(f"{fn}(): {name} must be a 3-D tensor [S, h, d], got {got}")
        if t.shape[0] != shard:
            raise MagiAttentionError(f"{fn}(): {name} has {t.shape[0]} tokens but this rank's "
                                     f"shard holds {shard}; pass the output of dispatch(x, key)")
    heads = {"q": key.num_heads_q, "k": key.num_heads_kv, "v": key.num_heads_kv}
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape[1] != heads[name] or (name != "v" and t.shape[2] != key.head_dim):
            raise MagiAttentionError(
                f"{fn}(): {name} has shape {list(t.shape)}; the key expects "
                f"[{shard}, {heads[name]}, {key.head_dim}] (num_heads_q={key.num_heads_q}, "
                f"num_heads_kv={key.num_heads_kv}, head_dim={key.head_dim})")
    if k.shape != v.shape[:2] + k.shape[2:]:
        raise MagiAttentionError(f"{fn}(): k {list(k.shape)} and v {list(v.shape)} differ")
    if not (q.dtype == k.dtype == v.dtype):
        raise MagiAttentionError(f"{fn}(): q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device.type != mgr.device.type:
        raise MagiAttentionError(f"{fn}(): tensors are on {q.device} but the cp group's backend "
                                 f"({dist.get_backend(mgr.cp_group)}) works on {mgr.device}")
    if sink is not None:
        if sink.dim() != 2 or sink.shape[1] != key.num_heads_q:
            raise MagiAttentionError(f"{fn}(): sink must be [s_sink, {key.num_heads_q}] "
                                     f"(layout 'sh'), got {list(sink.shape)}")


def init_dist_attn_runtime_mgr(key: DistAttnRuntimeKey,
                               ref_dispatch_meta: Any = None) -> DistAttnRuntimeMgr:
    """Solve dispatch (or reuse ``ref_dispatch_meta``) and plan this rank's stages."""
    cp_size = dist.get_world_size(key.cp_group)
    qr, kr, types = list(key.q_ranges), list(key.k_ranges), list(key.attn_mask_type)
    overlap = _overlap_params(key.dist_attn_config)
    if ref_dispatch_meta is None:
        chunk = key.chunk_size if cp_size > 1 else key.total_seqlen_q
        dispatch_meta = solve_dispatch(key.dist_attn_config.dispatch_config.alg, qr, kr, types,
                                       key.total_seqlen_q, chunk, cp_size, overlap)
    else:
        dispatch_meta = ref_dispatch_meta
    rank = dist.get_rank(key.cp_group)
    if key.flags.qo_comm:  # deterministic on every rank: no broadcast of the solution
        grid = (refined_dispatch_meta(dispatch_meta, key.chunk_size)
                if QO_KEY_CHUNK_GRID and cp_size > 1 else dispatch_meta)
        plan = _compat.make_dynamic_plan(
            qr, kr, types, grid, alg="binary_greedy", num_heads_q=key.num_heads_q,
            num_heads_kv=key.num_heads_kv, flatten_head_groups=key.flags.flatten_head_groups,
            ranks=[rank])
    else:  # every rank's plan where the native binding can use them (plans_take_group_lists)
        every_rank = key.flags.native_grpcoll and plans_take_group_lists()
        plan = _compat.solver.make_dist_attn_plan(
            qr, kr, types, dispatch_meta, overlap, ranks=None if every_rank else [rank])
    return DistAttnRuntimeMgr(key, dispatch_meta, plan)


def get_or_create_mgr(key: DistAttnRuntimeKey, ref_dispatch_meta: Any = None):
    """Look the key up in its group's LRU; build and insert the manager on a miss."""
    d = dist_attn_runtime_dict_mgr.dict_for(key.cp_group)
    mgr = resolved(d, key)
    if mgr is None:
        mgr = init_dist_attn_runtime_mgr(key, ref_dispatch_meta)
        d.put(key, mgr)
    return mgr


def prefetch_mgr(key: DistAttnRuntimeKey) -> None:
    """Enter the key in its group's LRU now and build its manager on the prefetch thread
    (runtime/prefetch.py); a key already cached is only refreshed."""
    d = dist_attn_runtime_dict_mgr.dict_for(key.cp_group)
    if d.get(key) is None:
        d.put(key, build_in_background(lambda: _built_ahead(key)))


def _built_ahead(key: DistAttnRuntimeKey) -> DistAttnRuntimeMgr:
    mgr = init_dist_attn_runtime_mgr(key)
    if PREPARE_AHEAD:
        mgr.prepare_ahead()
    return mgr
