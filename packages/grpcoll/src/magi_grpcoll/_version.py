"""Release and interface versions of magi_grpcoll.

INTERFACE_VERSION is "major.minor": the minor part grows when the public API gains something,
the major part when it changes incompatibly. Packages that depend on this one pin it.
"""

__version__ = "0.1.11"
INTERFACE_VERSION = "1.7"  # 1.3: group_reduce(fold_at_wait=...); 1.4: LaunchGraphs, native call state;
# 1.5: native calls take record_streams=False (their tensors held until the wait);
# 1.6: plans take group_lists (every rank's lists: native binds without exchanging meta);
# 1.7: plans' bind_ahead (a plan's first-call host work done ahead)
