"""Where the top-level recipes/ and examples/ folders are: beside the package in a clone (or
an editable install), inside it (img2img/shipped/) in an installed wheel (see setup.py)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    installed = PACKAGE / "shipped" / name
    return installed if installed.is_dir() else PACKAGE.parent / name
