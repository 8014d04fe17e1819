"""The implementation interface: capabilities as class attributes plus reasons for refusing a call."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["GrpCollImpl", "cast_pairs", "get_impl", "registered_impls", "register_impl", "backend_of"]

_REGISTRY: dict[str, GrpCollImpl] = {}


def backend_of(group) -> str:
    try:
        return str(dist.get_backend(group)).lower()
    except Exception:  # pragma: no cover - uninitialised
        return "unknown"


class GrpCollImpl:
    """Base class. Subclasses set the capability table and implement ``cast`` / ``reduce``."""

    NAME = "base"
    BACKENDS: frozenset[str] = frozenset({"gloo", "nccl"})
    DEVICES: frozenset[str] = frozenset({"cpu", "cuda"})
    SUPPORTS_LSE_CAST = True
    REDUCE_OPS: frozenset[str] = frozenset({"sum", "avg", "lse"})
    NEEDS_LIST_META = True

    def not_supported_reasons(self, *, input: torch.Tensor, group, cast_lse: bool = False,
                              reduce_op: str | None = None, kwargs: dict | None = None) -> list[str]:
        reasons = []
        be = backend_of(group)
        if be not in self.BACKENDS:
            reasons.append(f"process-group backend {be!r} (supported: {sorted(self.BACKENDS)})")
        if input.device.type not in self.DEVICES:
            reasons.append(f"device {input.device.type!r} (supported: {sorted(self.DEVICES)})")
        if cast_lse and not self.SUPPORTS_LSE_CAST:
            reasons.append("cast_lse=True is not supported")
        if reduce_op is not None and reduce_op not in self.REDUCE_OPS:
            reasons.append(f"reduce_op={reduce_op!r} (supported: {sorted(self.REDUCE_OPS)})")
        return reasons

    def cast(self, plan, inputs, outputs, group, *, async_op, input_lse, output_lse, **kwargs):
        """Move the plan's rows of every tensor in ``inputs`` into the matching ``outputs`` (and the
        lse when given); the work's result is the outputs (lse last): one tensor, or a tuple."""
        raise NotImplementedError

    def reduce(self, plan, input, output, group, *, async_op, reduce_op, acc_reduce, comm_dtype,
               input_lse, output_lse, **kwargs):
        raise NotImplementedError

    def bind_ahead(self, plan, group, row_bytes: tuple[int, ...]) -> bool:
        """Do now the per-plan host work a first call would do (``GroupCastPlan.bind_ahead``);
        whether anything was done. Implementations without per-plan state have none."""
        return False


def cast_pairs(inputs, outputs, input_lse=None, output_lse=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (source, destination) tensors one cast moves: every input and, last, the lse."""
    return list(zip(inputs, outputs)) + ([(input_lse, output_lse)] if input_lse is not None else [])


def register_impl(impl: GrpCollImpl) -> GrpCollImpl:
    _REGISTRY[impl.NAME] = impl
    return impl


def registered_impls() -> dict[str, GrpCollImpl]:
    return dict(_REGISTRY)


def get_impl(name: str) -> GrpCollImpl:
    if name not in _REGISTRY:
        raise ValueError(f"magi_grpcoll: impl={name!r} is unknown; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]
