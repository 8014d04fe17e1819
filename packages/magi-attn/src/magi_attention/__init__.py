"""magi_attention: context-parallel attention for long, heterogeneously masked sequences.

The interface check of the lower wheels runs first (``_compat``), so a mismatched install fails
at import with one readable ImportError.
"""

import logging as _logging

from magi_attention import (  # noqa: E402
    _compat,  # noqa: F401  (interface check first)
    comm,
    config,
    env,
    functional,
)
from magi_attention._version import INTERFACE_VERSION, __version__
from magi_attention.dist_attn_runtime_mgr import (  # noqa: E402
    init_dist_attn_runtime_key,
    init_dist_attn_runtime_mgr,
)
from magi_attention.env import (  # noqa: E402
    dist_attn_backward_hide_tail_reduce,
    dist_attn_runtime_dict_size,
    dsink_all_reduce_op,
    is_auto_range_merge_enable,
    is_cat_gqa_enable,
    is_cuda_device_max_connections_one,
    is_deterministic_mode_enable,
    is_fa4_backend_enable,
    is_flatten_head_groups_enable,
    is_profile_mode_enable,
    is_sanity_check_enable,
    is_sdpa_backend_enable,
)

_logging.getLogger("magi_attention").addHandler(_logging.NullHandler())

__all__ = [
    "INTERFACE_VERSION", "__version__", "comm", "config", "env", "functional",
    "init_dist_attn_runtime_key", "init_dist_attn_runtime_mgr",
    "is_sanity_check_enable", "is_flatten_head_groups_enable", "is_sdpa_backend_enable",
    "is_fa4_backend_enable", "is_cuda_device_max_connections_one",
    "is_deterministic_mode_enable", "is_profile_mode_enable", "is_auto_range_merge_enable",
    "is_cat_gqa_enable", "dist_attn_backward_hide_tail_reduce", "dist_attn_runtime_dict_size",
    "dsink_all_reduce_op",
]
