"""The dependency arrows point only up: the three lower wheels never import each other or the upper two."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOWER = {"ffa-kernels": "magi_ffa", "grpcoll": "magi_grpcoll", "solver": "magi_solver"}
ALL_MODULES = {"magi_ffa", "magi_grpcoll", "magi_solver", "magi_attention", "magi_attn_extensions"}


def _imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", sorted(LOWER))
def test_lower_package_imports_no_sibling(folder: str) -> None:
    own = LOWER[folder]
    forbidden = ALL_MODULES - {own}
    sources = sorted((ROOT / "packages" / folder / "src").rglob("*.py"))
    assert sources, f"no sources found under packages/{folder}/src"
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imported_top_modules(p) & forbidden)
        for p in sources
        if _imported_top_modules(p) & forbidden
    }
    assert not offenders, f"{own} must not import {sorted(forbidden)}; found {offenders}"


def _files_importing(src: Path, modules: set[str], *, exempt: frozenset[str] = frozenset()) -> list[str]:
    return sorted(
        str(p.relative_to(ROOT))
        for p in src.rglob("*.py")
        if p.name not in exempt and _imported_top_modules(p) & modules
    )


def test_only_compat_imports_lower_packages_in_magi_attention() -> None:
    lower = set(LOWER.values())
    src = ROOT / "packages" / "magi-attn" / "src" / "magi_attention"
    offenders = _files_importing(src, lower, exempt=frozenset({"_compat.py"}))
    assert not offenders, f"only magi_attention/_compat.py may import {sorted(lower)}; also: {offenders}"


def test_extensions_do_not_import_lower_packages_directly() -> None:
    src = ROOT / "packages" / "extensions" / "src" / "magi_attn_extensions"
    offenders = _files_importing(src, set(LOWER.values()))
    assert not offenders, f"magi_attn_extensions reaches the kernels through magi_attention only: {offenders}"
