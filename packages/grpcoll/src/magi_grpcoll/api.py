"""group_cast / group_reduce: validate, build or fetch a cached plan, choose an implementation, run.

Implementation choice: the ``impl=`` argument, else ``MAGI_ATTENTION_HIERARCHICAL_COMM=1`` ("hier"),
else ``MAGI_ATTENTION_NATIVE_GRPCOLL=1`` ("native"), else "a2av".
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.distributed as dist

from magi_grpcoll.checks import check_lse, check_tensor, strip_device_padding
from magi_grpcoll.errors import GrpCollError
from magi_grpcoll.impl import get_impl
from magi_grpcoll.impl.base import backend_of
from magi_grpcoll.kernels import REDUCE_OPS
from magi_grpcoll.plan import GroupCastPlan, GroupReducePlan
from magi_grpcoll.sanity import exchange_and_check, is_sanity_check_enabled

__all__ = ["group_cast", "group_reduce", "clear_plan_cache", "select_impl_name"]

_PLAN_CACHE_SIZE = 256
_plan_cache: OrderedDict = OrderedDict()


def clear_plan_cache() -> None:
    """Drop every plan cached by the functional API (and the cached implementation checks)."""
    _plan_cache.clear()
    _support_cache.clear()


def _env_on(name: str) -> bool:
    return os.environ.get(name, "0") == "1"


def select_impl_name(impl: str | None) -> str:
    """The implementation a call will use: argument, then env flags, then "a2av"."""
    if impl is not None:
        return impl
    if _env_on("MAGI_ATTENTION_HIERARCHICAL_COMM"):
        return "hier"
    if _env_on("MAGI_ATTENTION_NATIVE_GRPCOLL"):
        return "native"
    return "a2av"


def _group_info(fn: str, group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{fn}(): torch.distributed is not initialised; call dist.init_process_group first.")
    return dist.get_rank(group), dist.get_world_size(group)


def _to_list(x):
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.tolist()]
    return x


def _freeze(x):
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return int(x)


def _cached(kind, builder, key, *args, **kw):
    try:
        hash(key)
    except TypeError:  # pragma: no cover - odd meta types: build without caching
        return builder(*args, **kw)
    plan = _plan_cache.get(key)
    if plan is None:
        plan = builder(*args, **kw)
        _plan_cache[key] = plan
        if len(_plan_cache) > _PLAN_CACHE_SIZE:
            _plan_cache.popitem(last=False)
    else:
        _plan_cache.move_to_end(key)
    return plan


def _first(x):
    """A cast of a list of tensors moves the same rows of each: the first one stands for all where
    only the row count or the device matters (the plan, the length check)."""
    return x[0] if isinstance(x, (list, tuple)) and x else x


def _plan_for(kind, builder, ins, outs, dsts, srcs, rank: int, world: int, input):
    """The plan for these lists on ``input``'s device, built once and cached."""
    input = _first(input)
    device = input.device if isinstance(input, torch.Tensor) else None
    key = (kind, _freeze(ins), _freeze(outs), _freeze(dsts), _freeze(srcs), rank, world,
           str(device) if device is not None else None)
    return _cached(kind, builder, key, ins, outs, dsts, srcs, rank=rank, world_size=world, device=device)


def _length_error(fn: str, plan, input, output):
    """The error for input/output row counts that disagree with the plan's splits, or None."""
    input, output = _first(input), _first(output)
    if isinstance(input, torch.Tensor) and input.dim() > 0 and plan.input_len != input.shape[0]:
        return GrpCollError(f"{fn}(): sum(input_split_sizes)={plan.input_len} does not match "
                            f"input.shape[0]={input.shape[0]}.")
    if isinstance(output, torch.Tensor) and output.dim() > 0 and plan.output_len != output.shape[0]:
        return GrpCollError(f"{fn}(): sum(output_split_sizes)={plan.output_len} does not match "
                            f"output.shape[0]={output.shape[0]}.")
    return None


def _raise_without_plan(fn: str, err, group):
    """No plan could be built here: tell the peers (when the sanity check is on), then raise."""
    if is_sanity_check_enabled():
        exchange_and_check(fn, None, err, group, None)
    raise err


_support_cache: dict = {}  # (impl, group, device, dtype, row shape, cast_lse, reduce_op, kwargs) -> reasons


