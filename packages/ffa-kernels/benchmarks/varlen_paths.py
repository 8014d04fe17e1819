"""Where FA4's varlen causal loses against causal of the same area (issue #7), kernel by kernel.

Calls Flash-Attention 4 directly (no FFA wrapper), bf16, d 128, on one GPU, and times forward and
backward (calls queued back to back between CUDA events, so that host time hides behind the kernels)
of:

- ``batch_same_area``: one causal sequence as FA4's batch layout [1, n], n chosen so that its area
  equals the long-tailed documents' (bench_ffa's ``causal_same_area``): the peer;
- ``varlen_one_doc``: the same sequence through FA4's varlen path (cu_seqlens, one document):
  the varlen kernels' own cost, with no document effects;
- ``varlen_docs``: bench_ffa's long-tailed documents (its ``varlen_causal``), and the same lengths
  sorted longest first (``varlen_docs_sorted``: does the order FA4 schedules them in matter?);
- ``varlen_equal`` vs ``batch_equal``: documents of one length (2048) through the varlen path and
  as FA4's batch layout [B, 2048] (what the fa4 backend runs them as, native.BATCHED_DOCUMENTS).

    python benchmarks/varlen_paths.py --totals 32768,16384 --out results/h200_varlen_paths

writes <out>.csv and <out>.md (card, date, commit, command, the rows and their ratios).

``--fwd-tiles 128x128,64x128,...`` adds, per total, the forwards of ``varlen_docs`` and
``batch_same_area`` at each FA4 tile shape given (``tile_mn`` of FA4's entry point; its SM90 kernel
takes its warp groups from tile_m): does a shape with cheaper q tiles (each one CTA with a fixed
prologue and epilogue, PERF_NOTES.md) bring the documents closer to causal of the same area? A shape
FA4 refuses is reported and skipped.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import random
import statistics
import sys

import torch
from bench_ffa import EQUAL_DOCUMENT, _commit, _doc_lengths

D = 128


def _time_ms(fn, calls: int = 20, samples: int = 7, warm: int = 5) -> float:
    """Median over `samples` blocks of `calls` calls of the mean time per call, every block queued
    behind the one before (CUDA events between blocks, one sync at the end): the GPU queue stays
    full, so FA4's per-call host work (0.1-0.2 ms for its entry points) hides behind the kernels, and
    the ratios compare kernels. (The results of 947cd20 synced after each block: the first call of a
    block then showed its host time, a bias below 1% at 20 calls.)"""
    for _ in range(warm):
        fn()
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(samples + 1)]
    marks[0].record()
    for mark in marks[1:]:
        for _ in range(calls):
            fn()
        mark.record()
    marks[-1].synchronize()
    return statistics.median(a.elapsed_time(b) / calls for a, b in zip(marks, marks[1:]))


def _area(lens) -> int:
    return sum(n * (n + 1) // 2 for n in lens)


def _same_area_length(area: int) -> int:
    return (math.isqrt(8 * area + 1) - 1) // 2


def _fwd_bwd(call, tensors) -> tuple[float, float]:
    """(forward ms, backward ms) of call(*tensors) -> out."""
    fwd_ms = _time_ms(lambda: call(*tensors))
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = call(*leaves)
    dout = torch.randn_like(out)
    bwd_ms = _time_ms(lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True))
    return fwd_ms, bwd_ms


def run_varlen(lens, heads):
    """FA4's varlen path over documents of `lens`, back to back."""
    from flash_attn.cute.interface import flash_attn_varlen_func

    total = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    kw = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lens), max_seqlen_k=max(lens), causal=True)
    qkv = [torch.randn(total, heads, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    return _fwd_bwd(lambda q, k, v: flash_attn_varlen_func(q, k, v, **kw)[0], qkv)


def run_batch(batch, seqlen, heads):
    """FA4's batch path: `batch` causal sequences of `seqlen`."""
    from flash_attn.cute.interface import flash_attn_func

    qkv = [torch.randn(batch, seqlen, heads, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    return _fwd_bwd(lambda q, k, v: flash_attn_func(q, k, v, causal=True)[0], qkv)


def cases(total: int):
    """(name, kind, lens): kind "varlen" runs the documents `lens`, "batch" len(lens) equal sequences."""
    lens = _doc_lengths(total, random.Random(0))  # bench_ffa's varlen_causal documents
    n_same = _same_area_length(_area(lens))
    equal = [EQUAL_DOCUMENT] * (total // EQUAL_DOCUMENT)
    yield "batch_same_area", "batch", [n_same]
    yield "varlen_one_doc", "varlen", [n_same]
    yield "varlen_docs", "varlen", lens
    yield "varlen_docs_sorted", "varlen", sorted(lens, reverse=True)
    yield "varlen_equal", "varlen", equal
    yield "batch_equal", "batch", equal
    yield "batch_same_area_as_equal", "batch", [_same_area_length(_area(equal))]


def _row(card: str, total: int, case: str, lens, heads: int, fwd_ms: float, bwd_ms: float | None = None) -> dict:
    """One result row: TFLOP/s from the documents' causal area (backward 2.5x the forward's FLOPs);
    no backward columns when only the forward ran."""
    flops = 4 * _area(lens) * D * heads
    bwd = ({"bwd_ms": "", "bwd_tflops": ""} if bwd_ms is None else
           {"bwd_ms": round(bwd_ms, 4), "bwd_tflops": round(2.5 * flops / bwd_ms / 1e9, 1)})
    return {"card": card, "total": total, "case": case, "documents": len(lens), "tokens": sum(lens),
            "area": _area(lens), "fwd_ms": round(fwd_ms, 4), "fwd_tflops": round(flops / fwd_ms / 1e9, 1), **bwd}


def parse_tiles(text: str) -> list[tuple[int, int]]:
    """"128x128,64x128" -> [(128, 128), (64, 128)]: FA4 tile shapes (tile_m, tile_n), multiples of 16."""
    tiles = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"--fwd-tiles: {item!r} is not MxN (e.g. 128x128)")
        m, n = int(parts[0]), int(parts[1])
        if m <= 0 or n <= 0 or m % 16 or n % 16:
            raise ValueError(f"--fwd-tiles: {item!r} needs positive multiples of 16")
        tiles.append((m, n))
    return tiles


def fwd_at_tile(lens, heads: int, tile: tuple[int, int], batch: bool) -> float:
    """Forward ms of FA4 at tile shape ``tile``: the documents ``lens`` through the varlen path, or
    (``batch``) one causal sequence of ``lens[0]`` through the batch path."""
    from flash_attn.cute.interface import _flash_attn_fwd

    if batch:
        q, k, v = (torch.randn(1, lens[0], heads, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        return _time_ms(lambda: _flash_attn_fwd(q, k, v, causal=True, tile_mn=tile))
    total = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(total, heads, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    return _time_ms(lambda: _flash_attn_fwd(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lens),
                                            max_seqlen_k=max(lens), causal=True, tile_mn=tile))


def tile_rows(total: int, heads: int, tiles, card: str) -> list[dict]:
    """``--fwd-tiles``' rows for one total: per tile shape, the documents and causal of the same area."""
    lens = _doc_lengths(total, random.Random(0))
    same = [_same_area_length(_area(lens))]
    rows = []
    for tile in tiles:
        for name, docs, batch in (("varlen_docs", lens, False), ("batch_same_area", same, True)):
            case = f"{name}@{tile[0]}x{tile[1]}"
            try:
                ms = fwd_at_tile(docs, heads, tile, batch)
            except Exception as e:  # noqa: BLE001 - a shape FA4 refuses: reported, the sweep goes on
                print(f"[{total}] {case:26s} refused: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
                continue
            rows.append(_row(card, total, case, docs, heads, ms))
            print(f"[{total}] {case:26s} fwd {rows[-1]['fwd_tflops']:6.1f} TF/s", flush=True)
    return rows


RATIOS = (("varlen_one_doc", "batch_same_area", "one document: varlen path / batch path"),
          ("varlen_docs", "batch_same_area", "long-tailed documents / causal of the same area"),
          ("varlen_docs_sorted", "varlen_docs", "documents longest first / in their order"),
          ("batch_equal", "varlen_equal", "documents of one length: batch path / varlen path"),
          ("batch_equal", "batch_same_area_as_equal", "documents of one length (batch) / causal of the same area"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--totals", default="32768,16384")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--out", default="varlen_paths")
    ap.add_argument("--fwd-tiles", default="", help="FA4 tile shapes MxN, comma-separated: the forwards of "
                    "varlen_docs and batch_same_area at each (see the module docstring)")
    args = ap.parse_args(argv)
    tiles = parse_tiles(args.fwd_tiles)
    card = torch.cuda.get_device_name()
    rows = []
    for total in (int(t) for t in args.totals.split(",")):
        rows += tile_rows(total, args.heads, tiles, card)
        for name, kind, lens in cases(total):
            fwd_ms, bwd_ms = run_varlen(lens, args.heads) if kind == "varlen" else run_batch(len(lens), lens[0], args.heads)
            rows.append(_row(card, total, name, lens, args.heads, fwd_ms, bwd_ms))
            r = rows[-1]
            print(f"[{total}] {name:26s} docs {len(lens):3d} fwd {r['fwd_tflops']:6.1f} TF/s bwd {r['bwd_tflops']:6.1f} TF/s",
                  flush=True)
    with open(f"{args.out}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by = {(r["total"], r["case"]): r for r in rows}
    lines = [f"# FA4 varlen vs batch paths — {card}, {datetime.date.today()}, commit {_commit()}", "",
             f"Command: `python {' '.join(sys.argv)}`; bf16, d {D}, {args.heads} heads, FA4 called directly.", "",
             "| total | case | documents | tokens | fwd TFLOP/s | bwd TFLOP/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['total']} | {r['case']} | {r['documents']} | {r['tokens']} | {r['fwd_tflops']} | {r['bwd_tflops']} |"
              for r in rows]
    lines += ["", "| total | ratio | fwd | bwd |", "|---|---|---|---|"]
    for total in dict.fromkeys(r["total"] for r in rows):
        for a, b, what in RATIOS:
            x, y = by[(total, a)], by[(total, b)]
            lines.append(f"| {total} | {what} | {x['fwd_tflops'] / y['fwd_tflops']:.2f} | "
                         f"{x['bwd_tflops'] / y['bwd_tflops']:.2f} |")
        for m, n in tiles:  # the documents against causal of the same area, at each tile shape
            x, y = by.get((total, f"varlen_docs@{m}x{n}")), by.get((total, f"batch_same_area@{m}x{n}"))
            if x and y:
                lines.append(f"| {total} | tile {m}x{n}: long-tailed documents / causal of the same area | "
                             f"{x['fwd_tflops'] / y['fwd_tflops']:.2f} | - |")
    with open(f"{args.out}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[lines.index("| total | ratio | fwd | bwd |") - 1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
