"""The hand-written _core.pyi matches the compiled module (mypy.stubtest, pydantic-core's pattern)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from magi_solver import _core


def _allowlist() -> list[str]:
    """What a .pyi cannot express for pybind11: the pybind11_type metaclass of bound classes.

    Only the class objects themselves are listed, so their members are still checked.
    """
    return [
        f"magi_solver._core.{name}"
        for name, obj in vars(_core).items()
        if isinstance(obj, type) and type(obj).__name__ == "pybind11_type"
    ]


@pytest.mark.timeout(300)
def test_stubtest_passes(tmp_path) -> None:
    pytest.importorskip("mypy.stubtest")
    allow = tmp_path / "stubtest_allowlist.txt"
    allow.write_text("\n".join(_allowlist()) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "magi_solver._core", "--allowlist", str(allow)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"stubtest found differences:\n{proc.stdout}\n{proc.stderr}"


def test_stub_lists_every_public_name() -> None:
    """Every public name of the compiled module is re-exported by the package."""
    import magi_solver

    public = {n for n in vars(_core) if not n.startswith("_")}
    missing = public - set(magi_solver.__all__)
    assert not missing, f"magi_solver.__all__ lacks {sorted(missing)}"


# stubtest cannot see pybind11 signatures (no __text_signature__), so compare parameter names
# against the signature lines pybind11 writes into every docstring.

_SIG_LINE = re.compile(r"^(?:\d+\. )?(?P<name>\w+)\((?P<params>.*)\) -> ")


def _split_params(params: str) -> list[str]:
    names, depth, cur = [], 0, ""
    for ch in params + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            token = cur.strip()
            if token and not token.startswith("*"):
                names.append(re.split(r"[:=]", token)[0].strip())
            cur = ""
        else:
            cur += ch
    return [n for n in names if n != "self"]


def _runtime_signatures(func: object, name: str) -> set[tuple[str, ...]]:
    sigs = set()
    for line in (getattr(func, "__doc__", None) or "").splitlines():
        m = _SIG_LINE.match(line.strip())
        if m and m.group("name") == name:
            sigs.add(tuple(_split_params(m.group("params"))))
    return sigs


def _stub_functions() -> dict[str, set[tuple[str, ...]]]:
    """'Class.method' / 'function' -> the parameter-name tuples of its stub overloads."""
    tree = ast.parse(STUB.read_text())
    out: dict[str, set[tuple[str, ...]]] = {}

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{node.name}.")
            elif isinstance(node, ast.FunctionDef):
                if any(
                    isinstance(d, ast.Attribute) or getattr(d, "id", "") == "property"
                    for d in node.decorator_list
                ):
                    continue  # properties and setters
                names = tuple(
                    a.arg
                    for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                    if a.arg != "self"
                )
                out.setdefault(prefix + node.name, set()).add(names)

    visit(tree.body, "")
    return out


STUB = Path(__file__).resolve().parents[1] / "src" / "magi_solver" / "_core.pyi"


def test_stub_parameter_names_match_bindings() -> None:
    mismatches = []
    checked = 0
    for qualname, stub_sigs in _stub_functions().items():
        parts = qualname.split(".")
        if parts[-1].startswith("__"):
            continue  # dunders: pybind names their operands arg0
        obj: object = _core
        for p in parts:
            obj = getattr(obj, p, None)
        runtime = _runtime_signatures(obj, parts[-1])
        if not runtime:
            continue  # not a pybind11 function (e.g. enum machinery)
        checked += 1
        if runtime != stub_sigs:
            mismatches.append(f"{qualname}: stub {sorted(stub_sigs)} != runtime {sorted(runtime)}")
    assert checked > 40
    assert not mismatches, "\n".join(mismatches)
