"""The runtime caches are emptied by an atexit hook, before interpreter finalization.

Cached keys hold their process group; a gloo group destroyed during finalization could abort the
process after all work finished (seen once in CI as SIGABRT on one rank of bench_dist).
"""

import subprocess
import sys
import textwrap


def test_cached_runtimes_released_before_finalization():
    script = textwrap.dedent("""
        import sys
        from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr

        class Held:
            def __del__(self):
                print("released while finalizing:", sys.is_finalizing(), flush=True)

        dist_attn_runtime_dict_mgr._dicts.setdefault((0,), {})["key"] = Held()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "released while finalizing: False" in proc.stdout, proc.stdout + proc.stderr