def _select(fn, impl, input, group, cast_lse, reduce_op, kwargs):
    name = select_impl_name(impl)
    try:
        obj = get_impl(name)
    except ValueError as e:
        raise GrpCollError(f"{fn}(): {e}") from None
    # the answer depends only on these, and asking costs more host time than a small native call
    key = (name, id(group), backend_of(group), input.device, input.dtype, tuple(input.shape[1:]), cast_lse, reduce_op,
           tuple(sorted(kwargs)) if kwargs else ())
    reasons = _support_cache.get(key)
    if reasons is None:
        reasons = obj.not_supported_reasons(input=input, group=group, cast_lse=cast_lse, reduce_op=reduce_op,
                                            kwargs=kwargs)
        if len(_support_cache) > 1024:
            _support_cache.clear()
        _support_cache[key] = reasons
    if reasons:
        raise GrpCollError(f"{fn}(): impl={name!r} cannot run input {list(input.shape)} {input.dtype} "
                           f"{input.device}: " + "; ".join(reasons))
    return obj


def _check_plan_group(fn, plan, group):
    rank, world = _group_info(fn, group)
    if plan.rank != rank or plan.world_size != world:
        raise GrpCollError(f"{fn}(): the plan was built for rank {plan.rank} of {plan.world_size} but this "
                           f"process is rank {rank} of {world} in the group; rebuild the plan.")


def _finish(fn, plan, err, group, row_info):
    if is_sanity_check_enabled():
        exchange_and_check(fn, plan, err, group, row_info)
    elif err is not None:
        raise err


def _as_tensors(fn: str, name: str, x) -> tuple[tuple, bool]:
    """(tensors, given as a list): a cast moves one tensor or a list of tensors with the same rows."""
    if isinstance(x, (list, tuple)):
        if not x:
            raise GrpCollError(f"{fn}(): {name} is an empty list; give a tensor or a non-empty list of tensors.")
        return tuple(x), True
    return (x,), False


def _check_cast_tensors(fn: str, plan, input, output):
    """Checked (inputs, outputs, input given as a list): one output per input, each [S_out, *row of
    its input] with its input's dtype and device."""
    inputs, listed = _as_tensors(fn, "input", input)
    outputs, out_listed = _as_tensors(fn, "output", output)
    if listed != out_listed or len(inputs) != len(outputs):
        raise GrpCollError(f"{fn}(): input and output must both be tensors or lists of the same length; got "
                           f"{len(inputs) if listed else 'a tensor'} and "
                           f"{len(outputs) if out_listed else 'a tensor'}.")
    for i, (x, y) in enumerate(zip(inputs, outputs)):
        tag = f"[{i}]" if listed else ""
        check_tensor(fn, f"input{tag}", x, dim0=plan.input_len)
        check_tensor(fn, f"output{tag}", y, dim0=plan.output_len, like=x)
        if x.device != inputs[0].device:
            raise GrpCollError(f"{fn}(): input{tag} is on {x.device} but input[0] is on {inputs[0].device}.")
    return inputs, outputs, listed


def _cast_result(work, n: int, listed: bool, lse: bool):
    """Give a cast's result the caller's shape: the impls return the outputs of every moved tensor
    (lse last) as one tensor or a tuple; a list input gets a list back (and the lse beside it)."""
    if not listed:
        return work

    def flatten(*outputs):  # wait_post_process(outputs_list[, output_lse]) -> the impl's flat form
        if not outputs:
            return ()
        data, rest = outputs[0], outputs[1:]
        return (*data, *rest)

    def shape(result):
        result = result if isinstance(result, tuple) else (result,)
        data = list(result[:n])
        return (data, result[n]) if lse else data

    work.wrap_post_process(flatten, shape)
    return work


def _run_cast(plan, input, output, group, *, async_op=False, input_lse=None, output_lse=None, impl=None,
              _fn="GroupCastPlan.cast", _err=None, **kwargs):
    fn, err, obj = _fn, _err, None
    row_info = None
    inputs, outputs, listed = (), (), False
    try:
        if err is not None:
            raise err
        _check_plan_group(fn, plan, group)
        inputs, outputs, listed = _check_cast_tensors(fn, plan, input, output)
        row_info = (tuple((str(x.dtype), tuple(x.shape[1:])) for x in inputs), listed, input_lse is not None)
        if (input_lse is None) != (output_lse is None):
            raise GrpCollError(f"{fn}(): give both input_lse and output_lse (cast_lse) or neither.")
        if input_lse is not None:
            check_lse(fn, "input_lse", input_lse, inputs[0])
            check_lse(fn, "output_lse", output_lse, outputs[0])
        for x in inputs:  # each row layout must suit the impl (answers are cached per layout)
            obj = _select(fn, impl, x, group, input_lse is not None, None, kwargs)
    except GrpCollError as e:
        err = e
    _finish(fn, plan if err is None else None, err, group, row_info)
    work = obj.cast(plan, inputs, outputs, group, async_op=async_op, input_lse=input_lse,
                    output_lse=output_lse, **kwargs)
    return _cast_result(work, len(inputs), listed, input_lse is not None)


