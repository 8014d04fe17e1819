"""Write the MAGI_ATTENTION_* table of docs/env.md from magi_attention.env (run after changing a flag).

Why generated: the table is read from the getters' docstrings and FLAG_DEFAULTS, so it cannot drift
from the code; tests/docs/test_env_table.py fails when the committed page differs from this output.

Usage: python docs/scripts/gen_env_table.py [--check]
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "env.md"
START, END = "<!-- env-table:start -->", "<!-- env-table:end -->"
_NAME = re.compile(r"^(MAGI_ATTENTION_[A-Z0-9_]+|CUDA_DEVICE_MAX_CONNECTIONS)\b[:\s]*(.*)$")
_DEFAULT = re.compile(r"\(default ([^)]*)\)")
# Meaning of the variables whose getter docstring states only the name and default.
_MEANING = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "CUDA hardware queues; 1 means remote stages are prefetched one "
                                   "by one (`is_cuda_device_max_connections_one()`)",
    "MAGI_ATTENTION_FFA_FORWARD_SM_MARGIN": "SMs left to communication in the FFA forward (the "
                                            "anchor's knob; accepted, no effect on the Triton kernels)",
    "MAGI_ATTENTION_FFA_BACKWARD_SM_MARGIN": "SMs left to communication in the FFA backward (the "
                                             "anchor's knob; accepted, no effect on the Triton kernels)",
}


def rows() -> list[tuple[str, str, str, str]]:
    """(variable, default, getter, meaning) for every flag magi_attention.env reads."""
    from magi_attention import env

    out = {}
    for name, fn in inspect.getmembers(env, inspect.isfunction):
        if fn.__module__ != env.__name__ or name.startswith("_") or not fn.__doc__:
            continue
        m = _NAME.match(inspect.getdoc(fn).splitlines()[0])
        if not m or m.group(1) in out:
            continue
        var, text = m.group(1), m.group(2).strip()
        default = env.FLAG_DEFAULTS.get(var)
        dm = _DEFAULT.search(text)
        if default is None and dm:
            default = dm.group(1)
        text = _DEFAULT.sub("", text).strip().rstrip(".").strip()
        if text.startswith("(") and text.endswith(")"):
            text = text[1:-1]
        text = (text or _MEANING.get(var, "-")).replace("|", "\\|")
        out[var] = (var, default if default is not None else "", f"{name}()", text)
    missing = set(env.FLAG_DEFAULTS) - set(out)
    if missing:
        raise RuntimeError(f"gen_env_table: no getter docstring names {sorted(missing)}")
    return [out[k] for k in sorted(out)]


def table() -> str:
    lines = ["| Variable | Default | Getter (`magi_attention.env`) | Meaning |", "|---|---|---|---|"]
    lines += [f"| `{v}` | `{d}` | `{g}` | {m} |" for v, d, g, m in rows()]
    return "\n".join(lines)


def render(page_text: str) -> str:
    head, rest = page_text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = PAGE.read_text()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print("docs/env.md is out of date: run python docs/scripts/gen_env_table.py")
            return 1
        return 0
    PAGE.write_text(new)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
