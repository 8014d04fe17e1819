"""The interface gate: version checks of the lower wheels and pins agreeing with pyproject."""

import re
import types
from pathlib import Path

import pytest
import tomllib
from magi_attention import _compat


def test_dist_pins_match_pyproject():
    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = {}
    for dep in data["project"]["dependencies"]:
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$", dep)
        pins[m.group(1)] = m.group(2).replace(" ", "")
    for dist, spec in _compat.DIST_PINS.items():
        assert pins.get(dist) == spec, f"{dist}: pyproject has {pins.get(dist)}, _compat {spec}"


@pytest.mark.parametrize("version,ok", [("1.0", True), ("1.7", True), ("0.9", False),
                                        ("2.0", False)])
def test_check_interface_with_fake_module(version, ok):
    fake = types.ModuleType("magi_grpcoll")
    fake.INTERFACE_VERSION = version
    fake.__version__ = "9.9.9"
    if ok:
        _compat.check_interface("magi_grpcoll", fake)
    else:
        with pytest.raises(ImportError) as ei:
            _compat.check_interface("magi_grpcoll", fake)
        msg = str(ei.value)
        assert "magi_grpcoll" in msg and version in msg and ">=1.0,<2" in msg and "Fix:" in msg


def test_offers_reads_the_interface_version():
    fake = types.ModuleType("magi_ffa")
    assert not _compat.offers(fake, ">=1.0")  # no INTERFACE_VERSION: offers nothing
    fake.INTERFACE_VERSION = "1.2"
    assert _compat.offers(fake, ">=1.2") and not _compat.offers(fake, ">=1.3")


def test_installed_lower_wheels_pass():
    for name, mod in (("magi_ffa", _compat.ffa), ("magi_grpcoll", _compat.grpcoll),
                      ("magi_solver", _compat.solver)):
        _compat.check_interface(name, mod)


def test_only_compat_imports_lower_packages():
    root = Path(_compat.__file__).parent
    pat = re.compile(r"^\s*(import|from)\s+(magi_ffa|magi_grpcoll|magi_solver)\b", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "_compat.py" and pat.search(p.read_text())]
    assert offenders == []


def test_mask_type_enums_agree_with_ffa():
    ffa_mt = _compat.ffa.MaskType
    from magi_attention.common.ranges import mask_type_code

    for name, code in (("FULL", 0), ("CAUSAL", 1), ("INV_CAUSAL", 2), ("BI_CAUSAL", 3)):
        assert int(getattr(ffa_mt, name)) == code
    for s, code in (("full", 0), ("causal", 1), ("inv_causal", 2), ("bi_causal", 3)):
        assert mask_type_code(s) == code
        assert mask_type_code(_compat.solver.AttnMaskType.from_int_type(code)) == code
