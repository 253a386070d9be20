"""What the deploy generators share: write their files, or only report the stale ones (--check)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stale_files(files: dict[Path, str], orphans: list[Path] = ()) -> list[Path]:
    """Files whose content differs from `files`, plus generated files that should no longer exist."""
    return [path for path, text in files.items() if not path.exists() or path.read_text() != text] + list(orphans)


def main(argv: list[str] | None, description: str, module: str, render: Callable[[], dict[Path, str]],
         orphans: Callable[[dict[Path, str]], list[Path]] = lambda files: []) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        stale = stale_files(files, orphans(files))
        for path in stale:
            print(f"out of date: {path.relative_to(REPO)} (run `python -m {module}`)")
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    for path in orphans(files):  # e.g. a service that left the catalogue or is not implemented
        path.unlink()
        print(f"removed {path.relative_to(REPO)}")
    return 0
