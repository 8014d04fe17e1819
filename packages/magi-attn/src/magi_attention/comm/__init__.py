"""The anchor's module path for its communication primitives (``magi_attention.comm``).

Why only a path: the group collectives are their own package, ``magi_grpcoll``, usable by any
context-parallel system; code written against the anchor's ``magi_attention.comm.primitive.grpcoll``
finds the same functions here.
"""

from magi_attention.comm import primitive

__all__ = ["primitive"]
