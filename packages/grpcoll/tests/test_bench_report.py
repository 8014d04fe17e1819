"""bench_grpcoll's table (no GPU): bandwidths and same-run ratios, and the copy-path switch."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench_grpcoll  # noqa: E402


def test_table_reports_bandwidth_and_same_run_ratios():
    # tokens, bytes, a2av cast/reduce, native cast/reduce, raw, eager cast/reduce, engines, kernel (seconds)
    row = (16384, 2e9, 4e-3, 5e-3, 2e-3, 4e-3, 2.5e-3, 3e-3, 2e-3, 2e-3, 3e-3)
    header, rule, line = bench_grpcoll._table([row])
    assert header.count("|") == rule.count("|") == line.count("|")
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:7] == ["16384", "2000.0", "500", "400", "1000", "500", "800"]  # GB/s
    # native/a2av cast, reduce; native/raw cast, reduce; eager/graphs cast, reduce; engines/kernel cast
    assert cells[7:] == ["2.00", "1.25", "1.25", "0.62", "0.67", "2.00", "1.50"]


def test_copy_path_switch_restores_the_setting():
    from magi_grpcoll.impl import native

    before = native.COPY_ENGINE_CASTS
    with bench_grpcoll.copy_engines(not before):
        assert native.COPY_ENGINE_CASTS is (not before)
    assert native.COPY_ENGINE_CASTS is before
