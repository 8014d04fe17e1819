import pathlib
import re
import sys
import types

import pytest
from magi_attn_extensions import _compat

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_pin_matches_compat():
    text = PYPROJECT.read_text()
    m = re.search(r'"magi-attention([^"]*)"', text)
    assert m, "magi-attention dependency missing from pyproject.toml"
    assert m.group(1).replace(" ", "") == _compat.REQUIRED_DISTRIBUTION.replace(" ", "")


def test_installed_magi_attention_satisfies_interface():
    mod = _compat.check_magi_attention()
    assert _compat.version_matches(mod.INTERFACE_VERSION, _compat.REQUIRED)


@pytest.mark.parametrize("version, ok", [("1.0", True), ("1.7", True), ("0.9", False), ("2.0", False)])
def test_version_matches(version, ok):
    assert _compat.version_matches(version, ">=1.0,<2") is ok


def test_wrong_interface_raises_import_error_naming_versions(monkeypatch):
    fake = types.ModuleType("magi_attention")
    fake.INTERFACE_VERSION = "2.3"
    fake.__version__ = "9.9.9"
    monkeypatch.setitem(sys.modules, "magi_attention", fake)
    monkeypatch.setattr(_compat, "_checked", None)
    with pytest.raises(ImportError, match=r"needs magi_attention interface >=1.0,<2 but found 2.3.*9.9.9"):
        _compat.check_magi_attention()
