"""bench_ffa's report (no GPU): the same-run ratio table and the per-mask PNG charts."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench_ffa  # noqa: E402


def _row(total, mask, impl, fwd, bwd, note=""):
    return {"card": "TestCard", "total": total, "hq": 16, "hk": 16, "d": 128, "mask": mask, "impl": impl,
            "area": 1, "fwd_tflops": fwd, "bwd_tflops": bwd, "note": note}


ROWS = [_row(16384, "causal", "ffa_fa4", 600.0, 450.0), _row(16384, "causal", "flex", 400.0, 300.0),
        _row(16384, "causal", "sdpa_cudnn", 500.0, 500.0), _row(8192, "causal", "ffa_fa4", 300.0, 200.0),
        _row(8192, "causal", "flex", 200.0, ""),  # a backward that did not run
        _row(16384, "swa_1k", "ffa_fa4", 450.0, 450.0), _row(16384, "swa_1k", "sdpa_cudnn", "", "", "n/a")]


def test_ratio_table_pairs_rows_of_the_same_shape_and_skips_refusals():
    lines = bench_ffa.ratio_lines(ROWS)
    assert "| 16384 | 16/16 | causal | ffa_fa4 / flex | 1.50 | 1.50 |" in lines
    assert "| 16384 | 16/16 | causal | ffa_fa4 / sdpa_cudnn | 1.20 | 0.90 |" in lines
    assert "| 8192 | 16/16 | causal | ffa_fa4 / flex | 1.50 | – |" in lines
    assert not any("swa_1k" in ln for ln in lines)  # cuDNN refused the mask: no ratio
    assert not any("flex / " in ln for ln in lines)  # only FFA impls are the numerator
    assert bench_ffa.ratio_lines([r for r in ROWS if r["impl"] == "flex"]) == []


def test_results_and_charts_are_written(tmp_path):
    out = str(tmp_path / "bench")
    bench_ffa.write_results(out, ROWS)
    md = Path(out + ".md").read_text()
    assert "## ratios (same run)" in md and "ffa_fa4 / flex | 1.50" in md
    assert len(Path(out + ".csv").read_text().splitlines()) == len(ROWS) + 1
    pytest.importorskip("matplotlib")
    pngs = bench_ffa.plot_results(out, ROWS)
    assert sorted(Path(p).name for p in pngs) == ["bench_causal.png", "bench_swa_1k.png"]
    for p in pngs:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_mode_reads_a_csv(tmp_path, capsys):
    out = str(tmp_path / "run")
    bench_ffa.write_results(out, ROWS)
    assert bench_ffa.main(["--plot", out + ".csv"]) == 0
    assert "ffa_fa4 / flex" in capsys.readouterr().out


def test_host_overhead_benchmark_runs_on_cpu():
    """The wrapper's host-cost benchmark (no GPU, FA4 a no-op) runs and prints both paths' ratio.
    A subprocess: it installs stand-in FA4 modules into its interpreter."""
    import subprocess

    bench = Path(__file__).parents[1] / "benchmarks" / "host_overhead.py"
    proc = subprocess.run([sys.executable, str(bench), "--masks", "causal,swa_1k", "--calls", "3",
                           "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| causal") or ln.startswith("| swa_1k")]
    assert len(rows) == 2
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert all(float(c) > 0 for c in cells[1:]), ln


def test_causal_same_area_matches_varlen_causal_and_is_compared():
    for total in (8192, 16384):
        n = bench_ffa.mask_seqlen("causal_same_area", total)
        qr, kr, tm, _ = bench_ffa.build_mask("causal_same_area", total, "cpu")
        varlen = bench_ffa.mask_area(*bench_ffa.build_mask("varlen_causal", total, "cpu")[:3])
        area = bench_ffa.mask_area(qr, kr, tm)
        assert qr == kr == [[0, n]] and tm == [1] and n < total
        assert area <= varlen < area + n + 1  # the largest causal sequence not above that area
    assert bench_ffa.mask_seqlen("causal", 8192) == 8192
    rows = [_row(16384, "varlen_causal", "ffa_fa4", 450.0, 400.0),
            _row(16384, "causal_same_area", "ffa_fa4", 500.0, 500.0)]
    assert "| 16384 | 16/16 | varlen_causal / causal_same_area | ffa_fa4 | 0.90 | 0.80 |" in bench_ffa.ratio_lines(rows)


def test_equal_documents_mask_and_its_varlen_peer_switch():
    from magi_ffa.backends.fa4 import native

    qr, kr, tm, mm = bench_ffa.build_mask("varlen_equal_causal", 8192, "cpu")
    assert qr == kr == [[a, a + 2048] for a in range(0, 8192, 2048)] and tm == [1] * 4
    assert bench_ffa.mask_area(qr, kr, tm) == 4 * 2048 * 2049 // 2
    with pytest.raises(ValueError, match="multiple of 2048"):
        bench_ffa.build_mask("varlen_equal_causal", 5000, "cpu")
    assert native.BATCHED_DOCUMENTS
    for _ in range(2):  # each impl is entered once per mask: a variant must enter again
        with bench_ffa.fa4_variant("ffa_fa4_nobatch"):
            assert not native.BATCHED_DOCUMENTS
        with bench_ffa.fa4_variant("ffa_fa4"):
            assert native.BATCHED_DOCUMENTS
    assert native.BATCHED_DOCUMENTS


def test_varlen_paths_tile_shapes_parsed_and_bad_ones_named():
    import varlen_paths

    assert varlen_paths.parse_tiles("128x128, 64X176,") == [(128, 128), (64, 176)]
    assert varlen_paths.parse_tiles("") == []
    for bad in ("128", "128x", "axb", "100x128", "0x128", "128x128x64"):
        with pytest.raises(ValueError, match="--fwd-tiles"):
            varlen_paths.parse_tiles(bad)


def test_varlen_paths_rows_count_the_causal_area():
    import varlen_paths

    r = varlen_paths._row("Card", 8, "docs", [3, 5], heads=2, fwd_ms=1e-6, bwd_ms=2e-6)
    area = 3 * 4 // 2 + 5 * 6 // 2  # 21 cells
    assert r["area"] == area and r["tokens"] == 8 and r["documents"] == 2
    assert r["fwd_tflops"] == 21.5  # 4 * 21 * 128 * 2 FLOPs in 1e-6 ms
    assert r["bwd_ms"] == 0.0 and r["bwd_tflops"] == 26.9  # 2.5x the FLOPs in twice the time
    fwd_only = varlen_paths._row("Card", 8, "docs", [3, 5], heads=2, fwd_ms=1e-6)
    assert fwd_only["bwd_ms"] == "" and fwd_only["bwd_tflops"] == "" and list(fwd_only) == list(r)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity") or not Path("/proc/self/task").is_dir(),
                    reason="Linux thread affinities")
def test_host_threads_pinned_moves_the_caller_and_the_autograd_threads_and_gives_them_back():
    import os
    import threading

    everywhere = os.sched_getaffinity(0)
    cpu = max(everywhere)
    ready, done = threading.Event(), threading.Event()
    tid = {}

    def engine_like():  # renamed as torch's autograd engine names its device thread
        tid["engine"] = threading.get_native_id()
        Path(f"/proc/self/task/{tid['engine']}/comm").write_text("pt_autograd_0")
        ready.set()
        done.wait(30)

    def bystander():
        tid["other"] = threading.get_native_id()
        done.wait(30)

    threads = [threading.Thread(target=f) for f in (engine_like, bystander)]
    for t in threads:
        t.start()
    ready.wait(30)
    try:
        assert tid["engine"] in bench_ffa.autograd_device_threads()
        with bench_ffa.host_threads_pinned(None):
            assert os.sched_getaffinity(0) == everywhere
        with bench_ffa.host_threads_pinned(cpu):
            assert os.sched_getaffinity(0) == {cpu}
            assert os.sched_getaffinity(tid["engine"]) == {cpu}
            assert os.sched_getaffinity(tid["other"]) == everywhere  # not an autograd thread: left alone
        assert os.sched_getaffinity(0) == everywhere
        assert os.sched_getaffinity(tid["engine"]) == everywhere
        with pytest.raises(ValueError, match=r"cpu 100000 is not one this thread may run on"):
            with bench_ffa.host_threads_pinned(100_000):
                pass
        assert os.sched_getaffinity(0) == everywhere
    finally:
        done.set()
        for t in threads:
            t.join()
