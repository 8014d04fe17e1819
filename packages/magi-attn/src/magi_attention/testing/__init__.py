"""Test helpers shipped with magi_attention (usable by extensions): the multi-process harness."""

from magi_attention.testing.dist import free_port, run_distributed

__all__ = ["run_distributed", "free_port"]
