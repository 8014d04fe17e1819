"""magi_attention.testing.syncs on CPU: a sync warning is counted by the innermost frame of our
packages (the GPU tests pin a new mask's step down with it; torch's sync debug mode itself needs
CUDA, so it is stubbed here and the warning torch would give is raised by hand)."""

import warnings

import torch
from magi_attention.testing.syncs import HostSyncs, call_site


def _function_in(path: str):
    """A function whose frame reports ``path``: as if it were code of that module."""
    ns = {"warnings": warnings}
    exec(compile("def sync():\n    warnings.warn('called a synchronizing CUDA operation')\n", path, "exec"), ns)
    return ns["sync"]


def test_syncs_are_counted_by_phase_and_innermost_site_of_our_packages(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    ours = _function_in("/site/magi_ffa/backends/fake.py")
    theirs = _function_in("/site/torch/fake.py")
    with HostSyncs() as syncs:
        syncs.phase = "forward"
        ours()
        ours()
        syncs.phase = "backward"
        theirs()
        with syncs.paused():
            pass
    assert syncs.counts == {("forward", "magi_ffa/backends/fake.py:2 sync"): 2,
                            ("backward", "(outside our packages)"): 1}
    assert syncs.sites() == {"magi_ffa/backends/fake.py:2 sync": 2, "(outside our packages)": 1}


def test_call_site_takes_the_innermost_frame_of_our_packages():
    import traceback

    stack = [traceback.FrameSummary("/a/magi_attention/runtime/x.py", 3, "outer"),
             traceback.FrameSummary("/a/magi_grpcoll/impl/native.py", 9, "exchange"),
             traceback.FrameSummary("/a/torch/cuda/__init__.py", 1, "synchronize")]
    assert call_site(stack) == "magi_grpcoll/impl/native.py:9 exchange"
