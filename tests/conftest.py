from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from img2img.demo import photo_paths, write_pairs

COMPAT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "compat"


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    if not (COMPAT / "manifest.json").is_file():
        pytest.skip(f"reference fixtures not found at {COMPAT} (they live in the project's shared/ folder)")
    return COMPAT


@pytest.fixture(scope="session")
def compat_manifest(compat_dir) -> list[dict]:
    return json.loads((compat_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def paired_photos(tmp_path_factory) -> dict[str, Path]:
    """Real photographs as a small paired task (A = faded + blurred, B = original), 64 px."""
    root = tmp_path_factory.mktemp("paired")
    train, test = photo_paths()
    write_pairs(train, root / "train_A", root / "train_B", size=64)
    write_pairs(test, root / "test_A", root / "test_B", size=64)
    return {"a": root / "train_A", "b": root / "train_B", "test_a": root / "test_A", "test_b": root / "test_B"}


@pytest.fixture(scope="session")
def aligned_photos(tmp_path_factory, paired_photos) -> Path:
    """The same pairs in the reference's aligned layout: A|B side by side, train/ and val/."""
    import cv2

    root = tmp_path_factory.mktemp("aligned")
    for split, (a_dir, b_dir) in {"train": ("a", "b"), "val": ("test_a", "test_b")}.items():
        (root / split).mkdir()
        for a_path in sorted(paired_photos[a_dir].glob("*.png"))[:8]:
            a = cv2.imread(str(a_path))
            b = cv2.imread(str(paired_photos[b_dir] / a_path.name))
            cv2.imwrite(str(root / split / a_path.name), np.concatenate([a, b], axis=1))
    return root


@pytest.fixture
def one_thread():
    """For learning tests: their figures then do not depend on the core count (kernels split
    their sums by thread), and a busy CI machine does not pay for threads spinning while they
    wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
