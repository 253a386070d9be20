"""Check families, one module each; `all_checks()` imports them all and returns the catalogue."""

from __future__ import annotations

import importlib

FAMILIES = ("text", "pii", "grounding", "answers", "injection", "image", "video")


def all_checks():
    """The catalogue, name -> CheckDef, with every family registered."""
    for family in FAMILIES:
        importlib.import_module(f"services.validator.checks.{family}")
    from services.validator.checks.base import CHECKS

    return CHECKS