def _bind_ahead(fn, plan, group, impl, row_bytes) -> bool:
    """``plan.bind_ahead``: the arguments checked, then the implementation's ``bind_ahead``."""
    _check_plan_group(fn, plan, group)
    iterable = hasattr(row_bytes, "__iter__") and not isinstance(row_bytes, (str, bytes))
    sizes = tuple(row_bytes) if iterable else (None,)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise GrpCollError(f"{fn}(): row_bytes must be a sequence of positive ints; got {row_bytes!r}.")
    try:
        obj = get_impl(select_impl_name(impl))
    except ValueError as e:
        raise GrpCollError(f"{fn}(): {e}") from None
    return bool(obj.bind_ahead(plan, group, sizes))


def _run_reduce(plan, input, output, group, *, async_op=False, reduce_op="sum", acc_reduce=True,
                comm_dtype=None, input_lse=None, output_lse=None, fold_at_wait=False, impl=None,
                _fn="GroupReducePlan.reduce", _err=None, **kwargs):
    fn, err, obj = _fn, _err, None
    row_info = None
    try:
        if err is not None:
            raise err
        _check_plan_group(fn, plan, group)
        if reduce_op not in REDUCE_OPS:
            raise GrpCollError(f"{fn}(): reduce_op={reduce_op!r} is unknown; supported: {list(REDUCE_OPS)}.")
        if not isinstance(fold_at_wait, bool):
            raise GrpCollError(f"{fn}(): fold_at_wait must be a bool; got {fold_at_wait!r}.")
        check_tensor(fn, "input", input, dim0=plan.input_len)
        check_tensor(fn, "output", output, dim0=plan.output_len, like=input)
        if not input.dtype.is_floating_point:
            raise GrpCollError(f"{fn}(): input dtype {input.dtype} is not a floating type; group_reduce "
                               f"accumulates in float32 and needs float16/bfloat16/float32/float64 data.")
        if comm_dtype is not None and (not isinstance(comm_dtype, torch.dtype)
                                       or not comm_dtype.is_floating_point):
            raise GrpCollError(f"{fn}(): comm_dtype must be None or a floating torch.dtype; got {comm_dtype!r}.")
        row_info = (str(input.dtype), tuple(input.shape[1:]), reduce_op, str(comm_dtype))
        if reduce_op == "lse":
            if input_lse is None or output_lse is None:
                raise GrpCollError(f"{fn}(): reduce_op='lse' needs input_lse and output_lse (float32 "
                                   f"[seqlen, num_heads]); got None.")
            if input.dim() < 3:
                raise GrpCollError(f"{fn}(): reduce_op='lse' needs data shaped [seqlen, num_heads, head_dim]; "
                                   f"got {list(input.shape)}.")
            check_lse(fn, "input_lse", input_lse, input)
            check_lse(fn, "output_lse", output_lse, output)
        obj = _select(fn, impl, input, group, False, reduce_op, kwargs)
    except GrpCollError as e:
        err = e
    _finish(fn, plan if err is None else None, err, group, row_info)
    return obj.reduce(plan, input, output, group, async_op=async_op, reduce_op=reduce_op,
                      acc_reduce=acc_reduce, comm_dtype=comm_dtype, input_lse=input_lse,
                      output_lse=output_lse, fold_at_wait=fold_at_wait, **kwargs)


