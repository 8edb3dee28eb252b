"""`img2img translate` starts fast: its imports leave out what only training and reports use."""

from __future__ import annotations

import json
import subprocess
import sys

# The task files are imported (the train commands' flags come from their configs), but they
# import these only where training uses them.
TRAINING_ONLY = ("albumentations", "kornia", "matplotlib", "torchvision", "scipy")


def test_the_translate_command_imports_no_training_libraries():
    code = ("import sys, json, img2img.cli, img2img.api, img2img.infer, img2img.sharding; "
            f"print(json.dumps([m for m in {TRAINING_ONLY!r} if m in sys.modules]))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert loaded == []
