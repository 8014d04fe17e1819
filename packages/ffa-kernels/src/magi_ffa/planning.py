"""What a planner needs to know about how the kernels will run a call, asked on the host.

Why: a context-parallel planner chooses among dispatches that give the ranks the same area but
different fragments. On the fa4 backend a fragment that FA4 runs with its own causal, window or
varlen masking keeps the whole mask's throughput, while one that needs block lists and the mask
function ran at about half of it (BENCHMARKS.md "Dispatch algorithms"). Only the kernel package
knows which is which, so it answers here; the rules live in ``backends/fa4/native.py``.
"""

from __future__ import annotations

__all__ = ["fa4_runs_natively"]


def fa4_runs_natively(q_ranges, k_ranges, attn_type_map, seqlen_q: int, seqlen_k: int) -> bool:
    """Whether the fa4 backend runs these slices (host sequences of (start, end) pairs and type
    codes, any layout numpy reads as [N, 2] / [N]) with FA4's own masking, as one native call.
    Pure host work (numpy), no GPU and no FA4 install needed; an empty mask counts as native."""
    import numpy as np

    from magi_ffa.backends.fa4.block_sparse import row_intervals
    from magi_ffa.backends.fa4.native import recognise_native

    qr = np.asarray(q_ranges, dtype=np.int64).reshape(-1, 2)
    kr = np.asarray(k_ranges, dtype=np.int64).reshape(-1, 2)
    live = (qr[:, 1] > qr[:, 0]) & (kr[:, 1] > kr[:, 0])
    if not live.any():
        return True
    lo, hi = row_intervals(qr, kr, attn_type_map, int(seqlen_q))
    return recognise_native(lo, hi, int(seqlen_q), int(seqlen_k)) is not None
