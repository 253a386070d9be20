"""Keeps generated parts of README.md in step with the code (`python -m shared.docs`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def config_table() -> str:
    from shared.config import env_vars

    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{var}` | `{default}` | {doc} |" for var, default, doc in env_vars()]
    return "\n".join(lines)


def render(text: str) -> str:
    return re.sub(re.escape(START) + ".*?" + re.escape(END), f"{START}\n{config_table()}\n{END}", text, flags=re.S)


if __name__ == "__main__":
    current = README.read_text()
    updated = render(current)
    if "--check" in sys.argv:
        sys.exit(0 if updated == current else "README.md's configuration table is stale: run python -m shared.docs")
    README.write_text(updated)