@torch.no_grad()
def group_cast(input, output, input_split_sizes, output_split_sizes, dst_indices, src_index, group=None,
               async_op: bool = False, cast_lse: bool = False, input_lse=None, output_lse=None, *,
               impl: str | None = None, **kwargs):
    """Multicast splits of ``input`` to ranks of ``group``: split i goes to every rank in dst_indices[i].

    On the receiver, output split j is the next not-yet-used split that rank ``src_index[j]`` sends
    here (each source's splits arrive in that source's order). The plan for these lists is built
    once and cached.

    Args:
        input: [S_in, ...] any dtype, contiguous. output: [S_out, ...] same dtype and row shape.
            Either may instead be a list of such tensors (the same rows of several tensors, e.g. K and
            V, moved in one call without concatenating them first; row shapes and dtypes may differ
            between the entries); output is then a list of the same length.
        input_split_sizes: n ints summing to S_in. output_split_sizes: m ints summing to S_out.
        dst_indices: n lists of distinct ranks (empty allowed; self allowed), or a [n, W] int tensor
            padded with -1. src_index: m ranks (or a 1-D int tensor; trailing size-0 slots whose rank
            is W are padding).
        group: the process group (None: the default group).
        async_op: return before the communication finishes.
        cast_lse: also move float32 ``input_lse`` [S_in, H] into ``output_lse`` [S_out, H].
        impl: "a2av" | "hier" | "native" (default from env, see module doc). Extra kwargs go to the
            implementation (``intra_group``/``inter_group`` for "hier").
    Returns:
        :class:`~magi_grpcoll.work.GrpCollWork`; ``work.wait_post_process()`` returns ``output`` (or
        ``(output, output_lse)``) filled; for a list input, the list of outputs (or ``(outputs,
        output_lse)``). It must be called exactly once; the current stream waits, the CPU does not
        (gloo blocks).

    Example::

        # rank 0 sends rows [0,2) to ranks 0 and 1; rank 1 receives it as its only split
        work = group_cast(x, out, [2], [2], [[0, 1]], [0], group)
        out = work.wait_post_process()
    """
    fn = "group_cast"
    rank, world = _group_info(fn, group)
    err, plan = None, None
    try:
        ins = _to_list(input_split_sizes)
        outs = _to_list(output_split_sizes)
        if isinstance(src_index, torch.Tensor) or (isinstance(outs, list) and len(outs) != len(src_index)):
            outs, src_index = strip_device_padding(list(outs), src_index, world)
        plan = _plan_for("cast", GroupCastPlan.build, ins, outs, dst_indices, src_index, rank, world, input)
        plan_err = _length_error(fn, plan, input, output)
        if cast_lse and (input_lse is None or output_lse is None):
            plan_err = GrpCollError(f"{fn}(): cast_lse=True needs input_lse and output_lse; got None.")
        err = plan_err
    except GrpCollError as e:
        err = e
    if plan is None:
        _raise_without_plan(fn, err, group)
    return _run_cast(plan, input, output, group, async_op=async_op,
                     input_lse=input_lse if cast_lse else None, output_lse=output_lse if cast_lse else None,
                     impl=impl, _fn=fn, _err=err, **kwargs)


@torch.no_grad()
def group_reduce(input, output, input_split_sizes, output_split_sizes, dst_index, src_indices, group=None,
                 async_op: bool = False, reduce_op: str = "sum", acc_reduce: bool = True, comm_dtype=None,
                 input_lse=None, output_lse=None, *, fold_at_wait: bool = False, impl: str | None = None,
                 **kwargs):
    """Reduce splits of ``input`` onto ranks of ``group`` (the transpose of :func:`group_cast`).

    Input split i goes to the single rank ``dst_index[i]``. Output split k folds in, for each rank r in
    ``src_indices[k]`` (distinct), the next not-yet-used split that r sends here:

    * "sum": out += Σ x;  "avg": out = (out + Σ x) / (1 + n) (the old value is one term; rows with no
      contributor are unchanged);
    * "lse": log-sum-exp weighted merge of (out, output_lse) with each (x, input_lse); data
      [S, H, D], lse float32 [S, H]; all -inf rows end as out = 0, lse = -inf.

    Args:
        acc_reduce: when False the old output does not take part (sum starts from 0, avg divides by n,
            lse starts from (0, -inf)).
        comm_dtype: dtype on the wire (e.g. bf16 partials of fp32 data); default input.dtype.
        fold_at_wait: promise, on every implementation, that ``output`` (and ``output_lse``) is
            neither read nor written before ``wait_post_process()``, so the caller may still be
            writing it while the rows travel (interface 1.3). a2av and hier always fold at the wait;
            native otherwise folds on its comm stream as soon as the rows have landed (sooner, but
            ``output`` must be final when the call is issued), and with it runs the reduce as a2av
            (natively with ``impl.native.FOLD_AT_WAIT``: see the package README).
        Others as in :func:`group_cast`.
    Returns:
        :class:`~magi_grpcoll.work.GrpCollWork`; ``wait_post_process()`` reduces into ``output`` (and
        ``output_lse``) and returns them. The existing output is read at that time (native without
        ``fold_at_wait``: when the rows land, on its comm stream).
    """
    fn = "group_reduce"
    rank, world = _group_info(fn, group)
    err, plan = None, None
    try:
        ins = _to_list(input_split_sizes)
        outs = _to_list(output_split_sizes)
        if isinstance(dst_index, torch.Tensor) or (isinstance(ins, list) and len(ins) != len(dst_index)):
            ins, dst_index = strip_device_padding(list(ins), dst_index, world)
        plan = _plan_for("reduce", GroupReducePlan.build, ins, outs, dst_index, src_indices, rank, world, input)
        err = _length_error(fn, plan, input, output)
    except GrpCollError as e:
        err = e
    if plan is None:
        _raise_without_plan(fn, err, group)
    return _run_reduce(plan, input, output, group, async_op=async_op, reduce_op=reduce_op,
                       acc_reduce=acc_reduce, comm_dtype=comm_dtype, input_lse=input_lse,
                       output_lse=output_lse, fold_at_wait=fold_at_wait, impl=impl, _fn=fn, _err=err,
                       **kwargs)
