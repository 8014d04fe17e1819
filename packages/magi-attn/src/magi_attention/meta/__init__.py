"""Runtime keys and the group/mesh resolution they carry."""

from magi_attention.meta.key import DistAttnRuntimeKey, resolve_cp_group

__all__ = ["DistAttnRuntimeKey", "resolve_cp_group"]
