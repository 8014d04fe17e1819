"""transformers integration: ``attn_implementation="magi_attention"`` for Llama-family models.

``register()`` adds the attention function (and a padding-mask function, so a 2-D padding mask
reaches it) to transformers' ``AttentionInterface`` / ``AttentionMaskInterface``.

Without a cp group, every batch row (or, for ``b == 1`` with ``position_ids`` that restart, every
packed sequence; or the ``cu_seq_lens_q/k`` kwargs when given) becomes causal FFA slices over the
flattened tokens; padding tokens get no keys (output 0). With a cp group set by
:func:`set_cp_group`, the inputs are taken as already dispatched (``dispatch`` of a
``magi_attn_varlen_key``, as in the anchor's transformers example) and attention runs through
``calc_attn`` with ``get_most_recent_key(group)``.

Engine: FFA (``magi_attention.functional.flex_flash_attn_func``) when importable, else the SDPA
sink engine of this package with a dense mask (same slices), so CPU tests work either way.
"""

from __future__ import annotations

import torch

from magi_attn_extensions import _compat
from magi_attn_extensions.errors import ExtensionsInputError
from magi_attn_extensions.sink._fa_common import require
from magi_attn_extensions.sink._function import SinkAttnFunction
from magi_attn_extensions.sink._sdpa_adapter import SDPAAdapter
from magi_attn_extensions.sink.masks import slices_to_dense, slices_to_tensors, varlen_slices

__all__ = ["NAME", "register", "magi_attention_forward", "set_cp_group", "get_cp_group"]

NAME = "magi_attention"
_CP_ATTR = "_magi_attn_cp_group"
_ENGINE = {"name": "auto"}


def register(name: str = NAME, engine: str = "auto") -> None:
    """Make ``attn_implementation=name`` available. ``engine``: "auto" | "ffa" | "sdpa"."""
    if engine not in ("auto", "ffa", "sdpa"):
        raise ExtensionsInputError(f"register(): engine must be 'auto', 'ffa' or 'sdpa', got {engine!r}.")
    require("transformers", "'magi-attn-extensions[transformers]'", "magi_attn_extensions.transformers.register")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    _ENGINE["name"] = engine
    AttentionInterface.register(name, magi_attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)


def set_cp_group(model: torch.nn.Module, group) -> None:
    """Run every attention of ``model`` context-parallel over ``group`` (None switches it off)."""
    for mod in model.modules():
        setattr(mod, _CP_ATTR, group)


def get_cp_group(module: torch.nn.Module):
    return getattr(module, _CP_ATTR, None)


def _sequences(b: int, s: int, attention_mask, position_ids, kwargs) -> list[int]:
    """cu_seqlens over the flattened ``b*s`` tokens; padding tokens form their own key-less runs."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        return [int(x) for x in cu.tolist()]
    if b == 1 and position_ids is not None and attention_mask is None:
        pos = position_ids.reshape(-1)
        starts = [0] + [i for i in range(1, s) if int(pos[i]) != int(pos[i - 1]) + 1]
        return starts + [s]
    cu = [0]
    for row in range(b):
        if attention_mask is None:
            cu.append(cu[-1] + s)
            continue
        valid = attention_mask[row].to(torch.bool)
        idx = torch.nonzero(valid).flatten()
        if idx.numel() == 0:
            cu.append(cu[-1] + s)  # all padding: any mask, outputs are ignored
            continue
        a, e = int(idx[0]), int(idx[-1]) + 1
        if e - a != idx.numel():
            raise NotImplementedError("magi_attention_forward(): padding must be contiguous (left or right).")
        base = row * s
        for bound in (base + a, base + e, base + s):
            if bound != cu[-1]:
                cu.append(bound)
    return cu


def _padding_runs(b, s, attention_mask, cu):
    """Indices (in cu) of runs that are padding: they get no keys."""
    if attention_mask is None:
        return set()
    flat = attention_mask.reshape(-1).to(torch.bool)
    return {i for i in range(len(cu) - 1) if cu[i + 1] > cu[i] and not bool(flat[cu[i]])}


def magi_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           sliding_window=None, softcap=None, **kwargs):
    """transformers attention function: query ``[b, hq, s, d]``, key/value ``[b, hk, s, d]``;
    returns ``([b, s, hq, d], None)``."""
    if dropout:
        raise NotImplementedError("magi_attention_forward(): attention dropout is not supported.")
    b, hq, s, d = query.shape
    scale = d ** -0.5 if scaling is None else float(scaling)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [b, s, h, d]
    sink = getattr(module, "sinks", None)
    sink = None if sink is None else sink.reshape(1, hq)
    group = get_cp_group(module)
    if group is not None:
        return _cp_forward(q, k, v, group, scale, sink, softcap)
    if key.shape[2] != s:
        raise NotImplementedError("magi_attention_forward(): KV caches (decoding) are not supported; use sdpa.")
    cu = _sequences(b, s, attention_mask, kwargs.get("position_ids"), kwargs)
    causal = getattr(module, "is_causal", True)
    window = (sliding_window - 1, 0 if causal else -1) if sliding_window else (-1, -1)
    pad_runs = _padding_runs(b, s, attention_mask, cu)
    slices = [sl for sl in varlen_slices(cu, cu, causal, window)
              if not any(cu[i] <= sl[0] < cu[i + 1] for i in pad_runs)]
    qf, kf, vf = q.reshape(b * s, hq, d), k.reshape(b * s, -1, d), v.reshape(b * s, -1, d)
    engine = _ENGINE["name"]
    if engine in ("auto", "ffa"):
        try:
            ffa = _compat.flex_flash_attn_func()
        except ImportError:
            if engine == "ffa":
                raise
            ffa = None
        if ffa is not None:
            q_r, k_r, t_r = slices_to_tensors(slices, q.device)
            out, _ = ffa(qf, kf, vf, q_r, k_r, t_r, sink=sink, softmax_scale=scale, softcap=softcap or 0.0)
            return out.reshape(b, s, hq, d), None
    if softcap:
        raise NotImplementedError("magi_attention_forward(): softcap needs the FFA engine.")
    mask = slices_to_dense(slices, b * s, b * s, device=q.device)
    out, _ = SinkAttnFunction.apply(SDPAAdapter(mask, scale), qf[None], kf[None], vf[None], sink, "sh")
    return out.reshape(b, s, hq, d), None


def _cp_forward(q, k, v, group, scale, sink, softcap):
    """Dispatched local tokens ``[1, s_local, h, d]`` -> ``calc_attn`` with the group's latest key."""
    if q.shape[0] != 1:
        raise ExtensionsInputError(
            f"magi_attention_forward(): with a cp group the batch must be squashed to 1 (got {q.shape[0]}); "
            "use squash_batch_dim + magi_attn_varlen_key + dispatch before the model."
        )
    api = _compat.magi_attention_api()
    key = api.get_most_recent_key(group)
    out, _meta = api.calc_attn(q[0], k[0], v[0], key, sink=sink, softmax_scale=scale, softcap=softcap or 0.0)
    return out[None], None
