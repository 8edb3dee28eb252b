"""The pip command that adds an optional extra, in the form that fits how img2img was installed."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse


def install_hint(extra: str) -> str:
    """`pip install "img2img[onnx]"` for an installed package; for an editable install or a
    clone on the path, `pip install -e ".[onnx]"` (run in the clone) or its folder."""
    clone = editable_source()
    if clone is None:
        return f'pip install "img2img[{extra}]"'
    where = "." if clone == Path.cwd().resolve() else str(clone)
    return f'pip install -e "{where}[{extra}]"'


def editable_source() -> Path | None:
    """The source folder img2img runs from when it is not a regular installed package."""
    package_root = Path(__file__).resolve().parent.parent
    try:
        dist = metadata.distribution("img2img")
    except metadata.PackageNotFoundError:
        return package_root if (package_root / "pyproject.toml").is_file() else None
    direct = dist.read_text("direct_url.json")
    if direct:
        info = json.loads(direct)
        if info.get("dir_info", {}).get("editable"):
            return Path(unquote(urlparse(info["url"]).path)).resolve()
    # Installed, yet imported from a clone (e.g. PYTHONPATH): that clone is what runs.
    installed = Path(str(dist.locate_file("img2img"))).resolve()
    if installed != package_root / "img2img" and (package_root / "pyproject.toml").is_file():
        return package_root
    return None
