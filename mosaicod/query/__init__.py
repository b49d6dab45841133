"""Query engine: the `query` action and the temporal refinement actions.

``run_query(engine, store, body) -> {"items": [...]}``; ``clusterize`` / ``intersect`` return
iterators of ``{"id": n, "ts": {"start_ns": a, "end_ns": b}}``.  Bad input raises
``MosaicoError`` (bad_request / not_found) naming the offending part of the request.
"""

from .engine import QueryStats, run_query, run_query_with_stats
from .temporal import clusterize, intersect

__all__ = ["run_query", "run_query_with_stats", "QueryStats", "clusterize", "intersect"]
