"""The environment-variable page cannot drift from the code."""

from __future__ import annotations

import re
import subprocess
import sys

from _blocks import DOCS, ROOT

_LITERAL = re.compile(r"[\"'](MAGI_[A-Z0-9_]*[A-Z0-9]|CUDA_DEVICE_MAX_CONNECTIONS)[\"']")


def test_generated_table_is_current():
    res = subprocess.run([sys.executable, str(DOCS / "scripts" / "gen_env_table.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_table_lists_every_flag_default():
    from magi_attention.env import FLAG_DEFAULTS

    page = (DOCS / "env.md").read_text()
    for name, default in FLAG_DEFAULTS.items():
        assert f"| `{name}` | `{default}` |" in page, name


def test_every_variable_read_by_any_package_is_documented():
    page = (DOCS / "env.md").read_text()
    found = set()
    for path in (ROOT / "packages").glob("*/src/**/*.py"):
        found.update(_LITERAL.findall(path.read_text()))
    assert found, "no environment variable literal found: the scan is broken"
    missing = sorted(v for v in found if f"`{v}`" not in page)
    assert not missing, f"docs/env.md does not mention {missing}"
