"""timeline_summary.py (benchmarks): kernel kinds, and comm time split into exposed and overlapped,
on a hand-made timeline whose answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[1] / "benchmarks" / "timeline_summary.py"


@pytest.fixture(scope="module")
def ts():
    spec = importlib.util.spec_from_file_location("timeline_summary", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kinds(ts):
    assert ts.kind_of("kernel_cutlass_kernel_flash_attncuteflash_bwd_preprocessFlashAttention") == "attention bwd pre"
    assert ts.kind_of("kernel_cutlass_kernel_flash_attncuteflash_bwd_sm90FlashAttentionBackward") == "attention bwd"
    assert ts.kind_of("ffa_bwd_dq_kernel") == "attention"
    assert ts.kind_of("Memcpy DtoD (Device -> Device)") == "copy engine"
    assert ts.kind_of("_copy_chunks_kernel") == "copy kernel"
    assert ts.kind_of("void at::native::vectorized_elementwise_kernel<8>") == "elementwise"
    assert ts.kind_of("something_else") == "other"
    assert ts.kind_of("nvjet_sm90_tst_256x128_64x4_2x1_v_bz_coopA_NNT") == "matmul"
    assert ts.kind_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert ts.kind_of("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>") == "gelu"
    assert ts.kind_of("gelu_backward_kernel") == "gelu"


def test_exposed_and_overlapped_comm(ts, tmp_path):
    # compute stream 7: attention [0, 100) and [150, 250); comm stream 9: a copy [50, 170) and a
    # barrier [240, 300). Overlapped: 50 + 20 + 10 us; exposed: 50 + 50 us. Compute idle: 50 + 50 us.
    p = tmp_path / "t.csv"
    p.write_text("stream,start_us,dur_us,name\n"
                 "7,0.0,100.0,kernel_flash_fwd_a\n"
                 "9,50.0,120.0,_copy_chunks_kernel\n"
                 "7,150.0,100.0,kernel_flash_fwd_b\n"
                 "9,240.0,60.0,barrier_kernel\n")
    s = ts.summarize(ts.read_timeline(str(p)))
    assert s["compute_stream"] == "7"
    assert s["span_us"] == pytest.approx(300.0)
    assert s["comm_us"] == pytest.approx(180.0)
    assert s["comm_exposed_us"] == pytest.approx(100.0)
    assert s["compute_idle_us"] == pytest.approx(100.0)
    assert s["busy_us"] == pytest.approx({"attention fwd": 200.0, "copy kernel": 120.0, "barrier": 60.0})
    assert ts.summarize([])["comm_us"] == 0.0
    # as text, per unit of work (e.g. layers): the kinds busiest first, each divided
    lines = ts.report_lines(s, "rank 0", per=2, unit="layer")
    assert lines[0].startswith("rank 0: 300 us on the device, compute stream 7 idle 100 us")
    assert "of which 100 us with no compute kernel beside it; busy time by kernel kind per layer:" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == ["attention", "copy", "barrier"]
    assert lines[1].endswith("100.0 us") and lines[2].endswith("60.0 us") and lines[3].endswith("30.0 us")


def test_compute_idle_split_by_host_launch(ts, tmp_path):
    # compute stream 7: [0, 100), then a kernel launched by the host at 130 that starts at 140 (30 us
    # of the 40 us gap waited for the host, 10 us is launch latency), then one launched at 150 (long
    # before) that starts at 300 after an event: no host wait. Without launch times nothing is host.
    p = tmp_path / "t.csv"
    p.write_text("stream,start_us,dur_us,name,launch_us\n"
                 "7,0.0,100.0,kernel_flash_fwd_a,-20.0\n"
                 "7,140.0,60.0,kernel_flash_fwd_b,130.0\n"
                 "9,150.0,100.0,_copy_chunks_kernel,149.0\n"
                 "7,300.0,50.0,_merge_kernel,150.0\n")
    s = ts.summarize(ts.read_timeline(str(p)))
    assert s["compute_idle_us"] == pytest.approx(140.0)
    assert s["compute_host_wait_us"] == pytest.approx(30.0)
    no_launch = [r[:4] for r in ts.read_timeline(str(p))]
    assert ts.summarize(no_launch)["compute_host_wait_us"] == 0.0
