"""Where a rank's device time goes, from a timeline CSV of ``profile_dist.py --trace``.

    python packages/magi-attn/benchmarks/timeline_summary.py results/timelines_2026-11-27/*.csv

Why: the question after every runtime change is whether communication ran *under* the attention
kernels or beside them. Per file this prints the busy time of each kind of kernel, and for the
communication kernels how much of their time had no compute kernel running at the same moment
(exposed) and how much ran beside one (overlapped). The compute stream is the one that runs the
attention kernels; every other stream counts as communication. Where the CSV has each kernel's host
launch time (``launch_us``), the compute stream's idle time is split by cause: a gap whose next kernel
was launched by the host only after the previous kernel ended waited for the host (host-bound), the
rest waited for another stream (an event: communication).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict

__all__ = ["kind_of", "read_timeline", "report_lines", "summarize"]

_KINDS = (  # (substring of the kernel name, kind), first match wins
    ("flash_fwd", "attention fwd"), ("bwd_preprocess", "attention bwd pre"),
    ("bwd_postprocess", "attention bwd post"), ("flash_bwd", "attention bwd"), ("ffa_", "attention"),
    ("copy_chunks", "copy kernel"), ("Memcpy", "copy engine"), ("barrier", "barrier"),
    ("reduce_sum", "reduce fold"), ("_reduce_", "reduce fold"), ("merge", "merge"), ("nccl", "nccl"),
    ("gemm", "matmul"), ("nvjet", "matmul"), ("Gelu", "gelu"), ("gelu", "gelu"),  # --ffn-mult blocks
    ("elementwise", "elementwise"),  # torch's adds, fills and copies (e.g. the fa4 parts' dK/dV sums)
)


def kind_of(name: str) -> str:
    """The kind of a kernel by its name ("other" when none matches)."""
    for part, kind in _KINDS:
        if part in name:
            return kind
    return "other"


def read_timeline(path: str) -> list[tuple[str, float, float, str, float | None]]:
    """Rows (stream, start us, end us, name, host launch us or None) of one timeline CSV, by start."""
    with open(path, newline="") as f:
        rows = [(r["stream"], float(r["start_us"]), float(r["start_us"]) + float(r["dur_us"]), r["name"],
                 float(r["launch_us"]) if r.get("launch_us") else None)
                for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: r[1])


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _overlap(a: tuple[float, float], spans: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(a[1], b) - max(a[0], s)) for s, b in spans)


def _host_waits(rows, compute: str) -> float:
    """Compute-stream idle time spent waiting for the host: per gap between consecutive kernels, the
    part before the next kernel's launch call (unknown launch times count as no host wait)."""
    mine = [r for r in rows if r[0] == compute]
    waited = 0.0
    for prev, nxt in zip(mine, mine[1:]):
        gap = nxt[1] - prev[2]
        if gap > 0 and nxt[4] is not None:
            waited += min(gap, max(0.0, nxt[4] - prev[2]))
    return waited


def summarize(rows: list[tuple]) -> dict:
    """{"span_us", "compute_stream", "busy_us": {kind: us}, "compute_idle_us", "compute_host_wait_us",
    "comm_us", "comm_exposed_us"} of one timeline (rows as read_timeline's; the launch time may be
    left out); see the module docstring."""
    rows = [tuple(r) + (None,) * (5 - len(r)) for r in rows]
    if not rows:
        return {"span_us": 0.0, "compute_stream": None, "busy_us": {}, "compute_idle_us": 0.0,
                "compute_host_wait_us": 0.0, "comm_us": 0.0, "comm_exposed_us": 0.0}
    attention = defaultdict(float)
    for stream, a, b, name, _ in rows:
        if kind_of(name).startswith("attention"):
            attention[stream] += b - a
    compute = max(attention, key=attention.get) if attention else rows[0][0]
    busy = defaultdict(float)
    for _, a, b, name, _ in rows:
        busy[kind_of(name)] += b - a
    span = (min(r[1] for r in rows), max(r[2] for r in rows))
    compute_spans = _union([(a, b) for s, a, b, *_ in rows if s == compute])
    comm = [(a, b) for s, a, b, *_ in rows if s != compute]
    comm_spans = _union(comm)
    comm_us = sum(b - a for a, b in comm_spans)
    exposed = comm_us - sum(_overlap(c, compute_spans) for c in comm_spans)
    idle = (span[1] - span[0]) - sum(b - a for a, b in compute_spans)
    return {"span_us": span[1] - span[0], "compute_stream": compute, "busy_us": dict(busy),
            "compute_idle_us": idle, "compute_host_wait_us": _host_waits(rows, compute), "comm_us": comm_us,
            "comm_exposed_us": exposed}


def report_lines(s: dict, label: str, per: int = 1, unit: str = "") -> list[str]:
    """A summary as text: one line of totals, then each kernel kind's busy time, busiest first, divided
    by ``per`` (e.g. the traced layers) and named ``unit`` ("layer": "us per layer")."""
    each = f" per {unit}" if unit else ""
    lines = [f"{label}: {s['span_us']:.0f} us on the device, compute stream {s['compute_stream']} idle "
             f"{s['compute_idle_us']:.0f} us ({s['compute_host_wait_us']:.0f} us waiting for the host); "
             f"communication {s['comm_us']:.0f} us, of which {s['comm_exposed_us']:.0f} us with no compute "
             f"kernel beside it; busy time by kernel kind{each}:"]
    lines += [f"    {kind:<20} {us / per:>10.1f} us" for kind, us in sorted(s["busy_us"].items(), key=lambda kv: -kv[1])]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+", help="timeline CSVs written by profile_dist.py --trace")
    args = ap.parse_args(argv)
    for path in args.csv:
        print("\n".join(report_lines(summarize(read_timeline(path)), path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
